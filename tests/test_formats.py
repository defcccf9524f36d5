"""Every output format is read back with its field's own reader: times, speakers and texts must survive."""

from __future__ import annotations

import html
import io
import json
import math
import os
from pathlib import Path

import meeteval
import pytest
import srt
import webvtt
from hypothesis import given, settings
from hypothesis import strategies as st
from meeteval.io import SegLST
from praatio.textgrid import openTextgrid
from pyannote.database.util import load_rttm

from turnscribe import formats
from turnscribe.types import Segment, Transcript

SEGMENTS = [
    Segment(0, 0.0, 2.5, "Hej, hvordan går det?", "SPEAKER_00"),
    Segment(1, 2.0, 4.25, "Fint, tak! 日本語 ✓", "SPEAKER_01"),
    Segment(2, 4.0, 6.1234, 'She said "ok" <3 & -->', "SPEAKER_00"),
    # Overlaps the speaker's own previous segment: one Praat tier cannot hold both as they are.
    Segment(3, 5.5, 7.0, "ja ja", "SPEAKER_00"),
    Segment(4, 7.5, 9.0, "ñandú", "SPEAKER_02"),
]


@pytest.fixture
def transcript() -> Transcript:
    return Transcript(SEGMENTS, ["SPEAKER_00", "SPEAKER_01", "SPEAKER_02"], "da", 10.0)


def empty() -> Transcript:
    return Transcript([], [], "en", 0.0)


def ms(seconds: float) -> int:
    return round(seconds * 1000)


def test_txt_merges_consecutive_turns_of_one_speaker(transcript: Transcript) -> None:
    assert formats.render(transcript, "txt") == (
        "[00:00:00.000 --> 00:00:02.500] SPEAKER_00: Hej, hvordan går det?\n"
        "\n"
        "[00:00:02.000 --> 00:00:04.250] SPEAKER_01: Fint, tak! 日本語 ✓\n"
        "\n"
        '[00:00:04.000 --> 00:00:07.000] SPEAKER_00: She said "ok" <3 & --> ja ja\n'
        "\n"
        "[00:00:07.500 --> 00:00:09.000] SPEAKER_02: ñandú\n"
    )


def test_srt_round_trip(transcript: Transcript) -> None:
    subtitles = list(srt.parse(formats.render(transcript, "srt")))
    assert [s.index for s in subtitles] == [1, 2, 3, 4, 5]
    got = [(s.start.total_seconds(), s.end.total_seconds(), s.content) for s in subtitles]
    assert got == [(ms(s.start) / 1000, ms(s.end) / 1000, f"{s.speaker}: {s.text}") for s in SEGMENTS]


def test_vtt_round_trip(transcript: Transcript) -> None:
    vtt = webvtt.from_string(formats.render(transcript, "vtt"), strict=True)
    got = [
        (c.start_time.in_milliseconds(), c.end_time.in_milliseconds(), c.voice, html.unescape(c.text))
        for c in vtt.captions
    ]
    assert got == [(ms(s.start), ms(s.end), s.speaker, s.text) for s in SEGMENTS]


def test_vtt_escapes_markup(transcript: Transcript) -> None:
    # Unescaped, '<3 & -->' would be read as a tag, and webvtt-py refuses to write '-->' in cue text.
    assert '<v SPEAKER_00>She said "ok" &lt;3 &amp; --&gt;\n' in formats.render(transcript, "vtt")


def test_cue_text_with_blank_line_stays_one_cue() -> None:
    # A blank line would end the cue: webvtt-py refuses to write it, and SRT readers would lose the rest.
    t = Transcript([Segment(0, 1.0, 2.0, "a\n\nb", "S")], ["S"], "en", 2.0)
    assert [c.content for c in srt.parse(formats.render(t, "srt"))] == ["S: a  b"]
    assert [(c.voice, c.text) for c in webvtt.from_string(formats.render(t, "vtt")).captions] == [("S", "a  b")]


def test_rttm_round_trip(transcript: Transcript) -> None:
    annotation = load_rttm(io.StringIO(formats.render(transcript, "rttm", uri="my meeting")))["my_meeting"]
    got = sorted((ms(seg.start), ms(seg.end), label) for seg, _, label in annotation.itertracks(yield_label=True))
    assert got == sorted((ms(s.start), ms(s.end), s.speaker) for s in SEGMENTS)


def test_rttm_tokens_have_no_whitespace() -> None:
    t = Transcript([Segment(0, 0.0, 1.0, "hi", "Anna Berg")], ["Anna Berg"], "en", 1.0)
    want = "SPEAKER a_b_c 1 0.000 1.000 <NA> <NA> Anna_Berg <NA> <NA>\n"
    assert formats.render(t, "rttm", uri="a b\tc") == want


def test_rttm_fields_are_never_empty() -> None:
    t = Transcript([Segment(0, 0.0, 1.0, "hi", " ")], [" "], "en", 1.0)
    line = formats.render(t, "rttm", uri="\t")
    assert line == "SPEAKER audio 1 0.000 1.000 <NA> <NA> unnamed <NA> <NA>\n" and len(line.split()) == 10


def test_rttm_keeps_speakers_apart_whose_names_become_one_token() -> None:
    names = ["Ana María", "Ana_María", "Ana_María_2", " ", "unnamed"]
    t = Transcript([Segment(i, i, i + 1.0, "x", name) for i, name in enumerate(names)], names, "en", 5.0)
    labels = [line.split()[7] for line in formats.render(t, "rttm").splitlines()]
    # A name that is a token already keeps it; the others take the next free numbered suffix.
    assert labels == ["Ana_María_3", "Ana_María", "Ana_María_2", "unnamed_2", "unnamed"]


def test_textgrid_round_trip_merges_own_overlaps(transcript: Transcript, tmp_path: Path) -> None:
    path = formats.write(transcript, "textgrid", tmp_path / "t.TextGrid", uri="t")
    grid = openTextgrid(str(path), includeEmptyIntervals=False)
    assert (grid.minTimestamp, grid.maxTimestamp) == (0, 10.0)
    assert {tier.name: [tuple(e) for e in tier.entries] for tier in grid.tiers} == {
        "SPEAKER_00": [(0.0, 2.5, "Hej, hvordan går det?"), (4.0, 7.0, 'She said "ok" <3 & --> ja ja')],
        "SPEAKER_01": [(2.0, 4.25, "Fint, tak! 日本語 ✓")],
        "SPEAKER_02": [(7.5, 9.0, "ñandú")],
    }


def test_textgrid_keeps_empty_and_backwards_spans_and_spans_past_duration(tmp_path: Path) -> None:
    segments = [
        Segment(0, 1.0, 1.0, "zero", "A"),
        Segment(1, 2.0, 1.5, "backwards", "A"),
        Segment(2, 3.0, 12.0, "x", "A"),
    ]
    path = formats.write(Transcript(segments, ["A", "B"], "en", 10.0), "textgrid", tmp_path / "t.TextGrid", uri="t")
    grid = openTextgrid(str(path), includeEmptyIntervals=False)
    assert grid.maxTimestamp == 12.0
    assert [(tier.name, [tuple(e) for e in tier.entries]) for tier in grid.tiers] == [
        ("A", [(1.0, 1.001, "zero"), (2.0, 2.001, "backwards"), (3.0, 12.0, "x")]),
        ("B", []),
    ]


# Out of order, one zero-length, one shorter than a millisecond, one before 0: as every timed format must show them,
# in start order, each at least a millisecond long.
AWKWARD = [
    Segment(0, 5.0, 6.0, "last", "A"),
    Segment(1, 2.0, 2.0, "zero", "B"),
    Segment(2, 3.0004, 3.0008, "tiny", "A"),
    Segment(3, -0.5, 1.0, "early", "B"),
]
AWKWARD_SHOWN = [
    (0, 1000, "B", "early"),
    (2000, 2001, "B", "zero"),
    (3000, 3001, "A", "tiny"),
    (5000, 6000, "A", "last"),
]


def awkward() -> Transcript:
    return Transcript(AWKWARD, ["A", "B"], "en", 6.0)


def test_srt_keeps_short_cues_and_sorts_them() -> None:
    got = [
        (ms(s.start.total_seconds()), ms(s.end.total_seconds()), s.content)
        for s in srt.parse(formats.render(awkward(), "srt"))
    ]
    assert got == [(start, end, f"{speaker}: {text}") for start, end, speaker, text in AWKWARD_SHOWN]


def test_vtt_keeps_short_cues_and_sorts_them() -> None:
    vtt = webvtt.from_string(formats.render(awkward(), "vtt"), strict=True)
    got = [(c.start_time.in_milliseconds(), c.end_time.in_milliseconds(), c.voice, c.text) for c in vtt.captions]
    assert got == AWKWARD_SHOWN


def test_rttm_keeps_short_turns() -> None:
    lines = [line.split() for line in formats.render(awkward(), "rttm").splitlines()]
    got = [(ms(float(f[3])), ms(float(f[3]) + float(f[4])), f[7]) for f in lines]
    assert got == [(start, end, speaker) for start, end, speaker, _ in AWKWARD_SHOWN]


def test_txt_keeps_short_turns_and_sorts_them() -> None:
    assert formats.render(awkward(), "txt") == (
        # In start order B speaks twice in a row, and A does: one turn each.
        "[00:00:00.000 --> 00:00:02.001] B: early zero\n\n[00:00:03.000 --> 00:00:06.000] A: tiny last\n"
    )


def test_seglst_round_trip(transcript: Transcript) -> None:
    seglst = SegLST(json.loads(formats.render(transcript, "seglst", uri="my meeting")))
    assert seglst.segments == [
        {"session_id": "my_meeting", "speaker": s.speaker, "start_time": s.start, "end_time": s.end, "words": s.text}
        for s in SEGMENTS
    ]
    # meeteval scores what it read against the transcript itself: a perfect match.
    [(session, result)] = meeteval.wer.cpwer(seglst, formats.to_seglst(transcript, "my meeting")).items()
    assert (session, result.error_rate, result.scored_speaker) == ("my_meeting", 0, 3)


def test_json_is_the_full_record(transcript: Transcript) -> None:
    assert json.loads(formats.render(transcript, "json")) == transcript.to_dict()
    assert "日本語" in formats.render(transcript, "json")


def test_diarized_json_has_openai_shape(transcript: Transcript) -> None:
    data = json.loads(formats.render(transcript, "diarized_json"))
    assert set(data) == {"task", "language", "duration", "text", "segments", "speakers", "usage"}
    assert (data["task"], data["language"], data["duration"]) == ("transcribe", "da", 10.0)
    assert data["text"] == transcript.text
    assert data["speakers"] == ["SPEAKER_00", "SPEAKER_01", "SPEAKER_02"]
    assert data["usage"] == {"type": "duration", "seconds": 10}
    for seg, want in zip(data["segments"], SEGMENTS, strict=True):
        assert list(seg) == ["type", "id", "start", "end", "text", "speaker"]
        assert seg["type"] == "transcript.text.segment"
        assert seg["id"] == f"seg_{want.id}"
        assert isinstance(seg["start"], float) and isinstance(seg["end"], float)
        assert (seg["start"], seg["end"], seg["text"], seg["speaker"]) == (
            want.start,
            want.end,
            want.text,
            want.speaker,
        )


def test_diarized_json_bills_whole_seconds() -> None:
    data = json.loads(formats.render(Transcript([], [], "en", 61.2), "diarized_json"))
    assert data["usage"]["seconds"] == math.ceil(61.2) == 62


def _entries(fmt: str, text: str, tmp_path: Path) -> int:
    """How many entries the field's reader finds in `text`."""
    if fmt == "srt":
        return len(list(srt.parse(text)))
    if fmt == "vtt":
        return len(webvtt.from_string(text, strict=True).captions)
    if fmt == "rttm":
        # pyannote's loader (pandas) rejects a file with no lines at all, so count lines instead.
        return len(text.splitlines())
    if fmt == "textgrid":
        path = tmp_path / "t.TextGrid"
        path.write_text(text, encoding="utf-8")
        return sum(len(tier.entries) for tier in openTextgrid(str(path), includeEmptyIntervals=False).tiers)
    if fmt == "seglst":
        return len(SegLST(json.loads(text)).segments)
    if fmt == "txt":
        return len(text.split("\n\n")) if text else 0
    return len(json.loads(text)["segments"])


@pytest.mark.parametrize("fmt", formats.format_names())
def test_every_format_reads_back_all_entries(fmt: str, transcript: Transcript, tmp_path: Path) -> None:
    # txt joins the two consecutive SPEAKER_00 segments; textgrid merges the overlapping ones.
    want = {"txt": 4, "textgrid": 4}.get(fmt, len(SEGMENTS))
    assert _entries(fmt, formats.render(transcript, fmt), tmp_path) == want


@pytest.mark.parametrize("fmt", formats.format_names())
def test_no_format_loses_a_short_or_misplaced_segment(fmt: str, tmp_path: Path) -> None:
    # txt joins B's and A's consecutive turns; each TextGrid tier holds its speaker's two segments apart.
    want = {"txt": 2}.get(fmt, len(AWKWARD))
    assert _entries(fmt, formats.render(awkward(), fmt), tmp_path) == want


@pytest.mark.parametrize("fmt", formats.format_names())
def test_empty_transcript_is_valid_in_every_format(fmt: str, tmp_path: Path) -> None:
    assert _entries(fmt, formats.render(empty(), fmt), tmp_path) == 0


def test_empty_vtt_is_just_the_header() -> None:
    assert formats.render(empty(), "vtt") == "WEBVTT\n"


def test_unknown_format_names_the_valid_ones(transcript: Transcript) -> None:
    with pytest.raises(ValueError, match="docx") as err:
        formats.render(transcript, "docx")
    assert all(name in str(err.value) for name in formats.format_names())
    with pytest.raises(ValueError, match="rttm"):
        formats.extension("docx")


def test_registry() -> None:
    assert formats.format_names() == ["diarized_json", "json", "txt", "srt", "vtt", "rttm", "textgrid", "seglst"]
    endings = [formats.extension(f) for f in formats.format_names()]
    # Writing every format next to one recording must not make two of them collide.
    assert all(e.startswith(".") for e in endings) and len(set(endings)) == len(endings)


def test_write(transcript: Transcript, tmp_path: Path) -> None:
    path = formats.write(transcript, "srt", tmp_path / "out.srt", uri="out")
    assert path == tmp_path / "out.srt"
    assert path.read_text(encoding="utf-8") == formats.render(transcript, "srt")
    assert os.listdir(tmp_path) == ["out.srt"]


def test_write_leaves_nothing_when_rendering_fails(
    transcript: Transcript, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(t: Transcript, uri: str) -> str:
        raise RuntimeError("boom")

    monkeypatch.setitem(formats.FORMATS, "srt", formats.Writer(".srt", broken))
    with pytest.raises(RuntimeError, match="boom"):
        formats.write(transcript, "srt", tmp_path / "out.srt", uri="out")
    assert os.listdir(tmp_path) == []


def test_write_failing_midway_keeps_the_old_file_and_no_temp(
    transcript: Transcript, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "out.srt"
    target.write_text("old", encoding="utf-8")

    def broken(src: object, dst: object) -> None:
        raise OSError("disk gone")

    # The temp file is fully written by now; only the swap into place fails.
    monkeypatch.setattr(formats.os, "replace", broken)
    with pytest.raises(OSError, match="disk gone"):
        formats.write(transcript, "srt", target, uri="out")
    assert os.listdir(tmp_path) == ["out.srt"]
    assert target.read_text(encoding="utf-8") == "old"


@pytest.mark.parametrize("stem", ["x" * 250, "é" * 125])  # 254 bytes with ".srt": the longest name allowed
def test_write_takes_the_longest_name_the_filesystem_allows(stem: str, transcript: Transcript, tmp_path: Path) -> None:
    # Its temporary, named after it, must not be the one name too long.
    path = formats.write(transcript, "srt", tmp_path / f"{stem}.srt", uri="out")
    assert os.listdir(tmp_path) == [path.name]
    assert path.read_text(encoding="utf-8") == formats.render(transcript, "srt")


# Times on a millisecond grid: both SRT and RTTM are millisecond formats.
segment_lists = st.lists(
    st.builds(
        lambda start, length, text, speaker: (start / 1000, (start + length) / 1000, text, speaker),
        st.integers(0, 36_000_000),
        st.integers(1, 600_000),
        st.text(alphabet="ab æ日 ", max_size=12),
        st.sampled_from(["SPEAKER_00", "SPEAKER_01", "SPEAKER_02"]),
    ),
    min_size=1,
    max_size=20,
)


def _transcript(rows: list[tuple[float, float, str, str]]) -> Transcript:
    segments = [Segment(i, start, end, text, speaker) for i, (start, end, text, speaker) in enumerate(rows)]
    return Transcript(segments, sorted({r[3] for r in rows}), "en", max(r[1] for r in rows))


@settings(deadline=None)
@given(segment_lists)
def test_srt_round_trips_any_segments(rows: list[tuple[float, float, str, str]]) -> None:
    subtitles = srt.parse(formats.render(_transcript(rows), "srt"))
    got = sorted((ms(s.start.total_seconds()), ms(s.end.total_seconds()), s.content) for s in subtitles)
    assert got == sorted((ms(start), ms(end), f"{speaker}: {text}") for start, end, text, speaker in rows)


@settings(deadline=None)
@given(segment_lists)
def test_rttm_round_trips_any_segments(rows: list[tuple[float, float, str, str]]) -> None:
    annotation = load_rttm(io.StringIO(formats.render(_transcript(rows), "rttm", uri="rec")))["rec"]
    got = sorted((ms(seg.start), ms(seg.end), label) for seg, _, label in annotation.itertracks(yield_label=True))
    assert got == sorted((ms(start), ms(end), speaker) for start, end, _, speaker in rows)
