"""`turnscribe serve`: an OpenAI-compatible HTTP server over the library, with durable jobs (extra `[server]`).

`create_app` is imported on first use: the CLI imports this package for `turnscribe serve`'s options, and
`turnscribe transcribe` must run where FastAPI (the `[server]` extra) is not installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .settings import ServerSettings

if TYPE_CHECKING:
    from .app import create_app

__all__ = ["ServerSettings", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
