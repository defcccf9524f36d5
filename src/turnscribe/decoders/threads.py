"""A worker thread of one's own, for calls that must always run on the same thread."""

from __future__ import annotations

import queue
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")
_Call = tuple[Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class OwnThread:
    """Runs calls one at a time on a single daemon thread, which ends when this object is collected.

    Unlike a one-worker ThreadPoolExecutor, the thread is a daemon (an interrupted program exits without waiting
    for the call in flight) and holds no reference to what it serves between calls, so a decoder that owns one
    can be freed with its model."""

    def __init__(self, name: str, setup: Callable[[], None] | None = None) -> None:
        calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._calls = calls
        # The setup goes in a list that the thread empties: a Thread keeps its arguments while it runs, and a bound
        # method kept there would keep its owner alive for the thread's life, and so the thread too.
        setups = [setup] if setup is not None else []
        threading.Thread(target=_serve, args=(calls, setups), name=name, daemon=True).start()
        weakref.finalize(self, calls.put, None)

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)` on the thread; waits for it and returns its result or raises its error."""
        return self.submit(fn, *args, **kwargs).result()

    def submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        self._calls.put((future, fn, args, kwargs))
        return future


def _serve(calls: queue.SimpleQueue[_Call | None], setups: list[Callable[[], None]]) -> None:
    failed_setup = None
    try:
        if setups:
            setups.pop()()
    except BaseException as error:  # every call then gets it, rather than waiting for a thread that is gone
        failed_setup = error
    while (call := calls.get()) is not None:
        future, fn, args, kwargs = call
        del call  # hold nothing of a finished call while waiting for the next
        if future.set_running_or_notify_cancel():
            try:
                if failed_setup is not None:
                    # A new error each time: re-raising one object would grow its traceback with every caller's
                    # frames, and keep them (and what they hold) alive.
                    raise RuntimeError(f"this thread's setup failed: {failed_setup}") from failed_setup
                future.set_result(fn(*args, **kwargs))
            except BaseException as error:  # the caller gets it, as from an executor
                future.set_exception(error)
        del future, fn, args, kwargs
