"""An embedder that knows who is speaking: the floor of linking error, for benchmarks.

The true speaker of every sample is written into the audio itself, in the lowest mantissa bits of its float32
samples (a change of about 2e-6 relative: nothing any decoder or embedder can hear). Whatever a linker hands
the embedder — one segment's slice, a copy, several segments of one slot pooled together — the oracle reads
the owners of its samples back and returns the majority speaker as a one-hot vector. The linker needs no
changes, so the same run with this embedder instead of a real one separates embedding errors from the rest.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..decoders.reference import ReferenceTurn
from ..types import SAMPLE_RATE

_BITS = 4
_MASK = np.uint32((1 << _BITS) - 1)
MAX_SPEAKERS = (1 << _BITS) - 1  # code 0 is "nobody"


def tag_speakers(audio: np.ndarray, turns: Sequence[ReferenceTurn]) -> tuple[np.ndarray, list[str]]:
    """A float32 copy of `audio` carrying each sample's speaker, and the speakers in code order (code - 1).

    Where two turns overlap, the one that started later owns the samples: the interrupter or back-channel, whose
    short segment would otherwise have no samples of its own.
    """
    names = list(dict.fromkeys(t.speaker for t in turns))
    if len(names) > MAX_SPEAKERS:
        raise ValueError(f"the oracle tells at most {MAX_SPEAKERS} speakers apart, got {len(names)}")
    codes = np.zeros(len(audio), np.uint32)
    for turn in sorted(turns, key=lambda t: t.start):
        codes[round(turn.start * SAMPLE_RATE) : round(turn.end * SAMPLE_RATE)] = names.index(turn.speaker) + 1
    bits = np.array(audio, dtype=np.float32).view(np.uint32)
    return ((bits & ~_MASK) | codes).view(np.float32), names


class OracleEmbedder:
    """One-hot embeddings of the speaker who owns most samples of a clip (dimension 0: nobody)."""

    name = "oracle"
    default_threshold = 0.5  # one-hot rows are 0 (same speaker) or 1 (different) apart

    def embed(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        rows = np.zeros((len(clips), MAX_SPEAKERS + 1), np.float32)
        for i, clip in enumerate(clips):
            codes = np.ascontiguousarray(clip, dtype=np.float32).view(np.uint32) & _MASK
            counts = np.bincount(codes, minlength=MAX_SPEAKERS + 1)
            counts[0] = 0
            rows[i, int(counts.argmax()) if counts.any() else 0] = 1.0
        return rows
