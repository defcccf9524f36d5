"""One path from a recording to a Transcript: audio → windows → decode → parse → stitch → speakers.

The CLI, and later the server and batch runner, are thin shells over `Pipeline.run`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from .audio import AudioInput, load_audio
from .decoders.base import Decoder, DecoderError, WindowAudio
from .parse import parse_window
from .prompt import check_language
from .stitch import stitch
from .types import SAMPLE_RATE, ParsedWindow, Repair, Segment, Transcript, TranscriptMetadata, WindowSpan
from .windows import DEFAULT_OVERLAP_S, DEFAULT_WINDOW_S, check_window, plan_windows

if TYPE_CHECKING:
    from .speakers.linking import SpeakerLinker

log = logging.getLogger(__name__)

SILENCE_PEAK = 1e-4
"""Windows whose loudest sample is below this (-80 dBFS: digital silence) are not sent to the model."""
NO_SPACE_LANGUAGES = {"ja", "zh"}


@dataclass(frozen=True)
class ProgressEvent:
    kind: Literal["window", "file"]
    done: int
    total: int
    source: str | None = None


ProgressCallback = Callable[[ProgressEvent], None]


def _batches(items: Sequence[WindowSpan], size: int) -> Iterator[Sequence[WindowSpan]]:
    for i in range(0, len(items), max(1, size)):
        yield items[i : i + size]


class Pipeline:
    """The swappable parts (decoder, speaker linker) and the windowing, reusable across files."""

    def __init__(
        self,
        decoder: Decoder,
        speakers: SpeakerLinker,
        *,
        window_s: float = DEFAULT_WINDOW_S,
        overlap_s: float = DEFAULT_OVERLAP_S,
    ) -> None:
        check_window(window_s, overlap_s)
        self.decoder = decoder
        self.speakers = speakers
        self.window_s = window_s
        self.overlap_s = overlap_s

    def run(
        self,
        audio: AudioInput,
        *,
        language: str = "en",
        sampling_rate: int | None = None,
        progress: ProgressCallback | None = None,
        source: str | None = None,
    ) -> Transcript:
        language = check_language(language)
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        samples = load_audio(audio, sampling_rate)
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

        t0 = time.perf_counter()
        assignment = self.speakers.assign(stitched, samples)
        labels = assignment.labels
        timings["speakers"] = time.perf_counter() - t0
        # Known only after linking, and only for this recording: the slot linker calibrates it on each one.
        metadata.threshold = assignment.threshold

        segments = [
            Segment(i, s.start, s.end, s.text, label) for i, (s, label) in enumerate(zip(stitched, labels, strict=True))
        ]
        speakers = list(dict.fromkeys(labels))
        timings["total"] = sum(timings.values())
        metadata.timings = timings
        if progress:
            progress(ProgressEvent("file", 1, 1, source))
        return Transcript(segments, speakers, language, len(samples) / SAMPLE_RATE, metadata)

    def _decode(
        self,
        samples: np.ndarray,
        spans: Sequence[WindowSpan],
        language: str,
        repairs: list[Repair],
        progress: ProgressCallback | None,
        source: str | None,
    ) -> list[tuple[WindowSpan, ParsedWindow]]:
        parsed: list[tuple[WindowSpan, ParsedWindow]] = []
        done = failed = 0
        for batch in _batches(spans, self.decoder.batch_size):
            windows = [WindowAudio(s, samples[s.start_sample : s.end_sample]) for s in batch]
            audible = [w for w in windows if np.abs(w.samples).max(initial=0.0) >= SILENCE_PEAK]
            outputs = dict(zip((w.span.index for w in audible), self._decode_batch(audible, language, repairs)))
            for w in windows:
                raw = outputs.get(w.span.index, "")
                if raw is None:
                    failed += 1
                    raw = ""
                parsed.append((w.span, parse_window(raw, w.span.duration, w.span.index)))
                repairs.extend(parsed[-1][1].repairs)
            done += len(batch)
            if progress:
                progress(ProgressEvent("window", done, len(spans), source))
        if spans and failed == len(spans):
            raise DecoderError(f"Every window failed to decode; see the log. First failure: {repairs[0].detail}")
        return parsed

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
                log.warning("window %d failed: %s", windows[0].span.index, batch_error)
                repairs.append(
                    Repair("window_failed", f"{type(batch_error).__name__}: {batch_error}", windows[0].span.index)
                )
                return [None]
            log.warning("batch of %d windows failed (%s); retrying one by one", len(windows), batch_error)
            return [out for w in windows for out in self._decode_batch([w], language, repairs)]
