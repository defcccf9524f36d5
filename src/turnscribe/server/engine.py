"""The library behind the HTTP layer: one shared Pipeline, its decoder behind the batch scheduler, and runs that
can be cancelled, time out, report progress and hand out segments as soon as later windows cannot change them."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from ..audio import AudioError, AudioProcesses, AudioTooLong, audio_duration, audio_process_count, load_audio
from ..parse import parse_window
from ..pipeline import NO_SPACE_LANGUAGES, Pipeline, ProgressEvent, RunControl, RunStopped, SpeakerCountsUnsupported
from ..prompt import LanguageError, check_language
from ..scheduler import BatchScheduler, ScheduledDecoder
from ..speakers.clustering import check_counts
from ..speakers.linking import SpeakerLinker
from ..speakers.slots import SlotLinker
from ..stitch import stitch
from ..types import SAMPLE_RATE, ParsedWindow, StitchedSegment, Transcript, TurnscribeError, WindowSpan
from ..windows import plan_windows
from .errors import APIError
from .metrics import Metrics
from .settings import ServerSettings

log = logging.getLogger(__name__)
T = TypeVar("T")


class KnownSpeakersUnsupported(TurnscribeError):
    pass


@dataclass(frozen=True)
class SpeakerCounts:
    """A request's hints on how many people speak in its recording (pyannote's names). Any one given replaces the
    server's own hints for that request, all three; none given: the server's."""

    num_speakers: int | None = None
    min_speakers: int | None = None
    max_speakers: int | None = None

    @property
    def given(self) -> bool:
        return any(value is not None for value in asdict(self).values())

    def check(self) -> None:
        check_counts(self.num_speakers, self.min_speakers, self.max_speakers)


NO_SPEAKER_COUNTS = SpeakerCounts()


def enrolling(linker: SpeakerLinker) -> SlotLinker:
    """`linker`, if it can take known speakers (only the slots linker can)."""
    if not isinstance(linker, SlotLinker):
        raise KnownSpeakersUnsupported(
            f"known speakers need the 'slots' speaker linker; this server runs {type(linker).__name__}"
        )
    return linker


def enrolled(linker: SpeakerLinker, known_speakers: Mapping[str, np.ndarray] | None) -> SpeakerLinker:
    """`linker`, or for a request with known speakers a copy of it that knows them (enrolled per request)."""
    if not known_speakers:
        return linker
    return replace(enrolling(linker), known_speakers=dict(known_speakers))


@dataclass(frozen=True)
class StreamSegment:
    id: str
    start: float
    end: float
    text: str
    speaker: str


class SettledSegments:
    """Stitches the windows decoded so far and emits, in order, the segments no later window can change.

    A segment is settled once it ends before the next undecoded window starts: only segments reaching into
    an overlap are merged with the next window. Speakers here are provisional: the model's per-window slots,
    carried to the next window where the stitcher saw the same speech in both; the final, file-wide labels
    come from clustering the whole file, which needs every window.
    """

    def __init__(
        self, spans: Sequence[WindowSpan], language: str, outputs: dict[int, str], emit: Callable[[StreamSegment], None]
    ) -> None:
        self._spans = spans
        self._char_level = language in NO_SPACE_LANGUAGES
        self._outputs = outputs
        self._emit = emit
        self._parsed: list[tuple[WindowSpan, ParsedWindow]] = []
        self._sent = 0
        self._labels: dict[tuple[int, int], str] = {}

    def advance(self, done: int) -> None:
        for span in self._spans[len(self._parsed) : done]:
            self._parsed.append((span, parse_window(self._outputs.get(span.index, ""), span.duration, span.index)))
        stitched, _ = stitch(self._parsed, char_level=self._char_level)
        horizon = self._spans[done].start if done < len(self._spans) else math.inf
        # Only a settled prefix: the order of what follows can still change.
        for seg in stitched[self._sent :]:
            if seg.end > horizon:
                break
            self._emit(StreamSegment(f"seg_{self._sent}", seg.start, seg.end, seg.text, self._speaker(seg)))
            self._sent += 1

    def _speaker(self, seg: StitchedSegment) -> str:
        keys = [(seg.window, seg.slot), *seg.also_seen_as]
        label = next((self._labels[k] for k in keys if k in self._labels), None)
        if label is None:
            label = f"SPEAKER_{len(set(self._labels.values())):02d}"
        for key in keys:
            self._labels.setdefault(key, label)
        return label


class Engine:
    """Runs transcriptions on a worker pool over one shared Pipeline; admits a bounded number of waiting runs."""

    def __init__(self, pipeline: Pipeline, settings: ServerSettings, metrics: Metrics) -> None:
        self.pipeline = pipeline
        self.settings = settings
        self.metrics = metrics
        self.scheduler = BatchScheduler(pipeline.decoder, on_batch=metrics.batch_windows.observe)
        self._executor = ThreadPoolExecutor(settings.workers, thread_name_prefix="turnscribe-run")
        # Uploads are decoded in processes (started with the engine): in the run threads PyAV would hold the GIL,
        # one upload at a time, and stall the scheduler thread that drives the model.
        self._audio: AudioProcesses | None = None
        self._lock = threading.Lock()
        self._waiting = 0
        self._running = 0

    @property
    def model_id(self) -> str:
        return self.pipeline.decoder.model_id

    def enrolling_linker(self) -> SlotLinker:
        return enrolling(self.pipeline.speakers)

    def linker_for(self, known_speakers: Mapping[str, np.ndarray] | None) -> SpeakerLinker:
        return enrolled(self.pipeline.speakers, known_speakers)

    def start(self) -> None:
        """Start the audio processes and the scheduler. Call it in a thread that outlives the engine: the audio
        processes are killed when the thread that forked them ends (see `turnscribe.audio._die_with_parent`)."""
        if (processes := audio_process_count()) > 0:  # one per core: a long upload is decoded in pieces across them
            self._audio = AudioProcesses(processes)
        self.scheduler.start()

    def stop(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.scheduler.stop()
        if self._audio is not None:
            self._audio.close()

    def submit(self, work: Callable[[], T]) -> Future[T]:
        """Run `work` on a worker, or refuse with 429 when the queue in front of the workers is full."""
        with self._lock:
            if self._waiting + self._running >= self.settings.workers + self.settings.max_queue:
                raise APIError(
                    429,
                    "The server is busy: too many transcriptions are waiting. Retry later.",
                    type="rate_limit_error",
                    code="queue_full",
                    headers={"Retry-After": str(self.settings.retry_after_s)},
                )
            self._waiting += 1
            self.metrics.queue_depth.labels("requests").set(self._waiting)

        def job() -> T:
            with self._lock:
                self._waiting -= 1
                self._running += 1
                self.metrics.queue_depth.labels("requests").set(self._waiting)
            try:
                return work()
            finally:
                with self._lock:
                    self._running -= 1

        future = self._executor.submit(job)
        future.add_done_callback(self._release_if_cancelled)
        return future

    def _release_if_cancelled(self, future: Future[Any]) -> None:
        if future.cancelled():  # never started: it was still counted as waiting
            with self._lock:
                self._waiting -= 1
                self.metrics.queue_depth.labels("requests").set(self._waiting)

    def probe(self, path: Path, source: str) -> float | None:
        """Reject unreadable or too long audio before queueing it; None if the container does not say how long."""
        try:
            seconds = audio_duration(path)
        except AudioError as e:
            raise _naming(e, path, source) from None
        if seconds is not None:
            self._check_duration(seconds, source)
        return seconds

    def _check_duration(self, seconds: float, source: str) -> None:
        if seconds > self.settings.max_audio_seconds:
            raise AudioTooLong(
                f"{source} is {seconds:.0f} s long; this server accepts at most {self.settings.max_audio_seconds:.0f} s"
            )

    def transcribe(
        self,
        path: Path,
        *,
        language: str,
        source: str,
        control: RunControl,
        on_progress: Callable[[int, int], None] | None = None,
        on_segment: Callable[[StreamSegment], None] | None = None,
        known_speakers: Mapping[str, np.ndarray] | None = None,
        speaker_counts: SpeakerCounts = NO_SPEAKER_COUNTS,
    ) -> Transcript:
        language = check_language(language)
        control.check()
        started = time.perf_counter()
        # The cap is also applied while decoding: a header that understates the length (probe passed it) must
        # not let an upload decode into hours of samples.
        limit = self.settings.max_audio_seconds
        try:
            if self._audio is not None:
                samples = self._audio.load(path, max_seconds=limit)
            else:
                samples = load_audio(path, max_seconds=limit)
        except AudioError as e:
            raise _naming(e, path, source) from None
        decoder = ScheduledDecoder(self.scheduler)
        # A per-run Pipeline (cheap: it only holds references) so that this run's decoder records its outputs.
        pipeline = Pipeline(
            decoder, self.linker_for(known_speakers), window_s=self.pipeline.window_s, overlap_s=self.pipeline.overlap_s
        )
        spans = plan_windows(len(samples), pipeline.window_s, pipeline.overlap_s)
        settled = SettledSegments(spans, language, decoder.outputs, on_segment) if on_segment else None

        def progress(event: ProgressEvent) -> None:
            control.check()  # raised outside the decoder's retry path, so a stop is never mistaken for a failure
            if event.kind == "window":
                if on_progress:
                    on_progress(event.done, event.total)
                if settled:
                    settled.advance(event.done)

        transcript = pipeline.run(
            samples,
            language=language,
            sampling_rate=SAMPLE_RATE,
            progress=progress,
            source=source,
            **asdict(speaker_counts),
        )
        if transcript.duration > 0:
            self.metrics.audio_seconds.inc(transcript.duration)
            self.metrics.real_time_factor.observe((time.perf_counter() - started) / transcript.duration)
        return transcript


# The OpenAI SDKs retry 5xx answers unless told not to: the same audio would time out or fail the same way again.
_NO_RETRY = {"x-should-retry": "false"}


def _naming(error: AudioError, path: Path, source: str) -> AudioError:
    """The same error (AudioTooLong stays one) naming the upload instead of the server's temporary file."""
    return type(error)(str(error).replace(str(path), source))


def as_api_error(error: BaseException) -> APIError:
    """The client-facing form of anything a run raised; unexpected errors are logged, not shown."""
    if isinstance(error, APIError):
        return error
    if isinstance(error, LanguageError):
        return APIError(400, str(error), param="language", code="unsupported_language")
    if isinstance(error, KnownSpeakersUnsupported):
        return APIError(400, str(error), param="known_speaker_names", code="known_speakers_unsupported")
    if isinstance(error, SpeakerCountsUnsupported):
        return APIError(400, str(error), param="num_speakers", code="speaker_counts_unsupported")
    if isinstance(error, AudioTooLong):
        return APIError(413, str(error), param="file", code="audio_too_long")
    if isinstance(error, AudioError):
        return APIError(400, str(error), param="file", code="invalid_audio")
    if isinstance(error, RunStopped):
        if error.reason == "timeout":
            return APIError(
                504,
                "The transcription took longer than the server's request timeout.",
                type="server_error",
                code="timeout",
                headers=_NO_RETRY,
            )
        return APIError(503, f"The transcription was stopped ({error.reason}).", type="server_error", code=error.reason)
    if isinstance(error, TurnscribeError):
        return APIError(500, str(error), type="server_error", code="transcription_failed", headers=_NO_RETRY)
    log.error("transcription failed", exc_info=error)
    return APIError(500, "Internal server error; see the server log.", type="server_error")
