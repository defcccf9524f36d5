"""`turnscribe serve`: an OpenAI-compatible HTTP server over the library, with durable jobs (extra `[server]`)."""

from .app import create_app
from .settings import ServerSettings

__all__ = ["ServerSettings", "create_app"]
