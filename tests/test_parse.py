import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from turnscribe.parse import collapse_repetitions, format_segments, parse_window
from turnscribe.types import LocalSegment

CARD_EXAMPLE = "<|spltoken0|><|t:0.0|> Welcome back. <|t:1.5|><|spltoken1|><|t:1.5|> Thanks. <|t:2.4|><|endoftext|>"


def kinds(parsed):
    return [r.kind for r in parsed.repairs]


def test_card_example_parses_without_repairs():
    parsed = parse_window("<|startofcontext|><|en|><|diarize|>" + CARD_EXAMPLE, 28.0)
    assert parsed.segments == [LocalSegment(0, 0.0, 1.5, "Welcome back."), LocalSegment(1, 1.5, 2.4, "Thanks.")]
    assert parsed.repairs == []


def test_truncated_last_segment_is_kept_to_window_end():
    parsed = parse_window("<|spltoken0|><|t:0.0|> Hello <|t:1.0|><|spltoken1|><|t:26.5|> and then we", 28.0)
    assert parsed.segments[-1] == LocalSegment(1, 26.5, 28.0, "and then we")
    assert "truncated" in kinds(parsed)


def test_a_missing_end_time_ends_the_segment_at_the_next_segments_start():
    # Ended at the window's end instead, "Hi" would overlap every later segment of the window.
    raw = "<|spltoken0|><|t:0.0|> Hi <|spltoken1|><|t:1.5|> Thanks. <|t:2.4|><|spltoken0|><|t:3.0|> So. <|t:4.0|>"
    parsed = parse_window(raw, 28.0)
    assert parsed.segments == [
        LocalSegment(0, 0.0, 1.5, "Hi"),
        LocalSegment(1, 1.5, 2.4, "Thanks."),
        LocalSegment(0, 3.0, 4.0, "So."),
    ]
    assert kinds(parsed) == ["missing_end"]


def test_a_missing_end_and_next_start_bound_both_segments_by_the_next_time():
    parsed = parse_window("<|spltoken0|><|t:5.0|> Hi <|spltoken1|> there <|t:6.0|>", 28.0)
    assert parsed.segments == [LocalSegment(0, 5.0, 6.0, "Hi"), LocalSegment(1, 5.0, 6.0, "there")]
    assert sorted(kinds(parsed)) == ["missing_end", "missing_start"]


def test_a_missing_end_before_a_truncation_ends_at_the_window_end():
    parsed = parse_window("<|spltoken0|><|t:5.0|> Hi <|spltoken1|>", 28.0)
    assert parsed.segments == [LocalSegment(0, 5.0, 28.0, "Hi")]
    assert kinds(parsed) == ["missing_end"]


def test_missing_speaker_token_inherits_previous_slot():
    parsed = parse_window("<|spltoken1|><|t:0.0|> Hi <|t:1.0|><|t:1.2|> there <|t:2.0|>", 28.0)
    assert [s.slot for s in parsed.segments] == [1, 1]
    assert "missing_speaker" in kinds(parsed)


def test_end_before_start_is_swapped():
    parsed = parse_window("<|spltoken0|><|t:3.0|> oops <|t:2.0|>", 28.0)
    assert parsed.segments == [LocalSegment(0, 2.0, 3.0, "oops")]
    assert kinds(parsed) == ["end_before_start"]


def test_times_past_window_are_clamped():
    parsed = parse_window("<|spltoken0|><|t:10.0|> late <|t:29.9|>", 12.0)
    assert parsed.segments == [LocalSegment(0, 10.0, 12.0, "late")]
    assert "time_past_window" in kinds(parsed)


def test_stray_tokens_removed_and_empty_segments_dropped():
    parsed = parse_window("<|spltoken0|><|t:0.0|> a <|en|>b <|t:1.0|><|spltoken1|><|t:1.0|>  <|t:2.0|>", 28.0)
    assert parsed.segments == [LocalSegment(0, 0.0, 1.0, "a b")]
    assert {"stray_token", "empty_text"} <= set(kinds(parsed))


def test_repetition_loops_collapse():
    loop = "<|spltoken0|><|t:0.0|> yes <|t:0.5|>" * 6
    parsed = parse_window(loop + "<|spltoken0|><|t:0.0|> the the the the the the end <|t:3.0|>", 28.0)
    texts = [s.text for s in parsed.segments]
    assert texts.count("yes") == 1  # the same words at the same times: said once
    assert texts[-1] == "the the end"
    assert "repetition_loop" in kinds(parsed)
    assert collapse_repetitions("a b a b a b a b c") == "a b a b c"


def test_a_segment_loop_with_advancing_times_keeps_two():
    loop = "".join(f"<|spltoken0|><|t:{t}.0|> yes <|t:{t}.5|>" for t in range(6))
    assert [s.text for s in parse_window(loop, 28.0).segments] == ["yes", "yes"]


def test_a_decoder_going_back_over_a_segment_says_it_once():
    raw = (
        "<|spltoken0|><|t:0.0|> Welcome back. <|t:1.5|><|spltoken1|><|t:1.5|> Thanks. <|t:2.4|>"
        "<|spltoken0|><|t:0.0|> Welcome back. <|t:1.5|><|spltoken1|><|t:1.5|> Thanks. <|t:2.4|>"
    )
    parsed = parse_window(raw, 28.0)
    assert [s.text for s in parsed.segments] == ["Welcome back.", "Thanks."]
    assert kinds(parsed) == ["repetition_loop", "repetition_loop"]


def test_speaker_token_loop_without_text():
    parsed = parse_window("<|spltoken0|><|t:0.0|><|spltoken1|><|t:0.0|><|spltoken2|><|t:0.0|> hi <|t:1.0|>", 28.0)
    assert parsed.segments == [LocalSegment(2, 0.0, 1.0, "hi")]
    assert "repeated_speaker_token" in kinds(parsed)


def test_text_before_any_token_is_kept():
    parsed = parse_window("hello there <|spltoken1|><|t:2.0|> ok <|t:3.0|>", 28.0)
    assert parsed.segments[0].text == "hello there"
    assert parsed.segments[0].start == 0.0
    assert {"missing_start", "missing_speaker"} <= set(kinds(parsed))


def test_empty_output_is_empty():
    assert parse_window("", 28.0).segments == []
    assert parse_window("<|endoftext|>", 28.0).segments == []


# -- properties ---------------------------------------------------------------------------------

words = st.text(alphabet="abcxyz.,' ", min_size=1, max_size=20).map(str.strip).filter(bool)
tokens = st.one_of(
    st.integers(0, 9).map(lambda i: f"<|spltoken{i}|>"),
    st.integers(0, 350).map(lambda i: f"<|t:{i / 10:.1f}|>"),
    st.sampled_from(["<|en|>", "<|endoftext|>", "<|diarize|>", "<|nospeech|>", "<|", "|>", "<|t:x|>"]),
    words,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(tokens, max_size=40), st.floats(0.5, 30.0))
def test_never_raises_and_segments_are_valid(parts, duration):
    parsed = parse_window("".join(parts), duration)
    for s in parsed.segments:
        assert 0.0 <= s.start <= s.end <= duration + 1e-9
        assert s.text and "<|" not in s.text and s.text == s.text.strip()


@st.composite
def well_formed(draw):
    t, segs = 0.0, []
    for _ in range(draw(st.integers(0, 8))):
        start = t + draw(st.integers(0, 10)) / 10
        end = start + draw(st.integers(1, 30)) / 10
        if end > 28.0:
            break
        text = " ".join(draw(st.lists(st.sampled_from(["alpha", "beta", "gamma", "delta."]), min_size=1, max_size=2)))
        segs.append(LocalSegment(draw(st.integers(0, 7)), round(start, 1), round(end, 1), text))
        t = end
    # A third identical segment in a row is, by the parser's rule, a decoding loop.
    assume(
        not any(a.text == b.text == c.text and a.slot == b.slot == c.slot for a, b, c in zip(segs, segs[1:], segs[2:]))
    )
    return segs


@settings(max_examples=200, deadline=None)
@given(well_formed())
def test_well_formed_streams_round_trip_without_repairs(segs):
    parsed = parse_window(format_segments(segs), 28.0)
    assert parsed.segments == segs
    assert parsed.repairs == []


@settings(max_examples=200, deadline=None)
@given(well_formed(), st.data())
def test_truncation_keeps_every_complete_segment(segs, data):
    raw = format_segments(segs)
    cut = data.draw(st.integers(0, len(raw)))
    parsed = parse_window(raw[:cut], 28.0)
    complete = [s for s in segs if format_segments([s]).removesuffix("<|endoftext|>") in raw[:cut]]
    assert parsed.segments[: len(complete)] == complete


def test_a_segment_clamped_to_a_window_ending_just_past_a_step_is_widened():
    # A last window of 2.0000625 s: the end clamped to it would leave a 62.5 µs segment, 0 ms on the timeline.
    parsed = parse_window("<|spltoken0|><|t:2.0|> late words <|t:2.1|>", 2.0000625)
    (segment,) = parsed.segments
    assert segment.end == 2.0000625 and segment.end - segment.start == pytest.approx(0.1)
    assert "zero_length" in kinds(parsed)


def test_text_after_a_dropped_empty_segment_starts_where_that_segment_ended():
    # A repeated start time leaves an empty segment; its times still place the words after it, not 5 s earlier.
    parsed = parse_window("<|spltoken0|><|t:0.0|> a <|t:1.0|><|spltoken1|><|t:5.0|><|t:5.5|> hello <|t:6.0|>", 28.0)
    assert parsed.segments == [LocalSegment(0, 0.0, 1.0, "a"), LocalSegment(1, 5.5, 6.0, "hello")]
    assert "empty_text" in kinds(parsed)


def test_a_loop_on_a_whole_sentence_collapses():
    sentence = "and then we went to the market to buy some fresh bread."
    parsed = parse_window(f"<|spltoken0|><|t:0.0|> {' '.join([sentence] * 20)} <|t:27.0|>", 28.0)
    assert [s.text for s in parsed.segments] == [f"{sentence} {sentence}"]
    assert kinds(parsed) == ["repetition_loop"]


def test_a_diarize_marker_the_model_emits_mid_stream_is_a_stray_token_not_the_prompts_end():
    # The backends return only generated tokens: what comes before such a marker is speech, not an echoed prompt.
    raw = "<|spltoken0|><|t:0.0|> hi there <|t:1.0|><|diarize|><|spltoken1|><|t:1.0|> yo <|t:2.0|>"
    parsed = parse_window(raw, 28.0)
    assert [s.text for s in parsed.segments] == ["hi there", "yo"]
    assert kinds(parsed) == ["stray_token"]
