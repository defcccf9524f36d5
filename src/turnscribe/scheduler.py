"""One thread in front of the decoder: windows of every file and request in flight share its batches.

Callers (a `ScheduledDecoder` per file or request) submit windows and get a future per window. The scheduler
thread forms batches of up to `batch_size` windows of one language (the prompt is per language) and decodes them
in one call, so throughput grows with the number of files in flight while the model is only ever called from
one thread. How a batch is formed:

* Fairness: requests take turns being the batch's *anchor*; the anchor's oldest window is always in the batch,
  and the rest is filled round-robin across requests. A long file cannot starve a short one: every request is
  anchor at least once every (number of requests) batches, and usually gets windows into every batch.
* Small padding: a batch is padded to its longest window, so windows of the anchor's length bucket
  (`bucket_s` wide) come first, then the next nearest buckets.
* Back-pressure: at most `max_pending` windows wait; `submit` blocks until there is room (or raises
  `SchedulerFull` once its timeout passes).
* Failures: a batch that raises is retried window by window, so one bad window fails only its own future.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Hashable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, CancelledError, Future, ThreadPoolExecutor, wait
from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .decoders.base import Decoder, DecoderError, WindowAudio
from .types import SAMPLE_RATE, Transcript, TurnscribeError

if TYPE_CHECKING:
    from .audio import AudioInput
    from .pipeline import Pipeline, ProgressCallback

log = logging.getLogger(__name__)

DEFAULT_MAX_PENDING = 4096  # windows waiting for the model: ~32 hours of 28 s windows, ~7 GB of float32 audio
DEFAULT_BUCKET_S = 4.0
MIN_FILES_AT_ONCE = 4
MAX_AUTO_FILES_AT_ONCE = 32  # each holds its audio (~230 MB per hour), and as many more are read ahead
TYPICAL_FILE_WINDOWS = 22  # a 10-minute recording in 28 s windows overlapping by 2 s

ResultCallback = Callable[[WindowAudio, str], None]


class SchedulerFull(DecoderError):
    """The scheduler's queue stayed full for longer than the submitter was willing to wait."""


@dataclass(frozen=True)
class _Item:
    window: WindowAudio
    language: str
    request: Hashable
    future: Future[str]
    on_result: ResultCallback | None

    @property
    def seconds(self) -> float:
        return len(self.window.samples) / SAMPLE_RATE


class BatchScheduler:
    """Batches windows of all submitters for one decoder (see the module docstring). Use as a context manager,
    or call `start()` and `stop()`."""

    def __init__(
        self,
        decoder: Decoder,
        *,
        batch_size: int | None = None,
        max_pending: int = DEFAULT_MAX_PENDING,
        bucket_s: float = DEFAULT_BUCKET_S,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        if max_pending < 1 or bucket_s <= 0:
            raise ValueError("max_pending must be >= 1 and bucket_s > 0")
        self.decoder = decoder
        self._batch_size = batch_size
        self.max_pending = max_pending
        self.bucket_s = bucket_s
        self._on_batch = on_batch
        # Per request, its waiting windows in order; dict order is the anchor rotation.
        self._queues: dict[Hashable, deque[_Item]] = {}
        self._pending = 0
        self._lock = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="turnscribe-batcher", daemon=True)

    @property
    def batch_size(self) -> int:
        """Windows per decoder call: the one given, else the decoder's own (read live: it may change)."""
        return max(1, self._batch_size or self.decoder.batch_size)

    @property
    def pending(self) -> int:
        with self._lock:
            return self._pending

    def start(self) -> BatchScheduler:
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)
        with self._lock:
            for queue in self._queues.values():  # nobody will decode these any more: release their waiters
                for item in queue:
                    if item.future.set_running_or_notify_cancel():
                        item.future.set_exception(DecoderError("the scheduler is shutting down"))
            self._queues.clear()
            self._pending = 0

    def __enter__(self) -> BatchScheduler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def submit(
        self,
        windows: Sequence[WindowAudio],
        language: str,
        *,
        request: Hashable | None = None,
        on_result: ResultCallback | None = None,
        timeout: float | None = None,
    ) -> list[Future[str]]:
        """Queue windows; one future per window, resolved with the decoder's raw output (or its error).

        `request` groups windows for fair turns (default: this call is its own request). `on_result` runs on the
        scheduler thread before each future resolves. When the queue is full this blocks until there is room;
        with a `timeout` (0: do not wait) it raises `SchedulerFull` instead, queueing none of the windows.
        """
        key: Hashable = request if request is not None else object()
        items = [_Item(w, language, key, Future(), on_result) for w in windows]
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            if deadline is not None:
                # All or nothing: wait for room for every window, not a part of them.
                while not self._stopping and self._pending + len(items) > self.max_pending:
                    left = deadline - time.monotonic()
                    if left <= 0 or len(items) > self.max_pending:
                        raise SchedulerFull(
                            f"{self._pending} windows are waiting for the model (at most {self.max_pending}); "
                            f"{len(items)} more do not fit"
                        )
                    self._lock.wait(left)
            for item in items:
                while not self._stopping and self._pending >= self.max_pending:
                    self._lock.wait()
                if self._stopping:
                    raise DecoderError("the scheduler is shutting down")
                self._queues.setdefault(key, deque()).append(item)
                self._pending += 1
                self._lock.notify_all()
        return [item.future for item in items]

    def _bucket(self, item: _Item) -> int:
        return int(item.seconds // self.bucket_s)

    def _take(self) -> list[_Item] | None:
        with self._lock:
            while not self._pending and not self._stopping:
                self._lock.wait()
            if self._stopping:
                return None
            anchor_request = next(iter(self._queues))
            anchor = self._queues[anchor_request][0]
            # Round-robin across requests (anchor first), then nearest length bucket first (a stable sort keeps
            # the round-robin order inside each bucket).
            rounds = itertools.zip_longest(*self._queues.values())
            candidates = [i for i in itertools.chain.from_iterable(rounds) if i and i.language == anchor.language]
            candidates.sort(key=lambda i: abs(self._bucket(i) - self._bucket(anchor)))
            batch = candidates[: self.batch_size]
            taken = {id(i) for i in batch}
            for request in list(self._queues):
                left = deque(i for i in self._queues.pop(request) if id(i) not in taken)
                if left:
                    self._queues[request] = left
            # The anchor's request goes to the back of the rotation.
            if anchor_request in self._queues:
                self._queues[anchor_request] = self._queues.pop(anchor_request)
            self._pending -= len(batch)
            self._lock.notify_all()  # room for blocked submitters
        # Windows whose caller gave up (cancelled futures) are dropped here, not decoded.
        return [i for i in batch if i.future.set_running_or_notify_cancel()]

    def _loop(self) -> None:
        while (batch := self._take()) is not None:
            if not batch:
                continue
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
            if item.on_result:
                try:
                    item.on_result(item.window, output)
                except Exception:  # a caller's callback must not take the scheduler thread down
                    log.exception("on_result callback failed")
            item.future.set_result(output)


class ScheduledDecoder:
    """A Decoder for one file or request: its windows go through the shared scheduler.

    `Pipeline` sees `submit` and keeps `batch_size` windows (the look-ahead: two scheduler batches) of this file
    in flight, reporting progress window by window. `outputs` records each window's raw output as it arrives
    (the server streams settled segments from it).
    """

    def __init__(self, scheduler: BatchScheduler) -> None:
        inner = scheduler.decoder
        self.name = inner.name
        self.model_id = inner.model_id
        self._scheduler = scheduler
        self._request = object()
        self.outputs: dict[int, str] = {}  # window index → raw output

    @property
    def batch_size(self) -> int:
        return 2 * self._scheduler.batch_size

    def submit(self, windows: Sequence[WindowAudio], language: str) -> list[Future[str]]:
        return self._scheduler.submit(windows, language, request=self._request, on_result=self._record)

    def decode(self, windows: Sequence[WindowAudio], language: str) -> list[str]:
        return [f.result() for f in self.submit(windows, language)]  # raises a window's error

    def _record(self, window: WindowAudio, output: str) -> None:
        self.outputs[window.span.index] = output


def files_at_once_for(batch_size: int) -> int:
    """Files in flight for `run_many` by default: enough 10-minute recordings to queue two batches of windows (a
    file queues at most two batches' worth itself), at least MIN_FILES_AT_ONCE, at most MAX_AUTO_FILES_AT_ONCE.
    On the CPU (batches of 4) that is 4; with a GPU's batches of hundreds of windows, 32."""
    wanted = -(-2 * batch_size // TYPICAL_FILE_WINDOWS)
    return max(MIN_FILES_AT_ONCE, min(MAX_AUTO_FILES_AT_ONCE, wanted))


def check_inputs(inputs: Iterable[AudioInput]) -> None:
    """Refuse one recording given where a list of them is expected: a path would be read as a file per character,
    an array as a recording per sample or channel, a file object as one per line."""
    import torch

    if isinstance(inputs, str | os.PathLike | bytes | bytearray | memoryview | np.ndarray | torch.Tensor) or hasattr(
        inputs, "read"
    ):
        raise TypeError(
            f"inputs must be a list of recordings, got a single {type(inputs).__name__}: pass [audio] for one "
            "(or list(batch) for the rows of a batch of arrays)"
        )


@dataclass(frozen=True)
class FileResult:
    """One input of `run_many`: its transcript, or the error that stopped it."""

    index: int  # position in the inputs
    source: str
    transcript: Transcript | None
    error: TurnscribeError | None


def run_many(
    pipeline: Pipeline,
    inputs: Iterable[AudioInput],
    *,
    language: str = "en",
    sampling_rate: int | None = None,
    files_at_once: int | None = None,
    audio_processes: int | None = None,
    max_pending: int = DEFAULT_MAX_PENDING,
    progress: ProgressCallback | None = None,
) -> Generator[FileResult, None, None]:
    """Transcribe many inputs through one scheduler, yielding each result as it finishes (not in input order).
    Closing the generator early (`close()`, or leaving a `with contextlib.closing(...)` block on Ctrl-C) stops
    the files in flight: their windows still queued fail, so that nothing runs on for nobody.

    Up to `files_at_once` files are windowed, stitched and linked at once, each in its own thread; their windows
    share the decoder's batches (default: `files_at_once_for` the decoder's batch size, so that a GPU's large
    batches are filled by short files too). Audio is decoded in `audio_processes` worker processes (`AudioProcesses`;
    default: `audio_process_count`; 0 decodes in each file's thread), for the files in flight and as many files
    ahead of them, a long file in pieces across the processes, so that decoding keeps up with a fast GPU. A
    pipeline given a `load` of its own reads with it, in each file's thread. A file that fails yields its error;
    the others go on. Arrays and tensors need `sampling_rate`.
    """
    from .audio import AudioProcesses, audio_process_count, load_audio
    from .pipeline import Pipeline, ProgressEvent, RunControl, RunStopped

    check_inputs(inputs)
    if files_at_once is None:
        files_at_once = files_at_once_for(pipeline.decoder.batch_size)
    if files_at_once < 1:
        raise ValueError("files_at_once must be >= 1")
    # One per core by default, even for one file: a long one is decoded in pieces across them. None for a list of
    # arrays (nothing to decode: `turnscribe bench`'s clips, callers with their own audio), nor for a pipeline with
    # a loader of its own: the processes run `load_audio`, and would bypass it.
    arrays_only = isinstance(inputs, Sequence) and not any(isinstance(x, str | os.PathLike | bytes) for x in inputs)
    own_loader = pipeline.load is not load_audio
    audio_processes = 0 if arrays_only or own_loader else audio_process_count(audio_processes)

    control = RunControl()  # stopped when the caller stops reading: the files in flight end at their next window

    def checked(event: ProgressEvent) -> None:
        control.check()
        if progress:
            progress(event)

    def read_ahead(samples: Future[np.ndarray]) -> np.ndarray:
        try:
            return samples.result()
        except CancelledError:  # the run stopped before this file's audio was read (see the end of run_many)
            raise RunStopped("cancelled") from None

    def one(index: int, source_audio: AudioInput, samples: Future[np.ndarray] | None) -> FileResult:
        source = str(source_audio) if isinstance(source_audio, str | os.PathLike) else f"<input {index}>"
        # Linkers keep no per-recording state (the threshold travels with each assignment): one serves all files.
        run = Pipeline(
            ScheduledDecoder(scheduler),
            pipeline.speakers,
            window_s=pipeline.window_s,
            overlap_s=pipeline.overlap_s,
            # Read ahead: the file's "audio" time is then only what it still had to wait for.
            load=pipeline.load if samples is None else lambda _audio, _rate: read_ahead(samples),
        )
        try:
            transcript = run.run(
                source_audio, language=language, sampling_rate=sampling_rate, progress=checked, source=source
            )
            return FileResult(index, source, transcript, None)
        except TurnscribeError as error:
            return FileResult(index, source, None, error)
        except RunStopped:  # the caller stopped reading (Ctrl-C): nobody waits for this file, and nothing failed
            raise
        except Exception as error:  # a bug or a crash in one file must not lose the files after it
            log.exception("%s failed", source)
            failure = TurnscribeError(f"{source} failed: {type(error).__name__}: {error}")
            failure.__cause__ = error
            return FileResult(index, source, None, failure)

    with ExitStack() as stack:
        # Closed in reverse: the file threads end before the scheduler stops and the audio processes go; the
        # processes start before any thread of ours does (see AudioProcesses).
        audio = stack.enter_context(AudioProcesses(audio_processes)) if audio_processes else None
        scheduler = stack.enter_context(BatchScheduler(pipeline.decoder, max_pending=max_pending))
        files = stack.enter_context(ThreadPoolExecutor(files_at_once, thread_name_prefix="turnscribe-file"))
        read: Callable[[AudioInput], Future[np.ndarray]] | None = None
        reads: ThreadPoolExecutor | None = None
        if audio is not None:  # a thread per process, waiting on it, so that the reads ahead run while the files do
            reads = stack.enter_context(ThreadPoolExecutor(audio_processes, thread_name_prefix="turnscribe-audio"))
            load = audio.load

            def read(source_audio: AudioInput) -> Future[np.ndarray]:
                return reads.submit(load, source_audio, sampling_rate)

        todo = iter(enumerate(inputs))

        def admit() -> tuple[int, AudioInput, Future[np.ndarray] | None] | None:
            """The next input, its audio already being read when there are processes for it."""
            if (nxt := next(todo, None)) is None:
                return None
            index, source_audio = nxt
            return index, source_audio, read(source_audio) if read else None

        # Inputs are admitted only as earlier ones finish, so that a long input list is not read at once: the files
        # in flight and, with audio processes, as many again being read ahead (at most twice files_at_once held).
        ahead = files_at_once if audio_processes else 0
        admitted = deque(item for item in (admit() for _ in range(files_at_once + ahead)) if item)
        running = {files.submit(one, *admitted.popleft()) for _ in range(min(files_at_once, len(admitted)))}
        try:
            while running:
                done, running = wait(running, return_when=FIRST_COMPLETED)
                for finished in done:
                    yield finished.result()
                    if item := admit():
                        admitted.append(item)
                    if admitted:
                        running.add(files.submit(one, *admitted.popleft()))
        finally:
            for future in running:
                future.cancel()
            if reads is not None:
                # Reads not begun are dropped: of the files ahead, and of files in flight still waiting for theirs
                # (their threads then stop), rather than decoded for nobody before the run can end.
                reads.shutdown(wait=False, cancel_futures=True)
            if running:
                # Stopped early (Ctrl-C, or the caller stopped reading): the files in flight end at their next
                # window, and the windows still queued fail, rather than all of it running on for nobody.
                control.stop("cancelled")
                scheduler.stop()
