"""The `tandem` program: the command-line dispatcher and the SDK with a local cloud, above cloud/,
edge/ and bench/. `from tandem import Tandem` (imported lazily: engines are heavy)."""

_SDK = ("Tandem", "AsyncTandem", "Completion", "Delta")  # what tandem/sdk.py re-exports (its __all__)
__all__ = list(_SDK)


def __getattr__(name):
    if name in _SDK:
        from tandem import sdk

        return getattr(sdk, name)
    raise AttributeError(name)
