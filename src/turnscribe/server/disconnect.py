"""The HTTP client's side of the connection (the server and the vLLM plugin): noticing that a client went away while
its transcript is being computed, and reading what is left of an upload before answering it early."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.datastructures import Headers
from starlette.types import Message, Receive, Scope, Send

# How much of a refused upload is read and thrown away after the answer (see discarding_send).
DISCARD_LIMIT_BYTES = 64 << 20
DISCARD_TIMEOUT_S = 10.0


async def discard_body(
    receive: Receive, limit_bytes: int = DISCARD_LIMIT_BYTES, timeout_s: float = DISCARD_TIMEOUT_S
) -> None:
    """Reads and throws away the rest of a request body, up to `limit_bytes` or `timeout_s`."""
    read = 0
    try:
        async with asyncio.timeout(timeout_s):
            while read <= limit_bytes:
                message = await receive()
                if message["type"] != "http.request":
                    return
                read += len(message.get("body", b""))
                if not message.get("more_body", False):
                    return
    except TimeoutError:
        pass  # a stalled or slow client: the connection is closed with its bytes unread after all


def discarding_send(send: Send, receive: Receive, timeout_s: float = DISCARD_TIMEOUT_S) -> Send:
    """The send channel for an answer given while the client is still sending its body (401, 413): the whole answer
    goes on the wire at once, then `discard_body` reads what it may of the rest before the response (and with
    `Connection: close` the connection) ends. Closed with upload bytes unread, a connection is reset by the kernel,
    which drops what of the answer is not yet delivered: a client that sends its whole body before reading (httpx,
    requests, the OpenAI SDKs) saw "connection reset" instead of the error. nginx's lingering close does the same."""

    async def holding_the_end(message: Message) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            await send({**message, "more_body": True})
            await discard_body(receive, timeout_s=timeout_s)
            message = {"type": "http.response.body", "body": b"", "more_body": False}
        await send(message)

    return holding_the_end


def body_on_its_way(scope: Scope) -> bool:
    """Whether the client sends its body unasked: not one that waits for "100 Continue" (curl, for large uploads),
    which an answer given before reading stops from sending it at all."""
    return Headers(scope=scope).get("expect", "").lower() != "100-continue"


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
