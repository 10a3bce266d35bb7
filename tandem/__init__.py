"""The `tandem` program: the command-line dispatcher and the SDK with a local cloud, above cloud/,
edge/ and bench/. `from tandem import Tandem` (imported lazily: engines are heavy)."""


def __getattr__(name):
    if name in ("Tandem", "AsyncTandem", "Completion"):
        from tandem import sdk

        return getattr(sdk, name)
    raise AttributeError(name)
