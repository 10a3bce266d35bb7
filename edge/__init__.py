"""The edge runtime. `from edge import TandemClient` for the SDK as a client of a cloud you name
(`tandem.Tandem` adds a cloud of its own; imported lazily: engines are heavy)."""


def __getattr__(name):
    if name in ("TandemClient", "AsyncTandemClient", "Completion"):
        from edge import sdk

        return getattr(sdk, name)
    raise AttributeError(name)
