"""metarec: meta-learned cold-start recommendation."""
__version__ = "0.1.0"


def __getattr__(name: str):
    """``metarec.Recommender`` (serving a new user), imported on first use: it pulls in torch."""
    if name in ("Recommender", "AdaptedUser"):
        from metarec import recommend

        return getattr(recommend, name)
    raise AttributeError(f"module 'metarec' has no attribute {name!r}")


__all__ = ["AdaptedUser", "Recommender", "__version__"]
