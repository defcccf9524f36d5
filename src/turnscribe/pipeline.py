"""One path from a recording to a Transcript: audio → windows → decode → parse → stitch → speakers.

The CLI, and later the server and batch runner, are thin shells over `Pipeline.run`.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np

from .audio import AudioInput, AudioLoader, load_audio
from .decoders.base import Decoder, DecoderError, StreamingDecoder, WindowAudio
from .parse import parse_window
from .prompt import check_language
from .stitch import stitch
from .types import (
    NO_SPACE_LANGUAGES,
    SAMPLE_RATE,
    ParsedWindow,
    Repair,
    Segment,
    Transcript,
    TranscriptMetadata,
    TurnscribeError,
    WindowSpan,
    audible,
)
from .windows import DEFAULT_OVERLAP_S, DEFAULT_WINDOW_S, MIN_WINDOW_S, check_window, plan_windows

if TYPE_CHECKING:
    from .speakers.linking import SpeakerLinker

log = logging.getLogger(__name__)


class SpeakerCountsUnsupported(TurnscribeError):
    """Speaker counts given to a pipeline whose linker takes none (one of a caller's own)."""


@dataclass(frozen=True)
class ProgressEvent:
    """`window`: `done` of `total` windows decoded; `speakers`: decoding is over and speaker linking begins (a
    callback that raises stops the run there, before the embedder); `file`: the transcript is ready."""

    kind: Literal["window", "speakers", "file"]
    done: int
    total: int
    source: str | None = None


ProgressCallback = Callable[[ProgressEvent], None]


StopReason = Literal["cancelled", "timeout", "shutdown"]


class RunStopped(Exception):
    """A run stopped on request (cancel, shutdown) or because its deadline passed."""

    def __init__(self, reason: StopReason) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class RunControl:
    deadline: float | None = None  # time.monotonic() after which the run stops
    _stop: threading.Event = field(default_factory=threading.Event)
    _reason: StopReason = "cancelled"

    def stop(self, reason: StopReason) -> None:
        self._reason = reason
        self._stop.set()

    def check(self) -> None:
        if self._stop.is_set():
            raise RunStopped(self._reason)
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise RunStopped("timeout")


def _batches(items: Sequence[WindowSpan], size: Callable[[], int]) -> Iterator[Sequence[WindowSpan]]:
    """Consecutive batches, each as large as `size()` says when it is cut (a decoder may lower its batch size
    after running out of GPU memory)."""
    start = 0
    while start < len(items):
        end = start + max(1, size())
        yield items[start:end]
        start = end


# A window's raw output (None: it failed), and whether it was sent to the model (False: silence, or a sliver).
_Output = tuple[WindowSpan, str | None, bool]


def _window_failed(index: int, error: Exception, repairs: list[Repair]) -> None:
    """Record a window that failed even alone; the file goes on without it."""
    log.warning("window %d failed: %s", index, error)
    repairs.append(Repair("window_failed", f"{type(error).__name__}: {error}", index))


class Pipeline:
    """The swappable parts (decoder, speaker linker, audio loader) and the windowing, reusable across files."""

    def __init__(
        self,
        decoder: Decoder,
        speakers: SpeakerLinker,
        *,
        window_s: float = DEFAULT_WINDOW_S,
        overlap_s: float = DEFAULT_OVERLAP_S,
        load: AudioLoader = load_audio,
    ) -> None:
        check_window(window_s, overlap_s)
        self.decoder = decoder
        self.speakers = speakers
        self.window_s = window_s
        self.overlap_s = overlap_s
        self.load = load

    def run(
        self,
        audio: AudioInput,
        *,
        language: str = "en",
        sampling_rate: int | None = None,
        progress: ProgressCallback | None = None,
        source: str | None = None,
        num_speakers: int | None = None,
        min_speakers: int | None = None,
        max_speakers: int | None = None,
    ) -> Transcript:
        """The transcript of one recording. `num_speakers`, `min_speakers`, `max_speakers`: this recording's hints
        (pyannote's `pipeline(file, num_speakers=2)`); any one given replaces all three of the linker's for this run."""
        language = check_language(language)
        linker = self.speakers_for(num_speakers, min_speakers, max_speakers)  # checked before any decoding
        if source is None and isinstance(audio, str | os.PathLike):  # as run_many names it
            source = str(audio)
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        samples = self.load(audio, sampling_rate)
        timings["audio"] = time.perf_counter() - t0
        spans = plan_windows(len(samples), self.window_s, self.overlap_s)
        metadata = TranscriptMetadata(
            model=self.decoder.model_id,
            decoder=self.decoder.name,
            embedder=getattr(getattr(self.speakers, "embedder", None), "name", ""),
            window_s=self.window_s,
            overlap_s=self.overlap_s,
            windows=len(spans),
            source=source,
        )

        t0 = time.perf_counter()
        parsed = self._decode(samples, spans, language, metadata.repairs, progress, source)
        timings["decode"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        stitched, stitch_repairs = stitch(parsed, char_level=language in NO_SPACE_LANGUAGES)
        metadata.repairs.extend(stitch_repairs)
        timings["stitch"] = time.perf_counter() - t0

        if progress:
            progress(ProgressEvent("speakers", 0, 1, source))
        t0 = time.perf_counter()
        assignment = linker.assign(stitched, samples)
        labels = assignment.labels
        timings["speakers"] = time.perf_counter() - t0
        # Known only after linking, and only for this recording: the slot linker calibrates it on each one. A Python
        # float: the json output cannot hold a numpy float32 (a threshold given as one, or an embedder's default).
        metadata.threshold = None if assignment.threshold is None else float(assignment.threshold)

        segments = [
            Segment(i, s.start, s.end, s.text, label) for i, (s, label) in enumerate(zip(stitched, labels, strict=True))
        ]
        speakers = list(dict.fromkeys(labels))
        timings["total"] = sum(timings.values())
        metadata.timings = timings
        if progress:
            progress(ProgressEvent("file", 1, 1, source))
        return Transcript(segments, speakers, language, len(samples) / SAMPLE_RATE, metadata)

    def speakers_for(
        self, num_speakers: int | None, min_speakers: int | None, max_speakers: int | None
    ) -> SpeakerLinker:
        """The linker with these speaker counts (a copy; the pipeline's own where none is given)."""
        from .speakers.clustering import check_counts

        if num_speakers is None and min_speakers is None and max_speakers is None:
            return self.speakers
        check_counts(num_speakers, min_speakers, max_speakers)
        if not (dataclasses.is_dataclass(self.speakers) and hasattr(self.speakers, "num_speakers")):
            raise SpeakerCountsUnsupported(
                f"speaker counts need the slots or baseline linker; this pipeline has {type(self.speakers).__name__}"
            )
        # A shallow copy, not dataclasses.replace: that runs __post_init__ again, and the slots linker's embeds every
        # known speaker's reference (the counts are checked above, and the references are the same). Set as
        # dataclasses.replace would, also on a caller's frozen dataclass.
        linker = copy.copy(self.speakers)
        counts = {"num_speakers": num_speakers, "min_speakers": min_speakers, "max_speakers": max_speakers}
        for name, value in counts.items():
            object.__setattr__(linker, name, value)
        return linker

    def _decode(
        self,
        samples: np.ndarray,
        spans: Sequence[WindowSpan],
        language: str,
        repairs: list[Repair],
        progress: ProgressCallback | None,
        source: str | None,
    ) -> list[tuple[WindowSpan, ParsedWindow]]:
        outputs = (
            self._stream_outputs(self.decoder, samples, spans, language, repairs)
            if isinstance(self.decoder, StreamingDecoder)
            else self._batch_outputs(samples, spans, language, repairs)
        )
        parsed: list[tuple[WindowSpan, ParsedWindow]] = []
        failed = decoded = 0
        for group in outputs:  # progress after each group of windows that arrived together
            for span, raw, sent in group:
                failed += raw is None
                decoded += sent and raw is not None
                parsed.append((span, parse_window(raw or "", span.duration, span.index)))
                repairs.extend(parsed[-1][1].repairs)
            if progress:
                progress(ProgressEvent("window", len(parsed), len(spans), source))
        # Silent windows are not sent: speech whose every window failed is an error even in a file with silence.
        if failed and not decoded:
            raise DecoderError(f"Every window failed to decode; see the log. First failure: {repairs[0].detail}")
        return parsed

    @staticmethod
    def _window(samples: np.ndarray, span: WindowSpan) -> tuple[WindowAudio, bool]:
        window = WindowAudio(span, samples[span.start_sample : span.end_sample])
        # Digital silence is not sent to the model, nor a sliver shorter than one of its time steps (the last window
        # with no overlap): it holds no word, and a model asked to transcribe it makes one up.
        long_enough = len(window.samples) >= MIN_WINDOW_S * SAMPLE_RATE
        return window, long_enough and audible(window.samples)

    def _batch_outputs(
        self, samples: np.ndarray, spans: Sequence[WindowSpan], language: str, repairs: list[Repair]
    ) -> Iterator[list[_Output]]:
        """Each batch's raw outputs in order, decoded `batch_size` windows per call."""
        for batch in _batches(spans, lambda: self.decoder.batch_size):
            windows = [self._window(samples, s) for s in batch]
            audible = [w for w, loud in windows if loud]
            outputs = dict(zip((w.span.index for w in audible), self._decode_batch(audible, language, repairs)))
            yield [(w.span, outputs.get(w.span.index, ""), loud) for w, loud in windows]

    def _stream_outputs(
        self,
        decoder: StreamingDecoder,
        samples: np.ndarray,
        spans: Sequence[WindowSpan],
        language: str,
        repairs: list[Repair],
    ) -> Iterator[list[_Output]]:
        """Each window's raw output in order, one at a time; up to `batch_size` windows are queued ahead of it.

        Windows are submitted in groups (whenever half the look-ahead has drained), so that a batch can form from
        them; the scheduler's own queue bound blocks `submit` when the model is behind.
        """
        ahead = max(1, decoder.batch_size)
        todo = iter(spans)
        in_flight: deque[tuple[WindowSpan, Future[str] | None]] = deque()
        try:
            while True:
                if len(in_flight) <= ahead // 2:
                    group = [self._window(samples, s) for s in itertools.islice(todo, ahead - len(in_flight))]
                    futures = iter(decoder.submit([w for w, loud in group if loud], language))
                    in_flight.extend((w.span, next(futures) if loud else None) for w, loud in group)
                if not in_flight:
                    return
                span, future = in_flight.popleft()
                raw: str | None = ""  # silence: nothing to say
                if future is not None:
                    try:
                        raw = future.result()
                    except Exception as error:  # the scheduler already retried it alone: this window is lost
                        _window_failed(span.index, error, repairs)
                        raw = None
                yield [(span, raw, future is not None)]
        finally:  # stopped early (cancelled, timed out): free the model from this file's queued windows
            for _, future in in_flight:
                if future is not None:
                    future.cancel()

    def _decode_batch(self, windows: list[WindowAudio], language: str, repairs: list[Repair]) -> list[str | None]:
        """Decode a batch; if it fails, retry window by window so one bad window cannot sink the file."""
        if not windows:
            return []
        try:
            outputs = list(self.decoder.decode(windows, language))
            if len(outputs) != len(windows):
                raise DecoderError(f"decoder returned {len(outputs)} outputs for {len(windows)} windows")
            return list(outputs)
        except Exception as batch_error:  # a backend may raise anything (OOM, CUDA, HTTP): isolate it
            if len(windows) == 1:
                _window_failed(windows[0].span.index, batch_error, repairs)
                return [None]
            log.warning("batch of %d windows failed (%s); retrying one by one", len(windows), batch_error)
            return [out for w in windows for out in self._decode_batch([w], language, repairs)]
