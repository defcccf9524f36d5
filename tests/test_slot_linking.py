"""SlotLinker: constraints, count hints, the per-recording threshold, enrollment, scale, and the whole pipeline."""

from __future__ import annotations

import tracemalloc
from types import SimpleNamespace

import numpy as np
import pytest

from turnscribe import Pipeline
from turnscribe.decoders.reference import ReferenceDecoder, ReferenceTurn
from turnscribe.evaluation import evaluate
from turnscribe.evaluation.oracle import OracleEmbedder, tag_speakers
from turnscribe.evaluation.slot_structure import SlotMeeting, slot_meeting
from turnscribe.evaluation.synthetic import MeetingConfig, generate_meeting, have_espeak
from turnscribe.speakers import ClusteringLinker, load_embedder
from turnscribe.speakers.names import MAX_SPEAKER_NAME_CHARS, SpeakerNameError
from turnscribe.speakers.slots import (
    KnownSpeakerError,
    Linking,
    SlotGraph,
    SlotLinker,
    SlotSpeech,
    calibrate_threshold,
    find_strays,
    link_slots,
    recheck_segments,
    set_strays_aside,
    slot_graph,
)
from turnscribe.types import SAMPLE_RATE, StitchedSegment, Transcript


def unit(*values: float) -> np.ndarray:
    v = np.array(values, dtype=np.float64)
    return v / np.linalg.norm(v)


def at_distance(base: np.ndarray, other: np.ndarray, distance: float) -> np.ndarray:
    """A unit vector at exactly `distance` (cosine) from unit `base`, turned towards `other`."""
    ortho = other - (other @ base) * base
    ortho /= np.linalg.norm(ortho)
    return (1 - distance) * base + np.sqrt(1 - (1 - distance) ** 2) * ortho


def link(graph: SlotGraph, embeddings: np.ndarray, **options) -> np.ndarray:
    speech = np.full(len(graph.slots), 5.0)
    options.setdefault("threshold", 0.5)
    return link_slots(graph, np.asarray(embeddings), speech, fallback_threshold=0.3, **options).labels


# Two windows; window 0 has slots 0 and 1, window 1 has slot 0. Slot indices follow that order.
TWO_WINDOWS = SlotGraph([(0, 0), (0, 1), (1, 0)], np.arange(3), [])


def test_cannot_link_holds_below_the_threshold_and_yields_only_to_overwhelming_evidence() -> None:
    a, b = unit(1, 0, 0), unit(0, 1, 0)
    close = at_distance(a, b, 0.3)  # under the threshold 0.5, above the waiver 0.5 × 0.5
    labels = link(TWO_WINDOWS, [a, close, b])
    assert labels[0] != labels[1]
    # Identical voices in two slots of one window: the model split one person, and that is overwhelming.
    assert len(set(link(TWO_WINDOWS, [a, a, b]).tolist())) == 2
    assert link(TWO_WINDOWS, [a, a, b])[0] == link(TWO_WINDOWS, [a, a, b])[1]
    # Without the waiver even identical embeddings stay apart.
    labels = link(TWO_WINDOWS, [a, a, b], waiver=0.0)
    assert labels[0] != labels[1]


def test_must_link_joins_what_the_embeddings_alone_would_not() -> None:
    a, b = unit(1, 0, 0), unit(0, 1, 0)
    graph = SlotGraph(TWO_WINDOWS.slots, TWO_WINDOWS.segment_slot, [(0, 2)])
    weak = np.array([5.0, 5.0, 0.3])  # slot 2 is too short to decide anything: the stitcher's word is taken
    labels = link_slots(graph, np.array([a, b, b]), weak, threshold=0.5, fallback_threshold=0.3).labels
    assert labels[0] == labels[2] != labels[1]
    # Voices that clearly differ veto the link (a speaker error inside one window made it).
    labels = link(graph, [a, b, at_distance(b, a, 0.05)])
    assert labels[0] != labels[2]


def test_must_link_never_joins_two_slots_of_one_window() -> None:
    a = unit(1, 0, 0)
    graph = SlotGraph([(0, 0), (1, 0), (0, 1)], np.arange(3), [(0, 1), (1, 2)])
    labels = link(graph, [a, a, a], waiver=0.0)
    assert labels[0] != labels[2]


def test_a_chain_of_must_links_through_short_slots_does_not_join_two_people() -> None:
    a, b = unit(1, 0, 0), unit(0, 1, 0)
    # Three windows: A (strong) – a short slot – B (strong). Each link has a short end, so no link can be
    # vetoed by its own pair's voices; the groups they would join can.
    graph = SlotGraph([(0, 0), (1, 0), (2, 0)], np.arange(3), [(0, 1), (1, 2)])
    speech = np.array([5.0, 0.3, 5.0])
    labels = link_slots(graph, np.array([a, b, b]), speech, threshold=0.5, fallback_threshold=0.3).labels
    assert labels[0] != labels[2]
    # The same chain between two recordings of one voice joins.
    similar = at_distance(a, b, 0.1)
    labels = link_slots(graph, np.array([a, b, similar]), speech, threshold=0.5, fallback_threshold=0.3).labels
    assert labels[0] == labels[1] == labels[2]


def test_a_must_link_that_the_voices_contradict_is_refused() -> None:
    x, y = unit(1, 0, 0), unit(0, 1, 0)
    near_x, near_y = at_distance(x, y, 0.02), at_distance(y, x, 0.02)
    # Windows 0 and 1 each hear X and Y; a speaker error in the overlap linked window 0's X to window 1's Y.
    graph = SlotGraph([(0, 0), (0, 1), (1, 0), (1, 1)], np.arange(4), [(0, 3)])
    blurred = at_distance(x, y, 0.3)  # X's slot holds some of Y's words: 0.3 from Y's slot, under the threshold
    embeddings = [blurred, y, near_x, near_y]
    labels = link(graph, embeddings)
    # Slot 0 sounds more like window 1's slot 2 (which the link declares someone else) than like slot 3.
    assert labels[0] == labels[2] != labels[1] == labels[3]


def test_a_segment_in_the_wrong_slot_moves_to_its_speaker() -> None:
    a, b = unit(1, 0, 0), unit(0, 1, 0)
    linking = Linking(np.zeros(2, dtype=np.int64), np.array([a, b]), threshold=0.4)
    vectors = np.array([a, b, at_distance(a, b, 0.1), at_distance(a, b, 0.3), b])
    # Segment 4 was too short to embed alone (0 s): nothing to check it by.
    speech = SlotSpeech(vectors, np.array([3.0, 3.0, 3.0, 3.0, 0.0]), np.array([a, b]), np.array([9.0, 3.0]))
    labels = recheck_segments(np.array([0, 0, 0, 1, 0]), speech, linking)
    # Moved: segment 1 (b's voice in a's slot). Kept: 2 (clearly a), 3 (0.3 from a: not clear enough), 4.
    assert labels.tolist() == [0, 1, 0, 1, 0]


def segment(window: int, slot: int, start: float, also: tuple[tuple[int, int], ...] = ()) -> StitchedSegment:
    return StitchedSegment(start, start + 3.0, "words", window, slot, also)


def test_a_slot_holding_two_voices_sets_the_minority_aside() -> None:
    a, b = unit(1, 0, 0), unit(0, 1, 0)
    # Window 0: slot 0 holds two segments of a, one of b (the model's slot error; its speech is also decoded by
    # window 1's slot 1) and a segment too short to embed alone; slot 1 is b. Window 1: slot 0 a, slot 1 b.
    segments = [
        segment(0, 0, 0.0),
        segment(0, 0, 4.0),
        segment(0, 0, 8.0, also=((1, 1),)),
        segment(0, 0, 12.0),
        segment(0, 1, 16.0),
        segment(1, 0, 30.0),
        segment(1, 1, 34.0),
    ]
    graph = slot_graph(segments)
    vectors = np.array([a, at_distance(a, b, 0.05), b, np.zeros(3), b, a, b])
    seconds = np.array([3.0, 3.0, 3.0, 0.0, 3.0, 3.0, 3.0])
    blurred = unit(2, 1, 0)  # slot (0, 0) pooled over both voices
    speech = SlotSpeech(vectors, seconds, np.array([blurred, b, a, b]), np.array([9.0, 3.0, 3.0, 3.0]))
    strays = find_strays(graph, speech, threshold=0.4)
    assert strays.tolist() == [False, False, True, False, False, False, False]
    # Voices closer than the threshold are one group: nothing is set aside.
    assert not find_strays(graph, speech, threshold=1.5).any()

    cleaned_graph, cleaned = set_strays_aside(segments, graph, speech, strays)
    assert 1.0 - cleaned.slot_vectors[0] @ a < 0.02 and cleaned.slot_s[0] == 6.0  # pooled from a's segments only
    np.testing.assert_array_equal(cleaned.slot_vectors[1:], speech.slot_vectors[1:])
    assert graph.must_link == [(0, 3)] and cleaned_graph.must_link == []  # the stray's link is no evidence


def test_a_slot_that_had_strays_keeps_its_cannot_links() -> None:
    a, b, c = unit(1, 0, 0), unit(0, 1, 0), unit(0, 0, 1)
    close = at_distance(a, b, 0.3)  # a second voice under the threshold 0.5: only window 0 tells it from a
    # Window 0: slot 0 is a, plus a segment of c (a slot error); slot 1 is the close voice. Window 1: a, c.
    segments = [segment(0, 0, 0.0), segment(0, 0, 4.0), segment(0, 0, 8.0), segment(0, 1, 12.0)]
    segments += [segment(1, 0, 30.0), segment(1, 1, 34.0)]
    vectors = np.array([a, a, c, close, a, c])
    speech = SlotSpeech(vectors, np.full(6, 3.0), np.array([unit(2, 0, 1), close, a, c]), np.array([9.0, 3, 3, 3]))
    linker = SlotLinker(SimpleNamespace(name="none", default_threshold=0.5), threshold=0.5, min_speaker_s=0.0)
    labels = linker.link(segments, slot_graph(segments), speech).labels
    # The stray goes to c; what is left of slot 0 is a, and the model's word that slot 1 is someone else holds.
    assert labels[0] == labels[1] == labels[4] != labels[3]
    assert labels[2] == labels[5] not in (labels[0], labels[3])


def meeting_embeddings(meeting: SlotMeeting, graph: SlotGraph, same: float, apart: float) -> np.ndarray:
    """Slot embeddings whose own speaker's slots sit exactly `same` apart and other speakers' slots further."""
    speakers = len(meeting.centres)
    basis = np.linalg.qr(np.random.default_rng(0).normal(size=(400, 1 + speakers + len(graph.slots))))[0].T
    # Speaker centres `apart` from each other (a shared part and a private one), slots `same` from each other.
    centres = np.sqrt(1 - apart) * basis[0] + np.sqrt(apart) * basis[1 : 1 + speakers]
    private = basis[1 + speakers :]
    speaker = np.array([meeting.speaker_of_slot.get(s, 0) for s in graph.slots])
    return np.sqrt(1 - same) * centres[speaker] + np.sqrt(same) * private


def purity(labels: np.ndarray, truth: np.ndarray) -> bool:
    return len(set(zip(labels.tolist(), truth.tolist(), strict=True))) == len(set(labels.tolist()))


@pytest.mark.parametrize(("same", "apart"), [(0.1, 0.25), (0.3, 0.7)])
def test_automatic_threshold_adapts_to_each_recordings_spread(same: float, apart: float) -> None:
    meeting = slot_meeting(0.3, speakers=6, seed=3)
    graph = slot_graph(meeting.segments)
    embeddings = meeting_embeddings(meeting, graph, same, apart)
    speech = np.full(len(graph.slots), 5.0)
    truth = np.array([meeting.speaker_of_slot[s] for s in graph.slots])
    auto = link_slots(graph, embeddings, speech, threshold=None, fallback_threshold=0.3)
    assert len(set(auto.labels.tolist())) == 6 and purity(auto.labels, truth)
    different = 1 - (1 - same) * (1 - apart)
    assert same < auto.threshold <= different
    # One fixed cut cannot serve both: 0.2 is right for the tight voices and splits every loose one.
    fixed = link_slots(graph, embeddings, speech, threshold=0.2, fallback_threshold=0.3).labels
    assert (len(set(fixed.tolist())) == 6) == (same < 0.2)


def test_calibration_cuts_where_different_begins() -> None:
    # Must-linked slots are neighbours in time and sit closer than one voice's slots far apart usually do: the
    # cut goes where the known-different pairs begin (their first quartile), not halfway between the sets (0.21).
    same, different = np.linspace(0.02, 0.06, 5), np.linspace(0.36, 0.56, 21)
    assert calibrate_threshold(same, different, fallback=0.3) == pytest.approx(0.41)
    # Different pairs spoiled by mixtures: the cut never drops below the best separation of the two sets.
    spoiled = np.concatenate([np.full(10, 0.03), different])
    assert calibrate_threshold(same, spoiled, fallback=0.3) == pytest.approx(0.06)


def test_calibration_falls_back_without_enough_known_pairs() -> None:
    assert calibrate_threshold(np.array([0.1]), np.array([0.5, 0.6]), fallback=0.3) == 0.3
    # No known-same pairs: where the different pairs begin.
    assert calibrate_threshold(np.zeros(0), np.linspace(0.4, 0.8, 11), fallback=0.3) == pytest.approx(0.5)
    # Embeddings that cannot tell the known-different apart from the known-same: the embedder's default.
    assert calibrate_threshold(np.full(5, 0.5), np.full(5, 0.2), fallback=0.3) == 0.3


def test_count_hints() -> None:
    meeting = slot_meeting(0.3, speakers=6, seed=3)
    graph = slot_graph(meeting.segments)
    embeddings = meeting_embeddings(meeting, graph, 0.1, 0.5)
    for hint, expected in (({"num_speakers": 4}, 4), ({"min_speakers": 8}, 8), ({"max_speakers": 3}, 3)):
        assert len(set(link(graph, embeddings, threshold=None, **hint).tolist())) == expected, hint
    # A window with three slots and max_speakers=2: the count hint beats the cannot-links.
    three = SlotGraph([(0, 0), (0, 1), (0, 2)], np.arange(3), [])
    assert len(set(link(three, np.eye(3), max_speakers=2).tolist())) == 2


def test_a_count_hint_keeps_a_short_slot_the_model_told_apart_from_everyone() -> None:
    # Window 0: two people talk at length, a third says one short thing (too short to decide anything alone).
    three = SlotGraph([(0, 0), (0, 1), (0, 2)], np.arange(3), [])
    speech = np.array([5.0, 5.0, 0.8])
    voices = np.eye(3)
    for hint in ({"num_speakers": 3}, {"min_speakers": 3}):
        labels = link_slots(three, voices, speech, threshold=0.5, fallback_threshold=0.3, **hint).labels
        assert len(set(labels.tolist())) == 3, hint
    # With no hint it still joins the nearest speaker (it decides nothing).
    labels = link_slots(three, voices, speech, threshold=0.5, fallback_threshold=0.3).labels
    assert len(set(labels.tolist())) == 2


def test_a_speaker_with_little_speech_folds_into_its_nearest_speaker() -> None:
    # A speaks in windows 0-3, B in windows 0-3 too; window 4 has one slot whose voice came out off A's
    # (0.35 from A, over the threshold 0.3) with only 2 s of speech: a speaker of its own unless folded.
    a, b = unit(1, 0, 0), unit(0, 1, 0)
    off = at_distance(a, unit(0, 0, 1), 0.35)
    slots = [(w, s) for w in range(4) for s in range(2)] + [(4, 0)]
    graph = SlotGraph(slots, np.arange(len(slots)), [])
    embeddings = np.array([a, b] * 4 + [off])
    speech = np.array([5.0] * 8 + [2.0])

    def labels(**options) -> np.ndarray:
        return link_slots(graph, embeddings, speech, threshold=0.3, fallback_threshold=0.3, **options).labels

    assert len(set(labels().tolist())) == 3  # folding off: three speakers
    folded = labels(min_speaker_s=4.0)
    assert len(set(folded.tolist())) == 2 and folded[8] == folded[0] != folded[1]
    # Enough speech of its own, a count hint, or the model's word (a window shared with A) keep it apart.
    assert len(set(labels(min_speaker_s=1.5).tolist())) == 3
    assert len(set(labels(min_speaker_s=4.0, num_speakers=3).tolist())) == 3
    assert len(set(labels(min_speaker_s=4.0, min_speakers=3).tolist())) == 3
    shared = SlotGraph(slots[:-1] + [(3, 2)], graph.segment_slot, [])
    kept = link_slots(shared, embeddings, speech, threshold=0.3, fallback_threshold=0.3, min_speaker_s=4.0).labels
    assert len(set(kept.tolist())) == 3
    # Farther than twice the threshold from everyone: a different person, however little they said.
    far = embeddings.copy()
    far[8] = unit(0, 0, 1)
    alone = link_slots(graph, far, speech, threshold=0.3, fallback_threshold=0.3, min_speaker_s=4.0).labels
    assert len(set(alone.tolist())) == 3
    # An enrolled voice that matches it, better than it matches A: a known person who said little.
    known = link_slots(
        graph,
        embeddings,
        speech,
        threshold=0.3,
        fallback_threshold=0.3,
        min_speaker_s=4.0,
        references=np.array([b, at_distance(off, b, 0.05)]),
    ).labels
    assert len(set(known.tolist())) == 3
    # One that matches A better (A's own enrollment) protects nothing.
    enrolled_a = link_slots(
        graph, embeddings, speech, threshold=0.3, fallback_threshold=0.3, min_speaker_s=4.0, references=np.array([a])
    ).labels
    assert len(set(enrolled_a.tolist())) == 2


def test_ten_hours_link_in_linear_memory() -> None:
    meeting = slot_meeting(10.0)
    graph = slot_graph(meeting.segments)
    rng = np.random.default_rng(1)
    embeddings = np.stack([meeting.embedding(w, s, 0.027, rng) for w, s in graph.slots])
    speech = rng.uniform(0.5, 12.0, size=len(graph.slots))
    tracemalloc.start()
    labels = link_slots(graph, embeddings, speech, threshold=None, fallback_threshold=0.3).labels
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(graph.slots) > 4000
    # One float64 matrix over all slots alone would be 8 * 4000² = 128 MB; blocks keep it to a few MB.
    assert peak < 64 * 2**20, f"peak {peak / 2**20:.0f} MB"
    truth = np.array([meeting.speaker_of_slot[s] for s in graph.slots])
    assert len(set(labels.tolist())) == 8 and purity(labels, truth)


KNOWN_SPEAKER_TURNS = [
    ReferenceTurn(1.0, 9.0, "bob", "one two three four five six"),
    ReferenceTurn(8.0, 15.0, "alice", "seven eight nine ten eleven"),  # overlaps Bob's turn
    ReferenceTurn(16.0, 27.0, "carol", "twelve thirteen fourteen fifteen"),
    ReferenceTurn(29.0, 40.0, "alice", "sixteen seventeen eighteen nineteen"),
    ReferenceTurn(41.0, 52.0, "bob", "twenty twenty-one twenty-two"),
    ReferenceTurn(53.0, 60.0, "carol", "twenty-three twenty-four"),
]


def label_with_known_speakers(alice_as: str, other_names: tuple[str, ...] = ()) -> tuple[Transcript, dict[str, str]]:
    """KNOWN_SPEAKER_TURNS with Alice enrolled as `alice_as` and `other_names` enrolled on a clip of nobody's voice;
    the transcript, and the label of each segment's first word."""
    noise = np.random.default_rng(0).normal(scale=0.1, size=62 * SAMPLE_RATE).astype(np.float32)
    audio, _ = tag_speakers(noise, KNOWN_SPEAKER_TURNS)
    references = {alice_as: audio[29 * SAMPLE_RATE : 40 * SAMPLE_RATE]}
    references |= {name: audio[: SAMPLE_RATE // 2] for name in other_names}
    linker = SlotLinker(OracleEmbedder(), known_speakers=references)
    transcript = Pipeline(ReferenceDecoder(KNOWN_SPEAKER_TURNS), linker).run(audio, sampling_rate=SAMPLE_RATE)
    return transcript, {seg.text.split()[0]: seg.speaker for seg in transcript.segments}


def test_known_speakers_are_named_and_the_others_numbered() -> None:
    transcript, by_speaker = label_with_known_speakers("Alice", ("Dave",))
    assert by_speaker["seven"] == by_speaker["sixteen"] == "Alice"
    assert by_speaker["one"] == by_speaker["twenty"] == "SPEAKER_00"
    assert by_speaker["twelve"] == by_speaker["twenty-three"] == "SPEAKER_01"
    assert "Dave" not in transcript.speakers  # a reference that matches nobody names nobody
    assert len(transcript.segments) == len(KNOWN_SPEAKER_TURNS)  # overlapping speech is kept, not merged


def test_automatic_labels_skip_the_names_of_known_speakers() -> None:
    _, by_speaker = label_with_known_speakers("SPEAKER_00", ("SPEAKER_01",))
    assert by_speaker["seven"] == by_speaker["sixteen"] == "SPEAKER_00"
    # Bob would be SPEAKER_00 and Carol SPEAKER_01: Alice's name, and one enrolled for a voice that is not there.
    assert by_speaker["one"] == by_speaker["twenty"] == "SPEAKER_02"
    assert by_speaker["twelve"] == by_speaker["twenty-three"] == "SPEAKER_03"


def test_known_speaker_names_are_stripped_and_checked_before_any_work() -> None:
    _, by_speaker = label_with_known_speakers("  Alice\u00a0")
    assert by_speaker["seven"] == "Alice"
    clip = np.zeros(SAMPLE_RATE, np.float32)
    for names, message in [
        (["Al\nice"], "line break or control character"),
        (["Alice", " Alice "], "named once"),
        ([" "], "empty"),
        (["x" * (MAX_SPEAKER_NAME_CHARS + 1)], "at most"),
    ]:
        with pytest.raises(SpeakerNameError, match=message):
            SlotLinker(OracleEmbedder(), known_speakers=dict.fromkeys(names, clip))


@pytest.mark.parametrize("clip", [np.zeros(0, np.float32), np.zeros(3 * SAMPLE_RATE, np.float32)])
def test_a_known_speakers_empty_or_silent_reference_is_refused(clip: np.ndarray) -> None:
    # Its embedding is no one's voice, yet it could name a speaker who comes within the threshold of it.
    with pytest.raises(KnownSpeakerError, match="'Alice': the reference recording is empty or silent"):
        SlotLinker(OracleEmbedder(), known_speakers={"Alice": clip})


def test_single_window_keeps_the_models_slots_without_embedding() -> None:
    class NoEmbedding:
        name, default_threshold = "none", 0.3

        def embed(self, clips):
            raise AssertionError("a single window needs no embeddings")

    segments = [StitchedSegment(0.0, 2.0, "a", 0, 1), StitchedSegment(2.0, 4.0, "b", 0, 0)]
    assert SlotLinker(NoEmbedding()).assign(segments, np.zeros(5 * SAMPLE_RATE, np.float32)).labels == [
        "SPEAKER_00",
        "SPEAKER_01",
    ]


@pytest.mark.skipif(not have_espeak(), reason="espeak-ng is not on PATH (apt-get install espeak-ng)")
def test_pipeline_finds_the_speakers_where_the_baseline_over_counts() -> None:
    meeting = generate_meeting(MeetingConfig(speakers=4, duration_s=180, overlap_share=0.2, seed=0))
    resemblyzer = load_embedder("resemblyzer")
    decoder = ReferenceDecoder(meeting.turns)
    slots = Pipeline(decoder, SlotLinker(resemblyzer)).run(meeting.audio, sampling_rate=SAMPLE_RATE)
    baseline = Pipeline(decoder, ClusteringLinker(resemblyzer)).run(meeting.audio, sampling_rate=SAMPLE_RATE)
    assert len(slots.speakers) == 4
    # The card's recipe embeds overlapped segments as if they were one voice and invents speakers from them.
    assert len(baseline.speakers) > 4
    der = [evaluate(meeting.turns, t, collars=(0.25,)).der(0.25) for t in (slots, baseline)]
    assert der[0] < 0.005 and der[0] <= der[1]


class LoudnessSpreadEmbedder:
    """The oracle's speaker, but voices sit apart in proportion to the clip's loudness (plus a shared component):
    louder recordings spread their speakers wider, so each calibrates its own threshold."""

    name, default_threshold = "loudness-spread", 0.3

    def embed(self, clips):
        level = np.array([np.sqrt(np.mean(np.square(c, dtype=np.float64))) if len(c) else 0.0 for c in clips])
        vectors = OracleEmbedder().embed(clips) * level[:, None] + 0.1
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_each_transcript_carries_its_own_recordings_threshold() -> None:
    turns = [
        ReferenceTurn(1.0, 9.0, "bob", "one two three four five six"),
        ReferenceTurn(9.5, 15.0, "alice", "seven eight nine ten eleven"),
        ReferenceTurn(16.0, 27.0, "carol", "twelve thirteen fourteen fifteen"),
        ReferenceTurn(29.0, 40.0, "alice", "sixteen seventeen eighteen nineteen"),
        ReferenceTurn(41.0, 52.0, "bob", "twenty twenty-one twenty-two"),
        ReferenceTurn(53.0, 60.0, "carol", "twenty-three twenty-four"),
    ]
    noise = np.random.default_rng(0).normal(size=62 * SAMPLE_RATE).astype(np.float32)
    quiet, _ = tag_speakers(0.05 * noise, turns)
    loud, _ = tag_speakers(0.4 * noise, turns)

    def run(linker: SlotLinker, audio: np.ndarray):
        return Pipeline(ReferenceDecoder(turns), linker).run(audio, sampling_rate=SAMPLE_RATE)

    alone = {
        name: run(SlotLinker(LoudnessSpreadEmbedder()), audio) for name, audio in (("quiet", quiet), ("loud", loud))
    }
    assert alone["quiet"].metadata.threshold < 0.1 < 0.3 < alone["loud"].metadata.threshold
    # One linker shared by recordings, as the server shares one: each result keeps its own value, in any order.
    shared = SlotLinker(LoudnessSpreadEmbedder())
    first_quiet, then_loud, quiet_again = run(shared, quiet), run(shared, loud), run(shared, quiet)
    assert first_quiet.metadata.threshold == quiet_again.metadata.threshold == alone["quiet"].metadata.threshold
    assert then_loud.metadata.threshold == alone["loud"].metadata.threshold
    assert first_quiet.metadata.to_dict()["threshold"] == alone["quiet"].metadata.threshold
    assert len(first_quiet.speakers) == len(then_loud.speakers) == 3
    # A given threshold is what every recording reports.
    fixed = SlotLinker(LoudnessSpreadEmbedder(), threshold=0.2)
    assert run(fixed, quiet).metadata.threshold == run(fixed, loud).metadata.threshold == 0.2
