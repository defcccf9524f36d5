"""One thread in front of the decoder: windows of all in-flight requests share its batches.

Each request's Pipeline gets a `ScheduledDecoder`, which hands its windows to the `BatchScheduler` and waits
for their outputs. The scheduler takes up to `batch_size` waiting windows of one language (the prompt is
per language) and decodes them in one call, so throughput grows with the number of concurrent requests while
the model is only ever called from one thread.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass

from ..decoders.base import Decoder, DecoderError, WindowAudio

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Item:
    window: WindowAudio
    language: str
    future: Future[str]


class BatchScheduler:
    def __init__(self, decoder: Decoder, *, on_batch: Callable[[int], None] | None = None) -> None:
        self.decoder = decoder
        self._on_batch = on_batch
        self._pending: deque[_Item] = deque()
        self._wake = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="turnscribe-batcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        self._thread.join(timeout)
        for item in self._pending:  # nobody will decode these any more: release their waiters
            item.future.set_exception(DecoderError("server is shutting down"))
        self._pending.clear()

    def submit(self, windows: Sequence[WindowAudio], language: str) -> list[Future[str]]:
        items = [_Item(w, language, Future()) for w in windows]
        with self._wake:
            if self._stopping:
                raise DecoderError("server is shutting down")
            self._pending.extend(items)
            self._wake.notify()
        return [item.future for item in items]

    def _take(self) -> list[_Item] | None:
        with self._wake:
            while not self._pending and not self._stopping:
                self._wake.wait()
            if self._stopping:
                return None
            language = self._pending[0].language
            batch: list[_Item] = []
            rest: deque[_Item] = deque()
            while self._pending and len(batch) < max(1, self.decoder.batch_size):
                item = self._pending.popleft()
                (batch if item.language == language else rest).append(item)
            # Windows of other languages keep their place at the front of the line.
            self._pending.extendleft(reversed(rest))
            return batch

    def _loop(self) -> None:
        while (batch := self._take()) is not None:
            if self._on_batch:
                self._on_batch(len(batch))
            self._run(batch)

    def _run(self, batch: list[_Item]) -> None:
        try:
            outputs = list(self.decoder.decode([item.window for item in batch], batch[0].language))
            if len(outputs) != len(batch):
                raise DecoderError(f"decoder returned {len(outputs)} outputs for {len(batch)} windows")
        except Exception as error:  # a backend may raise anything (OOM, CUDA): isolate the window that caused it
            if len(batch) == 1:
                batch[0].future.set_exception(error)
                return
            # Windows of other requests share this batch: retry alone so one bad window fails only its own.
            log.warning("batch of %d windows failed (%s); retrying one by one", len(batch), error)
            for item in batch:
                self._run([item])
            return
        for item, output in zip(batch, outputs):
            item.future.set_result(output)


class ScheduledDecoder:
    """A Decoder for one request: its windows go through the shared scheduler; it records what came back."""

    def __init__(self, scheduler: BatchScheduler) -> None:
        inner = scheduler.decoder
        self.name = inner.name
        self.model_id = inner.model_id
        self.batch_size = inner.batch_size
        self._scheduler = scheduler
        self.outputs: dict[int, str] = {}  # window index → raw output, for streaming settled segments

    def decode(self, windows: Sequence[WindowAudio], language: str) -> list[str]:
        futures = self._scheduler.submit(windows, language)
        outputs = [f.result() for f in futures]  # raises the window's error; Pipeline retries and reports it
        self.outputs.update(zip((w.span.index for w in windows), outputs))
        return outputs
