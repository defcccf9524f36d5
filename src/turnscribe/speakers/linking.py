"""The speaker stage: turn window-local speaker slots into file-wide speaker labels."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from turnscribe.speakers.clustering import check_counts, check_threshold, cluster_embeddings
from turnscribe.speakers.embedders import Embedder
from turnscribe.types import SAMPLE_RATE, StitchedSegment

# Clips per embed() call: bounds what an embedder that holds all its input at once may take. The built-in ones
# batch forward passes within a call (bounded in size), and more clips per call lets them batch better.
_EMBED_CHUNK = 1024


@dataclass(frozen=True)
class SpeakerAssignment:
    """What linking one recording gave: a label per segment, and the cut it clustered at.

    The threshold belongs to the recording, not to the linker: one linker serves many recordings (the server
    shares one across requests), and a calibrated threshold differs from one recording to the next.
    """

    labels: list[str]  # one per segment, in the segments' order
    threshold: float | None  # cosine-distance cut used for this recording; None where nothing was clustered


class SpeakerLinker(Protocol):
    def assign(self, segments: Sequence[StitchedSegment], audio: np.ndarray) -> SpeakerAssignment:
        """One speaker label per segment, in the segments' order, and the threshold used for this recording."""
        ...


def relabel_by_first_appearance(starts: Sequence[float], labels: Sequence[int]) -> list[str]:
    """Name clusters SPEAKER_00, SPEAKER_01, ... in the order they first speak (ties: earlier index first)."""
    if len(starts) != len(labels):
        raise ValueError(f"{len(starts)} start times but {len(labels)} labels")
    names: dict[int, str] = {}
    for i in sorted(range(len(starts)), key=lambda i: (starts[i], i)):
        names.setdefault(labels[i], f"SPEAKER_{len(names):02d}")
    return [names[label] for label in labels]


def embed_in_chunks(embedder: Embedder, clips: Sequence[np.ndarray]) -> np.ndarray:
    """Embed clips _EMBED_CHUNK at a time: batched, but bounded in memory on long files."""
    return np.concatenate([embedder.embed(clips[i : i + _EMBED_CHUNK]) for i in range(0, len(clips), _EMBED_CHUNK)])


def segment_clip(audio: np.ndarray, segment: StitchedSegment) -> np.ndarray:
    start = min(max(round(segment.start * SAMPLE_RATE), 0), len(audio))
    end = min(max(round(segment.end * SAMPLE_RATE), start), len(audio))
    return audio[start:end]


@dataclass
class ClusteringLinker:
    """The model card's baseline: embed every segment, then cluster all embeddings of the file at once."""

    embedder: Embedder
    threshold: float | None = None  # None: the embedder's calibrated default
    num_speakers: int | None = None
    min_speakers: int | None = None
    max_speakers: int | None = None

    def __post_init__(self) -> None:
        check_counts(self.num_speakers, self.min_speakers, self.max_speakers)  # fail before any decoding
        check_threshold(self.threshold)

    @property
    def effective_threshold(self) -> float:
        return self.embedder.default_threshold if self.threshold is None else self.threshold

    def _slots_fit(self, count: int) -> bool:
        return (
            (self.num_speakers is None or count == self.num_speakers)
            and (self.min_speakers is None or count >= self.min_speakers)
            and (self.max_speakers is None or count <= self.max_speakers)
        )

    def assign(self, segments: Sequence[StitchedSegment], audio: np.ndarray) -> SpeakerAssignment:
        if not segments:
            return SpeakerAssignment([], None)
        starts = [s.start for s in segments]
        # One decoder pass already numbered its speakers consistently; embeddings could only add errors.
        if len({s.window for s in segments}) == 1 and self._slots_fit(len({s.slot for s in segments})):
            return SpeakerAssignment(relabel_by_first_appearance(starts, [s.slot for s in segments]), None)

        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim != 1:
            raise ValueError(f"audio must be mono (1-D) samples at {SAMPLE_RATE} Hz, got shape {audio.shape}")
        clips = [segment_clip(audio, s) for s in segments]
        embeddings = embed_in_chunks(self.embedder, clips)
        labels = cluster_embeddings(
            embeddings,
            threshold=self.effective_threshold,
            num_speakers=self.num_speakers,
            min_speakers=self.min_speakers,
            max_speakers=self.max_speakers,
        )
        return SpeakerAssignment(relabel_by_first_appearance(starts, labels.tolist()), self.effective_threshold)
