"""OwnThread: calls pinned to one daemon thread that goes away with its owner (decoders/threads.py)."""

from __future__ import annotations

import gc
import threading
import time
import weakref

import pytest

from turnscribe.decoders.threads import OwnThread
from turnscribe.decoders.transformers import SpeedOptions, TransformersDecoder


def named(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == name]


def test_calls_run_in_order_on_one_daemon_thread_and_errors_reach_the_caller():
    seen: list[object] = []
    worker = OwnThread("test-own-thread", setup=lambda: seen.append("setup"))
    for i in range(3):
        worker.run(lambda i=i: seen.append((i, threading.current_thread())))
    assert seen[0] == "setup" and [i for i, _ in seen[1:]] == [0, 1, 2]
    (thread,) = {t for _, t in seen[1:]}
    assert thread.daemon and thread is not threading.current_thread()
    with pytest.raises(ZeroDivisionError):
        worker.run(lambda: 1 / 0)
    assert worker.run(lambda: "still serving") == "still serving"


def test_a_failed_setup_fails_every_call_instead_of_hanging():
    def setup() -> None:
        raise RuntimeError("CUDA error: invalid device ordinal")

    worker = OwnThread("test-own-thread-setup", setup=setup)
    errors = []
    for _ in range(2):
        with pytest.raises(RuntimeError, match="invalid device ordinal") as raised:
            worker.submit(lambda: None).result(timeout=10)
        errors.append(raised.value)
    # A new error each time, so that no caller's frames pile up on one traceback that the thread keeps.
    assert errors[0] is not errors[1] and errors[0].__cause__ is errors[1].__cause__
    del worker
    assert wait_until_gone("test-own-thread-setup")


def wait_until_gone(name: str) -> bool:
    deadline = time.monotonic() + 10
    while named(name) and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.05)
    return not named(name)


def test_the_thread_ends_when_its_owner_is_collected():
    worker = OwnThread("test-own-thread-ends")
    worker.run(lambda: None)
    assert named("test-own-thread-ends")
    del worker
    assert wait_until_gone("test-own-thread-ends")


def test_a_compiled_decoder_and_its_model_can_be_freed(tiny_native):
    # Its generate() thread must not keep it alive (rebuilding pipelines in a notebook would leak GPU memory).
    decoder = TransformersDecoder(tiny_native, device="cpu", speed=SpeedOptions(static_cache=True, compile=True))
    decoder._compiled_thread.run(lambda: None)
    model = weakref.ref(decoder.model)
    del decoder
    assert wait_until_gone("turnscribe-compiled")
    assert model() is None


def test_a_bound_method_as_setup_does_not_keep_its_owner_alive():
    class Owner:
        def __init__(self) -> None:
            self.thread = OwnThread("test-own-thread-bound-setup", setup=self.setup)

        def setup(self) -> None:
            pass

    owner = Owner()
    owner.thread.run(lambda: None)
    collected = weakref.ref(owner)
    del owner
    assert wait_until_gone("test-own-thread-bound-setup")
    assert collected() is None
