"""Slot linking: link the model's window-local speaker slots, not single segments, into file-wide speakers.

Inside one window the model has already told its speakers apart, so the unit of linking is a slot
(window, slot), with one embedding pooled over all of its speech:

1. Each segment's speech, less the stretches where someone else talks at the same time, is embedded alone when
   it lasts `min_segment_s`; a slot's vector is the speech-weighted mean of those (`embed_slots`). Slots with
   less than `min_speech_s` of speech are "weak": they take part in no decision and are attached, at the end,
   to the nearest speaker not already talking in their window (one in conflict with every speaker is a speaker
   of its own while a count hint wants more).
   A slot whose segments embedded alone disagree holds two people (the model gave a segment another
   speaker's slot of its window): its minority voices are strays (`find_strays`, average linkage of the
   slot's segments cut at the threshold). They are set aside (`set_strays_aside`): the slot is pooled again
   without them and their must-links are dropped; the slot keeps its cannot-links, since what is left of it is
   one voice (voiding them lost the only evidence that kept two close voices apart). Each stray goes, at the
   end, to the speaker its own voice is nearest: it seeds no speaker of its own.
2. Slots that stitch.py saw decode the same speech in two neighbouring windows (`also_seen_as`) are one
   person (must-link), unless that would put two slots of one window together, their voices are farther
   apart than the threshold, or either slot sounds more like another slot of its partner's window than like
   its partner (a speaker error inside one window makes the stitcher link two people), or the pooled voices
   of the two groups being joined are a threshold apart (a chain of links through short slots, each too
   short to veto its own link, must not join two people). The closest pairs are joined first, so that of two
   links that exclude each other the better one holds.
3. Two slots of one window are different people (cannot-link), unless their embeddings are overwhelmingly
   close (under `waiver` × the threshold, also between groups of slots): then the model split one person, or
   put one person's words into another's slot, and they may be merged.
4. Average-linkage agglomerative clustering over slot groups by cosine distance, never merging two groups
   that speak in the same window, merging while closer than the threshold, or to `num_speakers` / clamped into
   `min_speakers`..`max_speakers` (a count hint beats the cannot-links if nothing else can reach it). A speaker
   with less than `min_speaker_s` of speech is then folded into its nearest speaker (`fold_small_speakers`).
5. Segments embedded alone that sit clearly nearer another speaker than their slot's move there
   (`recheck_segments`): the model sometimes gives a segment the wrong slot of its window.

Automatic threshold (when none is given), calibrated on each recording: pairs of slots of one window are
known to be different people, and where their distances begin (the first quartile) is where "different"
begins for this embedder, these voices and this noise. Must-linked slots, known to be the same person, only
keep the cut from falling below the point that best separates the two sets (they are neighbours in time, so
closer than one person's slots far apart: halfway between the sets would cut too low). With fewer than
`MIN_CALIBRATION_PAIRS` different pairs, or when the sets do not separate at all, the embedder's calibrated
default is used. The threshold that finds strays is calibrated on the slots as decoded; the one that links is
calibrated again on the slots without their strays (a mixed slot blurs both sets). The cannot-links are what
make a generous cut safe: two people who ever share a window are never merged.

Average linkage is computed from per-group weighted sums of unit embeddings (the mean cosine similarity of
two groups is the dot product of their means), so no matrix over all segments or slots is ever built: long
recordings are clustered in blocks of consecutive slot groups, and the blocks' clusters are clustered again.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import sparse
from scipy.cluster.hierarchy import DisjointSet, fcluster, linkage
from scipy.optimize import linear_sum_assignment

from turnscribe.speakers.clustering import check_counts, check_threshold
from turnscribe.speakers.embedders import Embedder
from turnscribe.speakers.linking import SpeakerAssignment, embed_in_chunks, segment_clip
from turnscribe.speakers.names import check_speaker_names
from turnscribe.types import SAMPLE_RATE, StitchedSegment, TurnscribeError, audible

MIN_CALIBRATION_PAIRS = 3
DIFFERENT_QUANTILE = 0.25  # where known-different pairs begin (module docstring)
BLOCK = 300  # slot groups clustered together at most; bounds the distance matrix to BLOCK² entries
_FRAME = SAMPLE_RATE // 100  # overlap bookkeeping in 10 ms frames: 3.6 M counters for 10 hours


class KnownSpeakerError(TurnscribeError, ValueError):
    """A known speaker's reference recording that holds no voice to match, or is not mono samples."""


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


def clean_spans(segments: Sequence[StitchedSegment], n_samples: int) -> list[list[tuple[int, int]]]:
    """Per segment, its sample ranges where nobody else talks (a mixture embeds as neither speaker)."""
    frames = n_samples // _FRAME + 1
    active = np.zeros(frames + 1, dtype=np.int32)
    bounds = [(min(round(s.start * 100), frames), min(round(s.end * 100), frames)) for s in segments]
    for a, b in bounds:
        active[a] += 1
        active[b] -= 1
    alone = np.cumsum(active, dtype=np.int32)[:frames] <= 1
    spans = []
    for a, b in bounds:
        # Runs of frames inside [a, b) where this segment is the only one: edges of the boolean mask.
        edges = np.flatnonzero(np.diff(np.concatenate(([False], alone[a:b], [False])).astype(np.int8)))
        spans.append(
            [(min((a + x) * _FRAME, n_samples), min((a + y) * _FRAME, n_samples)) for x, y in edges.reshape(-1, 2)]
        )
    return spans


@dataclass(frozen=True)
class SlotSpeech:
    """What was embedded: segments with enough speech of their own, and slots pooled from the rest."""

    segment_vectors: np.ndarray  # (segments, d): zero rows for segments too short or overlapped to embed alone
    segment_s: np.ndarray  # (segments,) seconds embedded per segment (0 where not embedded alone)
    slot_vectors: np.ndarray  # (slots, d) unit rows (zero for slots with no audio here)
    slot_s: np.ndarray  # (slots,) seconds behind each slot's vector


def pool_slots(
    n_slots: int, owner: np.ndarray, vectors: np.ndarray, seconds: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Each slot's unit vector, the speech-weighted mean of its clips' vectors (clip i belongs to slot owner[i]),
    and the seconds behind it; zero rows for slots without clips."""
    weights = sparse.csr_matrix((seconds, (owner, np.arange(len(owner)))), shape=(n_slots, len(owner)))
    sums = weights @ vectors
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return np.divide(sums, norms, out=np.zeros_like(sums), where=norms > 0), np.asarray(weights.sum(axis=1)).ravel()


def embed_slots(
    segments: Sequence[StitchedSegment], graph: SlotGraph, audio: np.ndarray, embedder: Embedder, min_segment_s: float
) -> SlotSpeech:
    """Embed each segment's speech without overlap, alone when it lasts min_segment_s; pool slots from them.

    A slot's vector is the speech-weighted mean of its segments' vectors; a slot with no segment long enough
    is embedded once from all of its speech together (overlap included: there is nothing better).
    """
    # Views where a segment is one piece: a copy of every segment's audio would double a long file in memory.
    clean = [
        audio[s[0][0] : s[0][1]] if len(s) == 1 else np.concatenate([audio[a:b] for a, b in s] or [audio[:0]])
        for s in clean_spans(segments, len(audio))
    ]
    alone = [i for i, c in enumerate(clean) if len(c) >= min_segment_s * SAMPLE_RATE]
    covered = set(graph.segment_slot[alone].tolist())
    whole: dict[int, list[np.ndarray]] = {}
    for segment, slot in zip(segments, graph.segment_slot.tolist(), strict=True):
        if slot not in covered:
            whole.setdefault(slot, []).append(segment_clip(audio, segment))
    rest = [(slot, np.concatenate(parts)) for slot, parts in whole.items() if sum(map(len, parts))]
    clips = [clean[i] for i in alone] + [clip for _, clip in rest]
    vectors = embed_in_chunks(embedder, clips).astype(np.float64) if clips else np.zeros((0, 1))
    seconds = np.array([len(c) / SAMPLE_RATE for c in clips])

    segment_vectors = np.zeros((len(segments), vectors.shape[1]))
    segment_s = np.zeros(len(segments))
    segment_vectors[alone], segment_s[alone] = vectors[: len(alone)], seconds[: len(alone)]
    owner = np.concatenate([graph.segment_slot[alone], np.array([slot for slot, _ in rest], dtype=np.int64)])
    return SlotSpeech(segment_vectors, segment_s, *pool_slots(len(graph.slots), owner, vectors, seconds))


def find_strays(graph: SlotGraph, speech: SlotSpeech, threshold: float) -> np.ndarray:
    """Per segment: True where its own voice disagrees with the rest of its slot (a stray).

    The model sometimes gives a segment another speaker's slot of its window; the slot then holds two people,
    its pooled vector sits between them, and several such slots can even form a speaker of their own. The
    segments of a slot that were embedded alone are grouped by average linkage cut at the threshold (the same
    cut that tells two speakers apart); the group with the most speech is the slot's speaker, the others are
    strays. Segments too short to embed alone cannot disagree and stay with their slot.
    """
    strays = np.zeros(len(graph.segment_slot), dtype=bool)
    alone = np.flatnonzero(speech.segment_s > 0)
    order = alone[np.argsort(graph.segment_slot[alone], kind="stable")]
    for members in np.split(order, np.flatnonzero(np.diff(graph.segment_slot[order])) + 1):
        if len(members) < 2:
            continue
        tree = linkage(speech.segment_vectors[members], method="average", metric="cosine")
        groups = fcluster(tree, t=threshold, criterion="distance")
        if groups.max() > 1:
            main = np.bincount(groups, weights=speech.segment_s[members]).argmax()
            strays[members[groups != main]] = True
    return strays


def set_strays_aside(
    segments: Sequence[StitchedSegment], graph: SlotGraph, speech: SlotSpeech, strays: np.ndarray
) -> tuple[SlotGraph, SlotSpeech]:
    """The slots without their strays: vectors pooled from the rest, no must-links through a stray."""
    had_strays = np.zeros(len(graph.slots), dtype=bool)
    had_strays[graph.segment_slot[strays]] = True
    keep = (speech.segment_s > 0) & ~strays
    # Slots with strays had segments embedded alone, so their vectors were pooled from those alone: pool again.
    vectors, seconds = pool_slots(
        len(graph.slots), graph.segment_slot[keep], speech.segment_vectors[keep], speech.segment_s[keep]
    )
    slot_vectors, slot_s = speech.slot_vectors.copy(), speech.slot_s.copy()
    slot_vectors[had_strays], slot_s[had_strays] = vectors[had_strays], seconds[had_strays]
    index = {slot: i for i, slot in enumerate(graph.slots)}
    must_link = [
        (index[(s.window, s.slot)], index[other])
        for s, stray in zip(segments, strays.tolist(), strict=True)
        if not stray
        for other in s.also_seen_as
    ]
    cleaned = SlotSpeech(speech.segment_vectors, speech.segment_s, slot_vectors, slot_s)
    return SlotGraph(graph.slots, graph.segment_slot, must_link), cleaned


def calibrate_threshold(same: np.ndarray, different: np.ndarray, fallback: float) -> float:
    """Where "different" starts in this recording: see the module docstring."""
    if len(different) < MIN_CALIBRATION_PAIRS:
        return fallback
    start_of_different = float(np.quantile(different, DIFFERENT_QUANTILE))
    if len(same) < MIN_CALIBRATION_PAIRS:
        return start_of_different
    if np.median(same) >= np.median(different):  # the embeddings cannot tell these people apart at all
        return fallback
    candidates = np.unique(np.concatenate([same, different]))
    # Errors when cutting just above each candidate: same pairs above it, different pairs at or below it.
    frr = 1 - np.searchsorted(np.sort(same), candidates, side="right") / len(same)
    far = np.searchsorted(np.sort(different), candidates, side="right") / len(different)
    best = candidates[np.argmin(frr + far)]
    return max(start_of_different, float(best))


def _slot_windows(graph: SlotGraph) -> np.ndarray:
    return np.array([w for w, _ in graph.slots], dtype=np.int64)


def _strong(speech_s: np.ndarray, min_speech_s: float) -> np.ndarray:
    strong = speech_s >= min_speech_s
    # Nothing long enough to trust more than the rest: use what there is.
    return strong if strong.any() else np.ones(len(speech_s), dtype=bool)


@dataclass(frozen=True)
class _KnownPairs:
    by_window: dict[int, list[int]]  # window → its slots
    different: np.ndarray  # distances of strong slot pairs of one window (cannot-links)
    same_pairs: np.ndarray  # (m, 2) strong must-linked slot pairs
    same: np.ndarray  # their distances


def _known_pairs(graph: SlotGraph, embeddings: np.ndarray, strong: np.ndarray, slot_window: np.ndarray) -> _KnownPairs:
    def distances(pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pairs = pairs[strong[pairs[:, 0]] & strong[pairs[:, 1]]]
        return pairs, 1.0 - np.einsum("ij,ij->i", embeddings[pairs[:, 0]], embeddings[pairs[:, 1]])

    by_window: dict[int, list[int]] = {}
    for i, w in enumerate(slot_window.tolist()):
        by_window.setdefault(w, []).append(i)
    _, different = distances(
        np.array(
            [(a, b) for slots in by_window.values() for k, a in enumerate(slots) for b in slots[k + 1 :]],
            dtype=np.int64,
        ).reshape(-1, 2)
    )
    same_pairs, same = distances(np.array(graph.must_link, dtype=np.int64).reshape(-1, 2))
    return _KnownPairs(by_window, different, same_pairs, same)


def recording_threshold(
    graph: SlotGraph, embeddings: np.ndarray, speech_s: np.ndarray, *, min_speech_s: float, fallback_threshold: float
) -> float:
    """The threshold `link_slots` calibrates when none is given (module docstring), without clustering."""
    slot_window = _slot_windows(graph)
    pairs = _known_pairs(graph, embeddings, _strong(speech_s, min_speech_s), slot_window)
    return calibrate_threshold(pairs.same, pairs.different, fallback_threshold)


def _agglomerate(
    sums: np.ndarray,
    weights: np.ndarray,
    windows: sparse.csr_matrix,
    threshold: float,
    overwhelming: float,
    *,
    num: int | None = None,
    low: int = 1,
    high: int | None = None,
) -> np.ndarray:
    """Constrained weighted average linkage; returns a cluster index per input group (0..k-1).

    Merges the closest pair of groups that share no window (or are closer than `overwhelming`) while it is
    closer than `threshold`, then keeps merging (or stops early) to honour `num` / [`low`, `high`]. Only when
    no allowed pair is left and the count is still above `num` / `high` are window conflicts ignored.
    """
    n = len(sums)
    means = sums / weights[:, None]
    dist = 1.0 - means @ means.T
    np.fill_diagonal(dist, np.inf)
    conflict = (windows @ windows.T).toarray() > 0
    weights = weights.astype(np.float64).copy()
    owner = np.arange(n)
    stop_at = num if num is not None else low
    for count in range(n, stop_at, -1):
        allowed = np.where(conflict & (dist >= overwhelming), np.inf, dist)
        i, j = np.unravel_index(np.argmin(allowed), allowed.shape)
        hinted = num is not None or (high is not None and count > high)
        if not (allowed[i, j] < threshold or hinted):
            break
        if not np.isfinite(allowed[i, j]):
            # A count hint wins over the model's slots: merge the closest pair even across a window.
            i, j = np.unravel_index(np.argmin(dist), dist.shape)
        # Lance-Williams update for weighted average linkage: exact for means of unit vectors.
        row = (weights[i] * dist[i] + weights[j] * dist[j]) / (weights[i] + weights[j])
        dist[i], dist[:, i] = row, row
        dist[j], dist[:, j] = np.inf, np.inf
        dist[i, i] = np.inf
        conflict[i] |= conflict[j]
        conflict[:, i] = conflict[i]
        weights[i] += weights[j]
        owner[owner == j] = i
    return np.unique(owner, return_inverse=True)[1].astype(np.int64)


def _cluster(
    sums: np.ndarray,
    weights: np.ndarray,
    windows: sparse.csr_matrix,
    threshold: float,
    overwhelming: float,
    *,
    num: int | None,
    low: int,
    high: int | None,
) -> np.ndarray:
    """`_agglomerate` in bounded memory: blocks of consecutive groups first, then their clusters together."""
    n = len(sums)
    if n > BLOCK:
        labels = np.empty(n, dtype=np.int64)
        found = 0
        for start in range(0, n, BLOCK):
            part = slice(start, start + BLOCK)
            labels[part] = found + _agglomerate(sums[part], weights[part], windows[part], threshold, overwhelming)
            found = int(labels[part].max()) + 1
        if found < n:  # otherwise blocking cannot shrink the problem: one pass over everything below
            members = sparse.csr_matrix((np.ones(n), (labels, np.arange(n))), shape=(found, n))
            top = _cluster(
                members @ sums,
                members @ weights,
                members @ windows,
                threshold,
                overwhelming,
                num=num,
                low=low,
                high=high,
            )
            return top[labels]
    return _agglomerate(sums, weights, windows, threshold, overwhelming, num=num, low=low, high=high)


def fold_small_speakers(
    labels: np.ndarray,
    sums: np.ndarray,
    weights: np.ndarray,
    windows: sparse.csr_matrix,
    threshold: float,
    *,
    min_speaker_s: float,
    keep_at_least: int,
    references: np.ndarray | None = None,
) -> np.ndarray:
    """Fold speakers with less than `min_speaker_s` of speech into their nearest speaker; new labels 0..k-1.

    In loud noise one slot whose pooled voice came out a little off can seed a speaker of its own, and short
    slots then join it because their noisy vectors are alike. A speaker with that little evidence goes to the
    nearest speaker (closer than twice the threshold) with whom it never shares a window; one that shares a
    window with every candidate is a person of its own by the model's word, and stays, as does one that an
    enrolled voice (`references`, unit rows) matches within the threshold and better than it matches the
    speaker it would fold into: a known person who said little. Smallest first.
    """
    k = int(labels.max()) + 1
    members = sparse.csr_matrix((np.ones(len(labels)), (labels, np.arange(len(labels)))), shape=(k, len(labels)))
    speaker_sums, speaker_s = members @ sums, members @ weights
    speaker_windows = ((members @ windows) > 0).toarray()
    target = np.arange(k)
    for small in np.argsort(speaker_s, kind="stable"):
        alive = target == np.arange(k)
        if speaker_s[small] >= min_speaker_s or alive.sum() <= keep_at_least:
            break
        units = speaker_sums / np.maximum(np.linalg.norm(speaker_sums, axis=1, keepdims=True), 1e-12)
        distance = 1.0 - units @ units[small]
        candidates = alive & ~(speaker_windows & speaker_windows[small]).any(axis=1) & (distance < 2 * threshold)
        candidates[small] = False
        if not candidates.any():
            continue
        into = np.flatnonzero(candidates)[distance[candidates].argmin()]
        if references is not None and len(references):
            to_small, to_into = 1.0 - references @ units[small], 1.0 - references @ units[into]
            if ((to_small < threshold) & (to_small < to_into)).any():
                continue
        speaker_sums[into] += speaker_sums[small]
        speaker_s[into] += speaker_s[small]
        speaker_windows[into] |= speaker_windows[small]
        target[target == small] = into
    return np.unique(target[labels], return_inverse=True)[1].astype(np.int64)


def link_slots(
    graph: SlotGraph,
    embeddings: np.ndarray,
    speech_s: np.ndarray,
    *,
    threshold: float | None,
    fallback_threshold: float,
    min_speech_s: float = 1.0,
    min_speaker_s: float = 0.0,
    waiver: float = 0.5,
    num_speakers: int | None = None,
    min_speakers: int | None = None,
    max_speakers: int | None = None,
    references: np.ndarray | None = None,
) -> Linking:
    """Cluster slots into speakers (module docstring).

    `embeddings`: (slots, d) unit rows (zero rows for slots with no audio); `speech_s`: seconds pooled per slot.
    `references`: (k, d) unit rows, enrolled voices: a small speaker one of them matches is not folded away.
    """
    n = len(graph.slots)
    slot_window = _slot_windows(graph)
    strong = _strong(speech_s, min_speech_s)

    pairs = _known_pairs(graph, embeddings, strong, slot_window)
    by_window, same_pairs, same = pairs.by_window, pairs.same_pairs, pairs.same
    if threshold is None:
        threshold = calibrate_threshold(same, pairs.different, fallback_threshold)
    # Speech-weighted sums of unit embeddings (strong slots only): the group means that average linkage compares.
    weight = np.where(strong, np.maximum(speech_s, 1e-3), 0.0)

    disjoint = DisjointSet(range(n))
    windows_of = {i: {int(slot_window[i])} for i in range(n)}
    voice_of: dict[int, np.ndarray] = {}  # joined groups only: a lone slot's is weight × embedding

    def voice(root: int) -> np.ndarray:
        return voice_of[root] if root in voice_of else weight[root] * embeddings[root]

    def join(a: int, b: int) -> None:
        """Join two groups unless they share a window or their voices (both heard) are a threshold apart: a
        chain of links through short slots, each too short to veto its link, must not join two people."""
        ra, rb = disjoint[a], disjoint[b]
        if ra == rb or windows_of[ra] & windows_of[rb]:
            return
        va, vb = voice(ra), voice(rb)
        na, nb = np.linalg.norm(va), np.linalg.norm(vb)
        if na > 0 and nb > 0 and 1.0 - (va @ vb) / (na * nb) >= threshold:
            return
        joined = windows_of.pop(ra) | windows_of.pop(rb)
        voice_of.pop(ra, None), voice_of.pop(rb, None)
        disjoint.merge(ra, rb)
        windows_of[disjoint[ra]], voice_of[disjoint[ra]] = joined, va + vb

    # A speaker error inside one window makes the stitcher link two people. The voices veto such a link when
    # they clearly differ, or when either slot sounds more like another slot of its partner's window (a person
    # the link would declare different) than like its partner. Closest pairs join first, and a join never puts
    # two slots of one window together: of two links that exclude each other, the better one holds.
    distance_of = dict(zip(map(tuple, same_pairs.tolist()), same.tolist(), strict=True))

    def contradicted(a: int, b: int, distance: float) -> bool:
        for one, other in ((a, b), (b, a)):
            rivals = [c for c in by_window[int(slot_window[other])] if c != other and strong[c]]
            if rivals and np.min(1.0 - embeddings[rivals] @ embeddings[one]) < distance:
                return True
        return False

    # Pairs with a weak slot have no trustworthy distance: they join last, where nothing contradicts them.
    for a, b in sorted(graph.must_link, key=lambda pair: distance_of.get(pair, np.inf)):
        distance = distance_of.get((a, b))
        if distance is None or (distance < threshold and not contradicted(a, b, distance)):
            join(a, b)

    roots = np.array([disjoint[i] for i in range(n)])
    _, first, group = np.unique(roots, return_index=True, return_inverse=True)
    group = np.argsort(np.argsort(first))[group]  # groups in order of first appearance: blocks are stretches of time
    n_groups = int(group.max()) + 1
    pooled = sparse.csr_matrix((weight, (group, np.arange(n))), shape=(n_groups, n))
    incidence = sparse.csr_matrix((np.ones(n), (group, slot_window)), shape=(n_groups, int(slot_window.max()) + 1))
    sums, weights = pooled @ embeddings, np.asarray(pooled.sum(axis=1)).ravel()
    decided = np.flatnonzero(weights > 0)
    labels = np.full(n_groups, -1, dtype=np.int64)
    labels[decided] = _cluster(
        sums[decided],
        weights[decided],
        incidence[decided],
        threshold,
        # The model split one person into two slots of a window: only overwhelming evidence undoes a cannot-link.
        waiver * threshold,
        num=num_speakers,
        low=min_speakers or 1,
        high=max_speakers,
    )
    if num_speakers is None and min_speaker_s > 0:
        labels[decided] = fold_small_speakers(
            labels[decided],
            sums[decided],
            weights[decided],
            incidence[decided],
            threshold,
            min_speaker_s=min_speaker_s,
            keep_at_least=min_speakers or 1,
            references=references,
        )
    members = sparse.csr_matrix((np.ones(len(decided)), (labels[decided], decided)), shape=(labels.max() + 1, n_groups))
    sums_of = members @ sums
    norms = np.linalg.norm(sums_of, axis=1, keepdims=True)
    centroids = np.divide(sums_of, norms, out=np.zeros_like(sums_of), where=norms > 0)  # zero: no audio at all
    # Weak groups join the nearest speaker who is not already talking in one of their windows.
    weak = np.flatnonzero(labels < 0)
    if len(weak):
        weak_means = sparse.csr_matrix((np.maximum(speech_s, 1e-3), (group, np.arange(n))), shape=(n_groups, n))
        weak_vectors, weak_s = weak_means[weak] @ embeddings, np.asarray(weak_means[weak].sum(axis=1)).ravel()
        weak_windows, speaker_windows = incidence[weak], (members @ incidence).toarray()
        # A count hint the decided speakers fall short of: a weak group in conflict with every speaker is someone
        # else by the model's word, so it is one of the people missing (most speech first), not the nearest.
        for _ in range(max(0, (num_speakers or min_speakers or 0) - len(centroids))):
            clash_all = (weak_windows @ speaker_windows.T > 0).all(axis=1)
            missing = np.flatnonzero(clash_all & (labels[weak] < 0))
            if not len(missing):
                break
            new = missing[weak_s[missing].argmax()]
            labels[weak[new]] = len(centroids)
            norm = np.linalg.norm(weak_vectors[new])
            centroids = np.vstack([centroids, weak_vectors[new] / norm if norm > 0 else weak_vectors[new]])
            speaker_windows = np.vstack([speaker_windows, weak_windows[new].toarray()])
        rest = np.flatnonzero(labels[weak] < 0)
        scores = weak_vectors[rest] @ centroids.T
        clash = weak_windows[rest] @ speaker_windows.T > 0
        clash &= ~clash.all(axis=1, keepdims=True)  # in conflict with everyone: then simply the nearest
        labels[weak[rest]] = np.where(clash, -np.inf, scores).argmax(axis=1)
    return Linking(labels[group], centroids, threshold)


def recheck_segments(labels: np.ndarray, speech: SlotSpeech, linking: Linking) -> np.ndarray:
    """Move a segment whose own voice is far from its slot's speaker and close to another one.

    The model sometimes gives a segment another speaker's slot of its window; a slot's label would carry that
    error along. Only segments embedded alone are checked, and only a clear case moves: closer than half the
    threshold to another speaker and farther than that from its own (a speaker's own segments sit well inside
    the threshold; half of it splits the way between a segment's own speaker and a wrong one).
    """
    own = np.flatnonzero(speech.segment_s > 0)
    if not len(own) or not len(linking.centroids):
        return labels
    distances = 1.0 - speech.segment_vectors[own] @ linking.centroids.T
    nearest = distances.argmin(axis=1)
    half = linking.threshold / 2
    move = (distances[np.arange(len(own)), labels[own]] >= half) & (distances[np.arange(len(own)), nearest] < half)
    labels = labels.copy()
    labels[own[move]] = nearest[move]
    return labels


@dataclass
class SlotLinker:
    """Links the model's window-local slots into file-wide speakers (module docstring); names known speakers."""

    embedder: Embedder
    threshold: float | None = None  # None: calibrated per recording; a value: the card's fixed-τ recipe
    num_speakers: int | None = None
    min_speakers: int | None = None
    max_speakers: int | None = None
    # Name → reference clip (mono float32, SAMPLE_RATE): speakers matching one are labelled with its name.
    known_speakers: Mapping[str, np.ndarray] = field(default_factory=dict)
    # A slot with less speech than this is too short to decide anything by itself. 1.6 s is one resemblyzer
    # partial: below it the clip is zero-padded, the padding dominates, and short slots of different people sit
    # close together (at 1.0 s they formed a cluster of their own on 8-speaker meetings; 2.0 s left too little
    # to link by and merged two speakers).
    min_speech_s: float = 1.6
    min_segment_s: float = 1.0  # a segment with less speech of its own is not embedded alone
    # A speaker found with less speech than this (in slots of min_speech_s or more) is folded into the nearest
    # speaker it never shares a window with (`fold_small_speakers`); unused when num_speakers is given.
    min_speaker_s: float = 4.0
    waiver: float = 0.5  # two slots of one window closer than waiver × threshold are one person after all
    _references: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        check_counts(self.num_speakers, self.min_speakers, self.max_speakers)  # fail before any decoding
        check_threshold(self.threshold)
        names = check_speaker_names(self.known_speakers)
        clips = [np.asarray(c, dtype=np.float32) for c in self.known_speakers.values()]
        for name, clip in zip(names, clips, strict=True):
            # Flattened, a stereo (n, 2) clip interleaves its channels (a voice at double speed) and a (2, n) one
            # plays them one after the other, silently; (1, n) and (n, 1) are mono.
            if sum(size > 1 for size in clip.shape) > 1:
                raise KnownSpeakerError(
                    f"known speaker {name!r}: the reference must be mono samples at {SAMPLE_RATE} Hz, got shape "
                    f"{clip.shape} (turnscribe.load_audio(samples, sampling_rate) mixes them down)"
                )
            # Its embedding would be no one's voice, yet could come within the threshold of someone's.
            if not audible(clip):
                raise KnownSpeakerError(f"known speaker {name!r}: the reference recording is empty or silent")
        clips = [clip.reshape(-1) for clip in clips]
        self.known_speakers = dict(zip(names, clips, strict=True))
        self._references = embed_in_chunks(self.embedder, clips) if clips else np.zeros((0, 0), np.float32)

    def assign(self, segments: Sequence[StitchedSegment], audio: np.ndarray) -> SpeakerAssignment:
        """Labels for one recording; its threshold (given, or calibrated on it) comes back with them."""
        if not segments:
            return SpeakerAssignment([], None)
        graph = slot_graph(segments)
        one_pass = len({w for w, _ in graph.slots}) == 1
        if one_pass and not self.known_speakers and self._count_fits(len(graph.slots)):
            # One decoder pass already numbered its speakers consistently; embeddings could only add errors.
            return SpeakerAssignment(self._names(segments, graph.segment_slot, []), None)
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim != 1:
            raise ValueError(f"audio must be mono (1-D) samples at {SAMPLE_RATE} Hz, got shape {audio.shape}")
        return self.link(segments, graph, embed_slots(segments, graph, audio, self.embedder, self.min_segment_s))

    def link(self, segments: Sequence[StitchedSegment], graph: SlotGraph, speech: SlotSpeech) -> SpeakerAssignment:
        """Everything after the embeddings: strays, calibration, constrained linking, names
        (benchmarks/linking_scale.py times this part on its own)."""
        options = {"min_speech_s": self.min_speech_s, "fallback_threshold": self.embedder.default_threshold}
        split_at = self.threshold
        if split_at is None:
            split_at = recording_threshold(graph, speech.slot_vectors, speech.slot_s, **options)
        strays = find_strays(graph, speech, split_at)
        graph, speech = set_strays_aside(segments, graph, speech, strays)
        linking = link_slots(
            graph,
            speech.slot_vectors,
            speech.slot_s,
            threshold=self.threshold,  # None: calibrated again, on slots that now hold one person each
            waiver=self.waiver,
            num_speakers=self.num_speakers,
            min_speakers=self.min_speakers,
            max_speakers=self.max_speakers,
            min_speaker_s=self.min_speaker_s,
            references=self._references.astype(np.float64) if len(self._references) else None,
            **options,
        )
        labels = linking.labels[graph.segment_slot]
        # A stray seeds no speaker and is kept from none (its slot is what the model got wrong): its voice decides.
        labels[strays] = (speech.segment_vectors[strays] @ linking.centroids.T).argmax(axis=1)
        labels = recheck_segments(labels, speech, linking)
        return SpeakerAssignment(self._names(segments, labels, self._match_known(linking)), linking.threshold)

    def _count_fits(self, count: int) -> bool:
        return (
            (self.num_speakers is None or count == self.num_speakers)
            and (self.min_speakers is None or count >= self.min_speakers)
            and (self.max_speakers is None or count <= self.max_speakers)
        )

    def _match_known(self, linking: Linking) -> list[tuple[int, str]]:
        """(speaker, name) pairs: one name per speaker at most, each within the threshold (Hungarian)."""
        if not len(self._references) or not len(linking.centroids):
            return []
        cost = 1.0 - linking.centroids @ self._references.T.astype(np.float64)
        rows, cols = linear_sum_assignment(cost)
        names = list(self.known_speakers)
        return [(int(r), names[c]) for r, c in zip(rows, cols, strict=True) if cost[r, c] < linking.threshold]

    def _names(
        self, segments: Sequence[StitchedSegment], labels: np.ndarray, known: list[tuple[int, str]]
    ) -> list[str]:
        """Known names where matched; the others SPEAKER_00, SPEAKER_01, … in the order they first speak, skipping
        the names of known speakers, matched or not (an automatic label must never pass for an enrolled person)."""
        names = dict(known)
        automatic = (name for n in itertools.count() if (name := f"SPEAKER_{n:02d}") not in self.known_speakers)
        for i in sorted(range(len(segments)), key=lambda i: (segments[i].start, i)):
            if int(labels[i]) not in names:
                names[int(labels[i])] = next(automatic)
        return [names[int(label)] for label in labels]
