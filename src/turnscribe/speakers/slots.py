"""Slot linking: link the model's window-local speaker slots, not single segments, into file-wide speakers.

Inside one window the model has already told its speakers apart, so the unit of linking is a slot
(window, slot), with one embedding pooled over all of its speech:

1. Slots that stitch.py saw decode the same speech in two neighbouring windows (`also_seen_as`) are one
   person: they are joined first (must-link), unless that would put two slots of one window together.
2. Each slot's speech, less the stretches where someone else talks at the same time, is concatenated and
   embedded once. Slots with less than `min_speech_s` of speech are "weak": they take part in no decision
   and are attached, at the end, to the nearest speaker they do not conflict with.
3. Two slots of one window are different people (cannot-link), unless their embeddings are overwhelmingly
   close (under `waiver` × the threshold): then the model split one person and they are joined.
4. Average-linkage agglomerative clustering over slot groups by cosine distance, never merging two groups
   that speak in the same window, cut at the threshold, or at `num_speakers` / clamped into
   `min_speakers`..`max_speakers` (a count hint beats the cannot-links if nothing else can reach it).

Automatic threshold (when none is given): each recording calibrates its own. Pairs of slots of one window
are known to be different people, must-linked slots known to be the same person; the cut is the distance
that separates those two sets best (least FRR + FAR, the middle of the best range). This adapts to the
embedder, the voices and the noise of this recording instead of trusting one τ for all of them. With fewer
than `MIN_CALIBRATION_PAIRS` of either kind, or when the two sets do not separate at all, the embedder's
calibrated default is used.

Average linkage is computed from per-group weighted sums of unit embeddings (the mean cosine similarity of
two groups is the dot product of their means), so no matrix over all segments or slots is ever built: long
recordings are clustered in blocks of consecutive slots, and the blocks' clusters are clustered again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import sparse
from scipy.cluster.hierarchy import DisjointSet
from scipy.optimize import linear_sum_assignment

from turnscribe.speakers.clustering import check_counts
from turnscribe.speakers.embedders import Embedder
from turnscribe.speakers.linking import embed_in_chunks
from turnscribe.types import SAMPLE_RATE, StitchedSegment

MIN_CALIBRATION_PAIRS = 3
BLOCK = 300  # slot groups clustered together at most; bounds the distance matrix to BLOCK² entries
_FRAME = SAMPLE_RATE // 100  # overlap bookkeeping in 10 ms frames: 3.6 M counters for 10 hours


@dataclass(frozen=True)
class SlotGraph:
    """The slots of a recording and what the model and the stitcher say about them."""

    slots: list[tuple[int, int]]  # (window, slot), in order of first appearance
    segment_slot: np.ndarray  # (segments,) index into `slots`
    must_link: list[tuple[int, int]]  # slot index pairs that decoded the same speech


@dataclass(frozen=True)
class Linking:
    """A speaker index per slot, and the threshold the clustering was cut at."""

    labels: np.ndarray  # (slots,) 0..k-1
    centroids: np.ndarray  # (k, d) unit vectors
    threshold: float


def slot_graph(segments: Sequence[StitchedSegment]) -> SlotGraph:
    index: dict[tuple[int, int], int] = {}
    segment_slot = np.array([index.setdefault((s.window, s.slot), len(index)) for s in segments], dtype=np.int64)
    must_link = [
        (index[(s.window, s.slot)], index.setdefault(other, len(index))) for s in segments for other in s.also_seen_as
    ]
    return SlotGraph(list(index), segment_slot, must_link)


def _clean_spans(segments: Sequence[StitchedSegment], n_samples: int) -> list[list[tuple[int, int]]]:
    """Per segment, its sample ranges where nobody else talks (a mixture embeds as neither speaker)."""
    frames = n_samples // _FRAME + 1
    active = np.zeros(frames + 1, dtype=np.int32)
    bounds = [(min(round(s.start * 100), frames), min(round(s.end * 100), frames)) for s in segments]
    for a, b in bounds:
        active[a] += 1
        active[b] -= 1
    alone = np.cumsum(active)[:frames] <= 1
    spans = []
    for a, b in bounds:
        # Runs of frames inside [a, b) where this segment is the only one: edges of the boolean mask.
        edges = np.flatnonzero(np.diff(np.concatenate(([False], alone[a:b], [False])).astype(np.int8)))
        spans.append(
            [(min((a + x) * _FRAME, n_samples), min((a + y) * _FRAME, n_samples)) for x, y in edges.reshape(-1, 2)]
        )
    return spans


def pool_slot_audio(
    segments: Sequence[StitchedSegment], graph: SlotGraph, audio: np.ndarray, min_speech_s: float
) -> list[np.ndarray]:
    """Each slot's speech concatenated; only the stretches without overlap when they add up to min_speech_s."""
    clean = _clean_spans(segments, len(audio))
    whole: list[list[tuple[int, int]]] = [[] for _ in graph.slots]
    alone: list[list[tuple[int, int]]] = [[] for _ in graph.slots]
    for segment, slot, spans in zip(segments, graph.segment_slot, clean, strict=True):
        start = min(max(round(segment.start * SAMPLE_RATE), 0), len(audio))
        whole[slot].append((start, min(max(round(segment.end * SAMPLE_RATE), start), len(audio))))
        alone[slot].extend(spans)
    pooled = []
    for w, a in zip(whole, alone, strict=True):
        spans = a if sum(e - s for s, e in a) >= min_speech_s * SAMPLE_RATE else w
        pooled.append(np.concatenate([audio[s:e] for s, e in spans]) if spans else np.zeros(0, np.float32))
    return pooled


def calibrate_threshold(same: np.ndarray, different: np.ndarray, fallback: float) -> float:
    """The distance that best separates known-same from known-different pairs (module docstring)."""
    if min(len(same), len(different)) < MIN_CALIBRATION_PAIRS or np.median(same) >= np.median(different):
        return fallback
    candidates = np.unique(np.concatenate([same, different]))
    # Errors when cutting just above each candidate: same pairs above it, different pairs at or below it.
    frr = 1 - np.searchsorted(np.sort(same), candidates, side="right") / len(same)
    far = np.searchsorted(np.sort(different), candidates, side="right") / len(different)
    errors = frr + far
    best = np.flatnonzero(errors == errors.min())
    # Between the last candidate of the best run and the next distance: the middle of the empty gap there.
    low = candidates[best[0]]
    high = candidates[best[-1] + 1] if best[-1] + 1 < len(candidates) else candidates[best[-1]]
    return float((low + high) / 2)


def _agglomerate(
    sums: np.ndarray,
    weights: np.ndarray,
    windows: sparse.csr_matrix,
    threshold: float,
    *,
    num: int | None = None,
    low: int = 1,
    high: int | None = None,
) -> np.ndarray:
    """Constrained weighted average linkage; returns a cluster index per input group (0..k-1).

    Merges the closest pair of groups that share no window while it is closer than `threshold`, then keeps
    merging (or stops early) to honour `num` / [`low`, `high`]. Only when no allowed pair is left and the count
    is still above `num` / `high` are window conflicts ignored.
    """
    n = len(sums)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    means = sums / weights[:, None]
    dist = 1.0 - means @ means.T
    conflict = (windows @ windows.T).toarray() > 0
    np.fill_diagonal(conflict, True)
    alive = np.ones(n, dtype=bool)
    owner = np.arange(n)
    weights = weights.astype(np.float64).copy()
    count = n
    stop_at = num if num is not None else low
    ceiling = num if num is not None else high
    while count > stop_at:
        live = alive[:, None] & alive[None, :]
        allowed = np.where(live & ~conflict, dist, np.inf)
        i, j = np.unravel_index(np.argmin(allowed), allowed.shape)
        over = ceiling is not None and count > ceiling
        if not np.isfinite(allowed[i, j]) or (allowed[i, j] > threshold and num is None):
            if not over:
                break
            # A count hint wins over the model's slots: merge the closest pair even across a window.
            forced = np.where(live & ~np.eye(n, dtype=bool), dist, np.inf)
            i, j = np.unravel_index(np.argmin(forced), forced.shape)
        # Lance-Williams update for weighted average linkage: exact for means of unit vectors.
        merged = (weights[i] * dist[i] + weights[j] * dist[j]) / (weights[i] + weights[j])
        dist[i], dist[:, i] = merged, merged
        conflict[i] |= conflict[j]
        conflict[:, i] = conflict[i]
        weights[i] += weights[j]
        alive[j] = False
        owner[owner == j] = i
        count -= 1
    return np.unique(owner, return_inverse=True)[1].astype(np.int64)


def _incidence(groups: Sequence[Sequence[int]], slot_window: np.ndarray, n_windows: int) -> sparse.csr_matrix:
    rows = np.repeat(np.arange(len(groups)), [len(g) for g in groups])
    cols = slot_window[np.concatenate([np.asarray(g, dtype=np.int64) for g in groups])] if groups else []
    return sparse.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(len(groups), n_windows))


def link_slots(
    graph: SlotGraph,
    embeddings: np.ndarray,
    speech_s: np.ndarray,
    *,
    threshold: float | None,
    fallback_threshold: float,
    min_speech_s: float = 1.0,
    waiver: float = 0.25,
    num_speakers: int | None = None,
    min_speakers: int | None = None,
    max_speakers: int | None = None,
) -> Linking:
    """Cluster slots (`embeddings`: (slots, d) unit rows, `speech_s`: seconds pooled per slot) into speakers."""
    n = len(graph.slots)
    slot_window = np.array([w for w, _ in graph.slots], dtype=np.int64)
    strong = speech_s >= min_speech_s
    if not strong.any():  # nothing long enough to trust more than the rest: use what there is
        strong = speech_s > 0
    disjoint = DisjointSet(range(n))
    windows_of: dict[int, set[int]] = {i: {int(slot_window[i])} for i in range(n)}

    def join(a: int, b: int) -> None:
        ra, rb = disjoint[a], disjoint[b]
        if ra != rb and not windows_of[ra] & windows_of[rb]:
            disjoint.merge(ra, rb)
            windows_of[disjoint[ra]] = windows_of.pop(ra) | windows_of.pop(rb) if ra != disjoint[ra] or True else set()

    for a, b in graph.must_link:
        join(a, b)

    # Per-recording calibration from the pairs whose answer the model and the stitcher already gave.
    def pair_distances(pairs: np.ndarray) -> np.ndarray:
        if len(pairs) == 0:
            return np.zeros(0)
        keep = strong[pairs[:, 0]] & strong[pairs[:, 1]]
        a, b = pairs[keep, 0], pairs[keep, 1]
        return 1.0 - np.einsum("ij,ij->i", embeddings[a], embeddings[b])

    same_pairs = np.array(graph.must_link, dtype=np.int64).reshape(-1, 2)
    by_window: dict[int, list[int]] = {}
    for i, w in enumerate(slot_window):
        by_window.setdefault(int(w), []).append(i)
    different_pairs = np.array(
        [(a, b) for members in by_window.values() for k, a in enumerate(members) for b in members[k + 1 :]],
        dtype=np.int64,
    ).reshape(-1, 2)
    different = pair_distances(different_pairs)
    if threshold is None:
        threshold = calibrate_threshold(pair_distances(same_pairs), different, fallback_threshold)
    # The model split one person into two slots: only overwhelming evidence undoes a cannot-link.
    kept = different_pairs[strong[different_pairs[:, 0]] & strong[different_pairs[:, 1]]]
    for (a, b), d in zip(kept, different, strict=True):
        if d < waiver * threshold:
            windows_of[disjoint[a]].discard(int(slot_window[b]))  # the shared window is no conflict for them
            disjoint.merge(a, b)
            root, other = disjoint[a], (disjoint[b] if disjoint[a] != disjoint[b] else None)
            del other
            windows_of.setdefault(root, set())
    return _finish(
        graph, embeddings, speech_s, strong, disjoint, slot_window, threshold, num_speakers, min_speakers, max_speakers
    )
