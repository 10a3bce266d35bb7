"""The edge runtime. `from edge import Tandem` for the SDK (imported lazily: engines are heavy)."""


def __getattr__(name):
    if name in ("Tandem", "AsyncTandem", "Completion"):
        from edge import sdk

        return getattr(sdk, name)
    raise AttributeError(name)
