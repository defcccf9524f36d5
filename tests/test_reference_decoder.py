"""The reference-driven decoder: perfect windows give back the reference, imperfections do what they are told."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from turnscribe.decoders.base import WindowAudio
from turnscribe.decoders.reference import MIN_VISIBLE_S, Imperfections, ReferenceDecoder, ReferenceTurn
from turnscribe.evaluation import evaluate
from turnscribe.parse import parse_window
from turnscribe.types import SAMPLE_RATE, LocalSegment, WindowSpan
from turnscribe.windows import plan_windows

WORDS = [
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
    "mike",
    "november",
    "oscar",
    "papa",
]


def random_turns(seconds: float, speakers: int, seed: int = 0, short: float = 0.0) -> list[ReferenceTurn]:
    """Turns on the 0.1 s grid, sometimes overlapping the previous one; `short` of them last under a second."""
    rng = np.random.default_rng(seed)
    turns, t = [], 0.5
    while t < seconds - 8:
        length = rng.uniform(0.3, 0.9) if rng.random() < short else rng.uniform(1.5, 7.0)
        start, end = round(t, 1), round(t + length, 1)
        # No word twice in a turn: the parser would take a repeated phrase for a decoding loop.
        text = " ".join(rng.choice(WORDS, size=int(rng.integers(2, 12)), replace=False))
        turns.append(ReferenceTurn(start, end, f"S{int(rng.integers(speakers))}", text))
        t = end + rng.uniform(-1.0, 1.5)
    return turns


def decode(decoder: ReferenceDecoder, spans: Sequence[WindowSpan]) -> list[list[LocalSegment]]:
    raws = decoder.decode([WindowAudio(s, np.zeros(1, np.float32)) for s in spans], "en")
    parsed = [parse_window(raw, span.duration, span.index) for raw, span in zip(raws, spans)]
    assert all(p.repairs == [] for p in parsed)
    return [p.segments for p in parsed]


def test_perfect_windows_give_back_the_reference_turns_of_each_window() -> None:
    turns = random_turns(120, speakers=4, seed=1)
    spans = plan_windows(120 * SAMPLE_RATE)
    for span, segments in zip(spans, decode(ReferenceDecoder(turns), spans)):
        visible = [t for t in turns if min(t.end, span.end) - max(t.start, span.start) >= MIN_VISIBLE_S - 1e-9]
        # Slots count from 0 in order of first appearance in the window.
        slots = {speaker: i for i, speaker in enumerate(dict.fromkeys(t.speaker for t in visible))}
        expected = [
            LocalSegment(
                slots[t.speaker],
                round(max(t.start, span.start) - span.start, 1),
                round(min(t.end, span.end) - span.start, 1),
                t.text,
            )
            for t in visible
        ]
        assert segments == expected


def test_default_imperfections_are_perfect() -> None:
    turns = random_turns(90, speakers=3, seed=2)
    spans = plan_windows(90 * SAMPLE_RATE)
    assert Imperfections().perfect and Imperfections(seed=7).perfect and not Imperfections(swap_slots=0.1).perfect
    perfect = decode(ReferenceDecoder(turns), spans)
    assert decode(ReferenceDecoder(turns, imperfections=Imperfections(seed=3)), spans) == perfect


def test_imperfections_are_seeded_per_window() -> None:
    turns = random_turns(120, speakers=3, seed=3)
    spans = plan_windows(120 * SAMPLE_RATE)
    noisy = Imperfections(word_error_rate=0.3, boundary_jitter_s=0.5, swap_slots=0.5, seed=4)
    decoder = ReferenceDecoder(turns, imperfections=noisy)
    once = decode(decoder, spans)
    # Same windows, other batches and order: same output.
    assert [decode(decoder, [s])[0] for s in reversed(spans)] == once[::-1]
    assert decode(ReferenceDecoder(turns, imperfections=Imperfections(word_error_rate=0.3, seed=5)), spans) != once


def test_word_error_rate_is_what_was_asked() -> None:
    # One 28 s window holding 1,200 words, scored by meeteval's cpWER.
    turns = [
        ReferenceTurn(0.5 + 2.5 * i, 2.5 + 2.5 * i, f"S{i % 2}", " ".join(f"{WORDS[j % 16]}{j}" for j in range(120)))
        for i in range(10)
    ]
    span = plan_windows(28 * SAMPLE_RATE)[0]
    for rate in (0.05, 0.2):
        [segments] = decode(ReferenceDecoder(turns, imperfections=Imperfections(word_error_rate=rate)), [span])
        hyp = [ReferenceTurn(s.start, s.end, str(s.slot), s.text) for s in segments]
        assert evaluate(turns, hyp).wer("cpWER") == pytest.approx(rate, abs=0.03)


def test_boundary_jitter_moves_boundaries_in_steps_within_the_bound() -> None:
    turns = random_turns(28, speakers=2, seed=5)
    span = plan_windows(28 * SAMPLE_RATE)[0]
    [perfect] = decode(ReferenceDecoder(turns), [span])
    [jittered] = decode(ReferenceDecoder(turns, imperfections=Imperfections(boundary_jitter_s=0.3)), [span])
    by_text = {s.text: s for s in jittered}
    moves = [by_text[s.text].start - s.start for s in perfect] + [by_text[s.text].end - s.end for s in perfect]
    assert any(abs(m) > 0.05 for m in moves)
    assert all(abs(m) <= 0.3 + 1e-9 and abs(m * 10 - round(m * 10)) < 1e-6 for m in moves)
    assert all(0 <= s.start < s.end <= span.duration for s in jittered)


def test_swapped_slots_renumber_a_window_but_keep_who_said_what_together() -> None:
    turns = random_turns(200, speakers=4, seed=6)
    spans = plan_windows(200 * SAMPLE_RATE)
    perfect = decode(ReferenceDecoder(turns), spans)
    swapped = decode(ReferenceDecoder(turns, imperfections=Imperfections(swap_slots=1.0)), spans)
    renumbered = 0
    for a, b in zip(perfect, swapped):
        assert [s.text for s in a] == [s.text for s in b]
        mapping = {x.slot: y.slot for x, y in zip(a, b)}
        assert sorted(mapping.values()) == sorted(mapping) and all(mapping[x.slot] == y.slot for x, y in zip(a, b))
        renumbered += any(k != v for k, v in mapping.items())
    assert renumbered >= len(spans) // 2


def test_slot_errors_give_segments_to_another_speaker_of_the_window() -> None:
    turns = [ReferenceTurn(1.0 + 3 * i, 3.0 + 3 * i, f"S{i % 2}", f"word{i}") for i in range(8)]
    span = plan_windows(28 * SAMPLE_RATE)[0]
    [segments] = decode(ReferenceDecoder(turns, imperfections=Imperfections(slot_errors=1.0)), [span])
    # Two speakers: every segment goes to the other one.
    assert [s.slot for s in segments] == [1, 0] * 4


def test_dropped_short_turns() -> None:
    turns = random_turns(600, speakers=3, seed=7, short=0.5)
    spans = plan_windows(600 * SAMPLE_RATE)
    short = {t.text for t in turns if t.end - t.start < 1.0}
    assert len(short) > 40

    def texts(imperfections: Imperfections) -> set[str]:
        return {
            s.text for window in decode(ReferenceDecoder(turns, imperfections=imperfections), spans) for s in window
        }

    everything = texts(Imperfections())
    assert texts(Imperfections(drop_short_s=1.0, drop_short_p=1.0)) == everything - short
    kept = texts(Imperfections(drop_short_s=1.0, drop_short_p=0.5)) & short
    assert 0.3 < len(kept) / len(short) < 0.7


@pytest.mark.parametrize(
    "kwargs",
    [
        {"word_error_rate": 1.5},
        {"swap_slots": -0.1},
        {"boundary_jitter_s": -1.0},
        {"drop_short_p": 2.0},
        {"word_error_rate": float("nan")},
        # NaN and inf seconds passed, to fail when a window was decoded (jitter) or to drop nothing (drop_short_s).
        {"boundary_jitter_s": float("nan")},
        {"boundary_jitter_s": float("inf")},
        {"drop_short_s": float("nan")},
    ],
)
def test_bad_imperfections(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        Imperfections(**kwargs)


def test_turns_of_exactly_the_visible_minimum_or_the_drop_length_are_kept() -> None:
    # 0.3 s back-channels at every 0.1 s step: 12.7 - 12.4 is 0.29999999999999893 in floats, and such turns were
    # left out of a perfect window a third of the time; a 1.0 s turn likewise fell under drop_short_s = 1.0.
    span = plan_windows(28 * SAMPLE_RATE)[0]
    short = [ReferenceTurn(round(0.1 * k, 1), round(0.1 * k + 0.3, 1), "S0", f"yeah{k}") for k in range(0, 270, 3)]
    [segments] = decode(ReferenceDecoder(short), [span])
    assert [s.text for s in segments] == [t.text for t in short]
    second = [ReferenceTurn(round(0.1 * k, 1), round(0.1 * k + 1.0, 1), "S0", f"word{k}") for k in range(0, 270, 11)]
    dropping = Imperfections(drop_short_s=1.0, drop_short_p=1.0)
    [segments] = decode(ReferenceDecoder(second, imperfections=dropping), [span])
    assert [s.text for s in segments] == [t.text for t in second]


@pytest.mark.parametrize(("bound", "largest"), [(0.16, 0.1), (0.26, 0.2), (0.3, 0.3), (0.05, 0.0)])
def test_boundary_jitter_never_passes_its_bound(bound: float, largest: float) -> None:
    # The steps were rounded to the nearest: a 0.16 s bound moved boundaries by 0.2 s.
    turns = random_turns(200, speakers=2, seed=8)
    spans = plan_windows(200 * SAMPLE_RATE)
    perfect = decode(ReferenceDecoder(turns), spans)
    jittered = decode(ReferenceDecoder(turns, imperfections=Imperfections(boundary_jitter_s=bound)), spans)
    moves = [
        abs(moved - kept)
        for a, b in zip(perfect, jittered, strict=True)
        for x, y in zip(sorted(a, key=lambda s: s.text), sorted(b, key=lambda s: s.text), strict=True)
        for kept, moved in ((x.start, y.start), (x.end, y.end))
    ]
    assert max(moves) == pytest.approx(largest)
