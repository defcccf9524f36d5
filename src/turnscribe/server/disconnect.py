"""Noticing that an HTTP client went away while its transcript is being computed (the server and the vLLM plugin)."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.types import Receive


async def _disconnected(receive: Receive) -> None:
    # Once the request body has been read, the next message the server gets is the disconnect.
    while (await receive())["type"] != "http.disconnect":
        pass


async def client_left_first(run: asyncio.Future[Any], receive: Receive, timeout: float | None = None) -> bool:
    """Waits until `run` is done, the client disconnects, or `timeout` passes; True when the client left first.
    The caller then stops the run: nobody will read its answer."""
    gone = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait({run, gone}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    return gone.done() and not gone.cancelled() and not run.done()
