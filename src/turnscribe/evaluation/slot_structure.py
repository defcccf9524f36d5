"""Stitched segments and slot embeddings with the structure of a long meeting, without audio or a model.

For timing and memory tests of speaker linking at many hours: generating and embedding 10 hours of speech
would take far longer than the linking it is meant to measure. Each 28 s window (26 s hop) has 2-4 of the
meeting's speakers as slots with 1-3 segments each; most window boundaries carry one segment decoded by both
windows (`also_seen_as`); embeddings are a fixed unit vector per speaker plus noise, so that one speaker's
slots sit about 0.15 apart in cosine distance (noise 0.027 per dimension in 256-d) and two speakers' about 1.0
(random directions).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..types import StitchedSegment
from ..windows import DEFAULT_OVERLAP_S, DEFAULT_WINDOW_S


@dataclass(frozen=True)
class SlotMeeting:
    segments: list[StitchedSegment]
    speaker_of_slot: dict[tuple[int, int], int]  # (window, slot) -> true speaker
    centres: np.ndarray  # (speakers, dim) unit vectors
    duration_s: float

    def embedding(self, window: int, slot: int, noise: float, rng: np.random.Generator) -> np.ndarray:
        centre = self.centres[self.speaker_of_slot[(window, slot)]]
        vector = centre + rng.normal(scale=noise, size=centre.shape)
        return vector / np.linalg.norm(vector)


def slot_meeting(hours: float, speakers: int = 8, dim: int = 256, seed: int = 0) -> SlotMeeting:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(speakers, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    hop = DEFAULT_WINDOW_S - DEFAULT_OVERLAP_S
    windows = int(hours * 3600 // hop)
    segments: list[StitchedSegment] = []
    speaker_of_slot: dict[tuple[int, int], int] = {}
    previous: dict[int, int] = {}  # speaker -> slot in the previous window
    for w in range(windows):
        start = w * hop
        present = rng.choice(speakers, size=int(rng.integers(2, 5)), replace=False)
        slots = {int(p): k for k, p in enumerate(present)}
        for p, k in slots.items():
            speaker_of_slot[(w, k)] = p
            for _ in range(int(rng.integers(1, 4))):
                t0 = start + float(rng.uniform(0, DEFAULT_WINDOW_S - 3))
                t1 = t0 + float(rng.uniform(0.3, 3.0))
                segments.append(StitchedSegment(round(t0, 1), round(t1, 1), "words", w, k))
        shared = [p for p in slots if p in previous]
        if shared and rng.random() < 0.8:
            p = shared[0]
            edge = start + DEFAULT_OVERLAP_S / 2
            segments.append(StitchedSegment(edge - 1.0, edge + 1.0, "words", w - 1, previous[p], ((w, slots[p]),)))
        previous = slots
    segments.sort(key=lambda s: (s.start, s.end))
    return SlotMeeting(segments, speaker_of_slot, centres, windows * hop + DEFAULT_OVERLAP_S)
