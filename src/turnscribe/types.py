"""Typed records that cross stage boundaries: audio → windows → parse → stitch → speakers → Transcript."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

SAMPLE_RATE = 16_000
"""Every stage after audio decoding works on mono float32 samples at this rate."""
SILENCE_PEAK = 1e-4
"""Audio whose loudest sample is below this (-80 dBFS) is digital silence: no window or voice to be heard in it."""
NO_SPACE_LANGUAGES = frozenset({"ja", "zh"})
"""Languages written without spaces between words: their segments join with nothing between them."""


def text_separator(language: str) -> str:
    """What goes between two segments' texts, as Whisper and OpenAI's API join them: a space, none in `ja` and `zh`."""
    return "" if language in NO_SPACE_LANGUAGES else " "


def audible(samples: np.ndarray) -> bool:
    """Whether any sample reaches SILENCE_PEAK (empty audio, and NaN, do not)."""
    return bool(np.abs(samples).max(initial=0.0) >= SILENCE_PEAK)


class TurnscribeError(Exception):
    """Base class of the errors turnscribe raises on purpose: the message is meant for the user."""


@dataclass(frozen=True)
class WindowSpan:
    """One decoder pass: samples [start_sample, end_sample) of the file."""

    index: int
    start_sample: int
    end_sample: int

    @property
    def start(self) -> float:
        return self.start_sample / SAMPLE_RATE

    @property
    def end(self) -> float:
        return self.end_sample / SAMPLE_RATE

    @property
    def duration(self) -> float:
        return (self.end_sample - self.start_sample) / SAMPLE_RATE


@dataclass(frozen=True)
class Repair:
    """Something the parser or stitcher fixed or dropped, reported instead of hidden."""

    kind: str
    detail: str
    window: int | None = None


@dataclass(frozen=True)
class LocalSegment:
    """A segment as one window saw it: times relative to the window start, speaker as the model's local slot."""

    slot: int
    start: float
    end: float
    text: str


@dataclass(frozen=True)
class ParsedWindow:
    segments: list[LocalSegment]
    repairs: list[Repair]


@dataclass(frozen=True)
class StitchedSegment:
    """A segment on the file's timeline that still carries its window-local speaker slot."""

    start: float
    end: float
    text: str
    window: int
    slot: int
    # (window, slot) pairs of neighbouring windows that decoded the same speech: evidence for linking.
    also_seen_as: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class Segment:
    """One speaker turn of the final transcript."""

    id: int
    start: float
    end: float
    text: str
    speaker: str

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "start": self.start, "end": self.end, "text": self.text, "speaker": self.speaker}


@dataclass
class TranscriptMetadata:
    model: str = ""
    decoder: str = ""
    embedder: str = ""
    threshold: float | None = None
    window_s: float = 28.0
    overlap_s: float = 2.0
    windows: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    repairs: list[Repair] = field(default_factory=list)
    source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "decoder": self.decoder,
            "embedder": self.embedder,
            "threshold": self.threshold,
            "window_s": self.window_s,
            "overlap_s": self.overlap_s,
            "windows": self.windows,
            "timings": dict(self.timings),
            "repairs": [{"kind": r.kind, "detail": r.detail, "window": r.window} for r in self.repairs],
            "source": self.source,
        }


@dataclass
class Transcript:
    """Who spoke when, and what they said, for one recording."""

    segments: list[Segment]
    speakers: list[str]
    language: str
    duration: float
    metadata: TranscriptMetadata = field(default_factory=TranscriptMetadata)

    @property
    def text(self) -> str:
        return text_separator(self.language).join(s.text for s in self.segments if s.text)

    def to_dict(self) -> dict[str, Any]:
        return {
            "language": self.language,
            "duration": self.duration,
            "text": self.text,
            "speakers": list(self.speakers),
            "segments": [s.to_dict() for s in self.segments],
            "metadata": self.metadata.to_dict(),
        }
