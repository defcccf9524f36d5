"""A decoder driven by ground truth: for each window, the token stream a perfect model would emit.

Times are relative to the window in the model's 0.1 s steps, speaker slots are local to the window in
order of first appearance, and speech cut by a window edge is clipped to it. Evaluation and
benchmarks run the real pipeline with it when the real model is not available or not the subject.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass

from ..parse import format_segments
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


def reference_output(span: WindowSpan, turns: Sequence[ReferenceTurn]) -> str:
    slots: dict[str, int] = {}
    local = []
    for turn in sorted(turns, key=lambda t: t.start):
        start, end = max(turn.start, span.start) - span.start, min(turn.end, span.end) - span.start
        if end - start < MIN_VISIBLE_S:
            continue
        slot = slots.setdefault(turn.speaker, len(slots))
        local.append(LocalSegment(slot, round(start, 1), round(end, 1), turn.text))
    return format_segments(local)


class ReferenceDecoder:
    name = "reference"

    def __init__(self, turns: Sequence[ReferenceTurn], *, model_id: str = "reference", batch_size: int = 16):
        self.turns = sorted(turns, key=lambda t: t.start)
        # Long files have thousands of turns: find each window's by bisection, not by a full scan.
        self._starts = [t.start for t in self.turns]
        self._longest = max((t.end - t.start for t in self.turns), default=0.0)
        self.model_id = model_id
        self.batch_size = batch_size

    def decode(self, windows: Sequence[WindowAudio], language: str) -> list[str]:
        return [reference_output(w.span, self._near(w.span)) for w in windows]

    def _near(self, span: WindowSpan) -> list[ReferenceTurn]:
        lo = bisect_left(self._starts, span.start - self._longest)
        hi = bisect_left(self._starts, span.end)
        return [t for t in self.turns[lo:hi] if t.end > span.start]
