"""A decoder driven by ground truth: for each window, the token stream a perfect model would emit.

Times are relative to the window in the model's 0.1 s steps, speaker slots are local to the window in
order of first appearance, and speech cut by a window edge is clipped to it. Evaluation and
benchmarks run the real pipeline with it when the real model is not available or not the subject.
`Imperfections` adds the errors a real decoder makes, seeded per window, so that linking and stitching
can be measured against decoder noise of a known kind and amount.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..parse import TIME_STEP, format_segments
from ..types import LocalSegment, WindowSpan
from .base import WindowAudio

MIN_VISIBLE_S = 0.3
"""Speech of which less than this falls inside a window is not emitted for that window."""


@dataclass(frozen=True)
class ReferenceTurn:
    start: float
    end: float
    speaker: str
    text: str


# Words a substitution or insertion puts in: short, common ones, as a real decoder's errors mostly are.
_ERROR_WORDS = ("the", "a", "and", "so", "well", "that", "it", "uh", "to", "in")


@dataclass(frozen=True)
class Imperfections:
    """Decoder errors to simulate; the default is a perfect decoder.

    Each window draws its errors from its own generator, seeded with (seed, window index): a window comes out
    the same whatever batch it is decoded in, and two windows that share speech err independently, as two
    passes of a real model do.
    """

    word_error_rate: float = 0.0
    """Share of reference words hit by an error: substituted, deleted, or followed by an inserted word (1/3 each)."""
    boundary_jitter_s: float = 0.0
    """Each segment start and end moves by a whole number of 0.1 s steps, uniform within ± this."""
    swap_slots: float = 0.0
    """Probability that a window numbers its speakers in a random order instead of order of first appearance."""
    slot_errors: float = 0.0
    """Probability that a segment is given the slot of another speaker of its window (confusion inside a window)."""
    drop_short_s: float = 0.0
    """Turns shorter than this (seconds)..."""
    drop_short_p: float = 0.0
    """...are left out of a window with this probability."""
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("word_error_rate", "swap_slots", "slot_errors", "drop_short_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} is a probability in [0, 1], got {getattr(self, name)}")
        for name in ("boundary_jitter_s", "drop_short_s"):
            # Not `< 0`: NaN passed that and failed (jitter) or did nothing (drops) only when decoding.
            if not 0 <= getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be a finite number of seconds >= 0, got {getattr(self, name)}")

    @property
    def perfect(self) -> bool:
        return self == Imperfections(seed=self.seed)


def _seconds(start: float, end: float) -> float:
    """end - start to the microsecond: differences of 0.1 s times are off by ~1e-15 (12.7 - 12.4 < 0.3), and a
    0.3 s back-channel must not fall under MIN_VISIBLE_S (or a 1.0 s turn under drop_short_s = 1.0) by that."""
    return round(end - start, 6)


class _WindowNoise:
    def __init__(self, imperfections: Imperfections, window: int) -> None:
        self.config = imperfections
        self.rng = np.random.default_rng([imperfections.seed, window])

    def drops(self, turn: ReferenceTurn) -> bool:
        short = _seconds(turn.start, turn.end) < self.config.drop_short_s
        return short and self.rng.random() < self.config.drop_short_p

    def apply(self, segments: list[LocalSegment], duration: float) -> list[LocalSegment]:
        count = len({s.slot for s in segments})
        order = self.rng.permutation(count) if self.rng.random() < self.config.swap_slots else np.arange(count)
        noisy = []
        for seg in segments:
            slot = seg.slot
            if count > 1 and self.rng.random() < self.config.slot_errors:
                slot = int(self.rng.choice([s for s in range(count) if s != slot]))
            start, end = self._jitter(seg.start, seg.end, duration)
            noisy.append(LocalSegment(int(order[slot]), start, end, self._words(seg.text)))
        # The model writes segments in time order, so jittered ones are re-sorted (stable: ties keep their order).
        return sorted(noisy, key=lambda s: s.start)

    def _jitter(self, start: float, end: float, duration: float) -> tuple[float, float]:
        # Whole steps within the bound: rounding to the nearest would let 0.16 s move a boundary by 0.2 s.
        steps = math.floor(round(self.config.boundary_jitter_s / TIME_STEP, 6))
        if steps == 0:
            return start, end
        last = round(duration, 1)
        start = min(max(start + TIME_STEP * int(self.rng.integers(-steps, steps + 1)), 0.0), last - TIME_STEP)
        end = min(max(end + TIME_STEP * int(self.rng.integers(-steps, steps + 1)), start + TIME_STEP), last)
        return round(start, 1), round(end, 1)

    def _words(self, text: str) -> str:
        words: list[str] = []
        for word in text.split():
            if self.rng.random() >= self.config.word_error_rate:
                words.append(word)
                continue
            kind = int(self.rng.integers(3))
            other = str(self.rng.choice([w for w in _ERROR_WORDS if w != word.lower()]))
            if kind == 0:
                words.append(other)
            elif kind == 2:
                words += [word, other]
        return " ".join(words)


def reference_output(
    span: WindowSpan, turns: Sequence[ReferenceTurn], imperfections: Imperfections | None = None
) -> str:
    noise = None if imperfections is None or imperfections.perfect else _WindowNoise(imperfections, span.index)
    slots: dict[str, int] = {}
    local = []
    for turn in sorted(turns, key=lambda t: t.start):
        start, end = max(turn.start, span.start) - span.start, min(turn.end, span.end) - span.start
        if _seconds(start, end) < MIN_VISIBLE_S or (noise is not None and noise.drops(turn)):
            continue
        slot = slots.setdefault(turn.speaker, len(slots))
        local.append(LocalSegment(slot, round(start, 1), round(end, 1), turn.text))
    return format_segments(local if noise is None else noise.apply(local, span.duration))


class ReferenceDecoder:
    name = "reference"

    def __init__(
        self,
        turns: Sequence[ReferenceTurn],
        *,
        imperfections: Imperfections | None = None,
        model_id: str = "reference",
        batch_size: int = 16,
    ):
        self.imperfections = imperfections
        self.turns = sorted(turns, key=lambda t: t.start)
        # Long files have thousands of turns: find each window's by bisection, not by a full scan.
        self._starts = [t.start for t in self.turns]
        self._longest = max((t.end - t.start for t in self.turns), default=0.0)
        self.model_id = model_id
        self.batch_size = batch_size

    def decode(self, windows: Sequence[WindowAudio], language: str) -> list[str]:
        return [reference_output(w.span, self._near(w.span), self.imperfections) for w in windows]

    def _near(self, span: WindowSpan) -> list[ReferenceTurn]:
        lo = bisect_left(self._starts, span.start - self._longest)
        hi = bisect_left(self._starts, span.end)
        return [t for t in self.turns[lo:hi] if t.end > span.start]
