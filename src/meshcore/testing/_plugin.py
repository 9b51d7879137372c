"""The hypothesis entry point: `st.from_type(SomeMeshcoreMessage)` works once meshcore is
installed, because this registers the strategies of `meshcore.testing.strategies`."""

from __future__ import annotations

__all__ = ["register"]


def register() -> None:
    """Register a strategy for every meshcore wire type with hypothesis.

    Must never break hypothesis for unrelated projects: any import problem of meshcore's own
    modules is left for the user to meet when they import meshcore.
    """
    try:
        from meshcore.testing.strategies import register_type_strategies
    except ImportError:
        return
    register_type_strategies()
