"""Stitching rule: scripted window outputs around the 2 s overlap of 28 s windows."""

import pytest

from turnscribe.parse import parse_window
from turnscribe.stitch import stitch
from turnscribe.types import SAMPLE_RATE, WindowSpan
from turnscribe.windows import plan_windows

W0 = WindowSpan(0, 0, 28 * SAMPLE_RATE)
W1 = WindowSpan(1, 26 * SAMPLE_RATE, 54 * SAMPLE_RATE)


def run(raw0: str, raw1: str):
    return stitch([(W0, parse_window(raw0, 28.0, 0)), (W1, parse_window(raw1, 28.0, 1))])


def test_segment_across_the_boundary_merges_without_duplicates_or_losses():
    # Truth: speaker says "so I think we should go to the park now" from 24.0 to 30.0 s.
    # Window 0 hears it up to 28 s, the last word cut ("pa"); window 1 from 26 s, the first word cut ("ould").
    raw0 = (
        "<|spltoken0|><|t:20.0|> Hello there. <|t:23.5|>"
        "<|spltoken1|><|t:24.0|> so I think we should go to the pa <|t:28.0|>"
    )
    raw1 = "<|spltoken0|><|t:0.0|> ould go to the park now <|t:4.0|><|spltoken1|><|t:5.0|> Sure. <|t:6.0|>"
    segments, repairs = run(raw0, raw1)
    assert [s.text for s in segments] == ["Hello there.", "so I think we should go to the park now", "Sure."]
    merged = segments[1]
    assert (merged.start, merged.end, merged.window, merged.slot) == (24.0, 30.0, 0, 1)
    assert merged.also_seen_as == ((1, 0),)
    assert [r.kind for r in repairs] == ["overlap_merged"]


def test_short_utterance_inside_the_overlap_is_kept_once():
    raw0 = "<|spltoken0|><|t:26.5|> Yes, exactly. <|t:27.5|>"
    raw1 = "<|spltoken2|><|t:0.5|> yes exactly <|t:1.5|>"
    segments, _ = run(raw0, raw1)
    assert [(s.start, s.end, s.text) for s in segments] == [(26.5, 27.5, "Yes, exactly.")]


@pytest.mark.parametrize(
    ("raw1", "kept"),
    [
        # Both windows heard it whole, one word heard differently: no run of two words aligns, yet it is one.
        ("<|spltoken2|><|t:0.5|> Yeah, exactly. <|t:1.5|>", ["Yes, exactly."]),
        ("<|spltoken2|><|t:0.6|> Yeah, exactly. <|t:1.4|>", ["Yes, exactly."]),  # boundaries a step or two apart
        ("<|spltoken2|><|t:0.5|> Right. <|t:1.5|>", ["Yes, exactly.", "Right."]),  # no word in common
        ("<|spltoken2|><|t:1.2|> Yeah, exactly. <|t:1.8|>", ["Yes, exactly.", "Yeah, exactly."]),  # said again later
    ],
)
def test_an_utterance_both_windows_heard_whole_is_kept_once(raw1, kept):
    segments, _ = run("<|spltoken0|><|t:26.5|> Yes, exactly. <|t:27.5|>", raw1)
    assert [s.text for s in segments] == kept
    if len(kept) == 1:
        assert segments[0].also_seen_as == ((1, 2),)  # evidence for the speaker stage, as a merge gives


def test_overlapping_speakers_in_the_overlap_stay_two_segments():
    raw0 = "<|spltoken0|><|t:26.0|> I was saying that <|t:28.0|>"
    raw1 = "<|spltoken0|><|t:0.0|> I was saying that <|t:1.5|><|spltoken1|><|t:0.5|> hold on a second <|t:2.0|>"
    segments, _ = run(raw0, raw1)
    assert sorted(s.text for s in segments) == ["I was saying that", "hold on a second"]


def test_speech_only_one_window_transcribed_is_not_lost():
    raw0 = "<|spltoken0|><|t:26.2|> right <|t:26.6|>"
    raw1 = "<|spltoken0|><|t:1.0|> okay then <|t:1.8|>"
    segments, _ = run(raw0, raw1)
    assert [s.text for s in segments] == ["right", "okay then"]
    assert [(s.start, s.end) for s in segments] == [(26.2, 26.6), (27.0, 27.8)]


def test_a_monologue_longer_than_a_window_chains_through_three_windows():
    spans = plan_windows(80 * SAMPLE_RATE)
    assert [(s.start, s.end) for s in spans] == [(0.0, 28.0), (26.0, 54.0), (52.0, 80.0)]
    raws = [
        "<|spltoken0|><|t:1.0|> one two three four five six <|t:28.0|>",
        "<|spltoken1|><|t:0.0|> five six seven eight nine ten <|t:28.0|>",
        "<|spltoken0|><|t:0.0|> nine ten eleven twelve <|t:10.0|>",
    ]
    segments, _ = stitch([(s, parse_window(r, s.duration, s.index)) for s, r in zip(spans, raws)])
    assert [s.text for s in segments] == ["one two three four five six seven eight nine ten eleven twelve"]
    assert segments[0].also_seen_as == ((1, 1), (2, 0))
    assert (segments[0].start, segments[0].end) == (1.0, 62.0)


def test_scripts_without_spaces_align_by_character():
    raw0 = "<|spltoken0|><|t:25.0|> 今日はいい天気で <|t:28.0|>"
    raw1 = "<|spltoken0|><|t:0.0|> い天気ですね <|t:2.0|>"
    segments, _ = stitch([(W0, parse_window(raw0, 28.0)), (W1, parse_window(raw1, 28.0))], char_level=True)
    assert [s.text for s in segments] == ["今日はいい天気ですね"]


def test_a_character_level_merge_keeps_punctuation_and_spaces():
    # Alignment ignores punctuation and spaces, but the merged text must not lose them.
    raw0 = "<|spltoken0|><|t:25.0|> 我们用 Python 写代码，今天 <|t:28.0|>"
    raw1 = "<|spltoken0|><|t:0.0|> 写代码，今天很方便。 <|t:2.0|>"
    segments, _ = stitch([(W0, parse_window(raw0, 28.0)), (W1, parse_window(raw1, 28.0))], char_level=True)
    assert [s.text for s in segments] == ["我们用 Python 写代码，今天很方便。"]


def test_speech_one_window_split_in_two_and_the_other_heard_whole_is_kept_once():
    # Window 0 split it at a pause (and cut "seven" at its edge); window 1 heard it as one segment.
    raw0 = "<|spltoken0|><|t:24.0|> one two three four <|t:27.5|><|spltoken0|><|t:27.5|> five six sev <|t:28.0|>"
    raw1 = "<|spltoken1|><|t:0.0|> three four five six seven eight nine <|t:3.5|>"
    segments, repairs = run(raw0, raw1)
    assert [(s.start, s.end, s.text) for s in segments] == [
        (24.0, 29.5, "one two three four five six seven eight nine")
    ]
    assert [r.kind for r in repairs] == ["overlap_merged", "overlap_repeated"]


def test_speech_the_later_window_split_in_two_is_kept_once():
    raw0 = "<|spltoken0|><|t:24.0|> one two three four five six seven <|t:28.0|>"
    raw1 = "<|spltoken0|><|t:0.0|> three four <|t:0.8|><|spltoken0|><|t:1.0|> six seven eight nine <|t:4.0|>"
    segments, _ = run(raw0, raw1)
    assert [s.text for s in segments] == ["one two three four five six seven eight nine"]


def test_two_speakers_saying_the_same_words_in_the_overlap_stay_two_segments():
    raw0 = "<|spltoken0|><|t:26.2|> yes exactly <|t:27.0|><|spltoken1|><|t:26.5|> yes exactly <|t:27.4|>"
    raw1 = "<|spltoken0|><|t:0.2|> yes exactly <|t:1.0|><|spltoken1|><|t:0.5|> yes exactly <|t:1.4|>"
    segments, _ = run(raw0, raw1)
    assert [(s.start, s.end, s.slot) for s in segments] == [(26.2, 27.0, 0), (26.5, 27.4, 1)]


def test_the_same_words_in_segments_that_only_touch_in_time_merge():
    # Window 1 places the start of the last word a 0.1 s step after window 0 ended the segment.
    raw0 = "<|spltoken0|><|t:22.0|> we will meet again next week <|t:26.4|>"
    raw1 = "<|spltoken1|><|t:0.4|> week <|t:0.8|>"
    segments, _ = run(raw0, raw1)
    assert [(s.start, s.end, s.text) for s in segments] == [(22.0, 26.8, "we will meet again next week")]


def test_a_word_said_twice_aligns_where_the_next_window_heard_it():
    # Window 1 caught only the last word, "the", which window 0's segment also says earlier: aligning there
    # would keep "we went to the" and drop the rest.
    raw0 = "<|spltoken0|><|t:20.0|> we went to the store and bought the <|t:28.0|>"
    raw1 = "<|spltoken0|><|t:0.0|> the <|t:0.3|><|spltoken1|><|t:3.0|> Nice. <|t:3.5|>"
    segments, _ = run(raw0, raw1)
    assert [s.text for s in segments] == ["we went to the store and bought the", "Nice."]
