"""`turnscribe eval` and `evaluate`: known DER / JER / cpWER / tcpWER on hand-made RTTM, STM and SegLST files."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from turnscribe.decoders.reference import ReferenceTurn
from turnscribe.evaluation import EvaluationError, evaluate, load_segments
from turnscribe.evaluation.cli import eval_command
from turnscribe.types import Segment, Transcript

# Two speakers, 4 s and 3 s of speech, a 1 s pause between them.
REF_RTTM = """SPEAKER meet 1 0.00 4.00 <NA> <NA> A <NA> <NA>
SPEAKER meet 1 5.00 3.00 <NA> <NA> B <NA> <NA>
"""
REF_STM = """;; a comment line
meet 1 A 0.0 4.0 hello there my friend
meet 1 B 5.0 8.0 good to see you
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def rttm(*turns: tuple[float, float, str], uri: str = "meet") -> str:
    return "".join(f"SPEAKER {uri} 1 {s:.2f} {e - s:.2f} <NA> <NA> {spk} <NA> <NA>\n" for s, e, spk in turns)


def seglst(*segments: tuple[float, float, str, str], uri: str = "meet") -> str:
    rows = [
        {"session_id": uri, "speaker": spk, "start_time": s, "end_time": e, "words": w} for s, e, spk, w in segments
    ]
    return json.dumps(rows)


def test_identical_hypothesis_scores_zero(tmp_path: Path) -> None:
    ref = write(tmp_path, "ref.rttm", REF_RTTM)
    result = evaluate(ref, write(tmp_path, "hyp.rttm", rttm((0, 4, "x"), (5, 8, "y"))))
    assert [(d.collar, d.der, d.jer) for d in result.diarization] == [(0.0, 0.0, 0.0), (0.25, 0.0, 0.0)]
    assert result.ref_speakers == result.hyp_speakers == 2
    # RTTM has no words: the WER metrics are skipped, with a note saying why.
    assert result.word_errors == []
    assert any("no words" in note for note in result.notes)


def test_merged_speakers_give_the_computed_der_and_jer(tmp_path: Path) -> None:
    ref = write(tmp_path, "ref.rttm", REF_RTTM)
    result = evaluate(ref, write(tmp_path, "hyp.rttm", rttm((0, 4, "x"), (5, 8, "x"))))
    plain, collared = result.diarization
    # x maps to A; B's 3 s of the 7 s are confusion.
    assert plain.der == pytest.approx(3 / 7) and plain.confusion == pytest.approx(3.0)
    assert plain.missed == plain.false_alarm == 0.0 and plain.total == pytest.approx(7.0)
    # JER averages over reference speakers: A is 3/7 off (x also covers B's 3 s), B has no partner (1.0).
    assert plain.jer == pytest.approx((3 / 7 + 1) / 2)
    # 0.25 s either side of each of the 4 reference boundaries is not scored: 2 s less speech, 0.5 s less confusion.
    assert collared.total == pytest.approx(6.0) and collared.der == pytest.approx(2.5 / 6.0)


def test_overlapping_speech_is_scored(tmp_path: Path) -> None:
    ref = write(tmp_path, "ref.rttm", rttm((0, 4, "A"), (2, 6, "B")))
    result = evaluate(ref, write(tmp_path, "hyp.rttm", rttm((0, 4, "x"))))
    # B's 4 s are missed, 2 s of them under A: with overlap skipped it would be 2 / 6.
    assert result.der(0.0) == pytest.approx(4 / 8)
    assert result.diarization[0].missed == pytest.approx(4.0)


def test_a_speakers_own_overlapping_segments_are_one_voice(tmp_path: Path) -> None:
    ref = write(tmp_path, "ref.rttm", rttm((0, 4, "A")))
    # x speaks from 0 to 6 in two pieces: 2 s of false alarm, not 4 (2 to 4 is no second voice).
    result = evaluate(ref, write(tmp_path, "hyp.rttm", rttm((0, 4, "x"), (2, 6, "x"))))
    assert result.diarization[0].false_alarm == pytest.approx(2.0) and result.der(0.0) == pytest.approx(2 / 4)
    # The same on the reference side: A speaks for 6 s, all of them found.
    result = evaluate(
        write(tmp_path, "ref2.rttm", rttm((0, 4, "A"), (2, 6, "A"))), write(tmp_path, "h.rttm", rttm((0, 6, "x")))
    )
    assert result.diarization[0].total == pytest.approx(6.0) and result.der(0.0) == 0.0 == result.diarization[0].jer


def test_cpwer_ignores_speaker_names_and_punctuation_by_default(tmp_path: Path) -> None:
    ref = write(tmp_path, "ref.stm", REF_STM)
    hyp = write(tmp_path, "hyp.json", seglst((0, 4, "1", "Hello there, my friend."), (5, 8, "2", "good to see you")))
    result = evaluate(ref, hyp)
    assert result.wer("cpWER") == 0.0 and result.wer("tcpWER") == 0.0
    assert result.der(0.0) == 0.0
    # Without normalisation "Hello", "there," and "friend." are three substitutions of 8 words.
    raw = evaluate(ref, hyp, normalizer=None)
    cp = next(w for w in raw.word_errors if w.metric == "cpWER")
    assert (cp.errors, cp.substitutions, cp.length) == (3, 3, 8)


def test_cpwer_of_one_speaker_for_two(tmp_path: Path) -> None:
    ref = write(tmp_path, "ref.stm", REF_STM)
    hyp = write(tmp_path, "hyp.json", seglst((0, 4, "1", "hello there my friend"), (5, 8, "1", "good to see you")))
    cp = next(w for w in evaluate(ref, hyp).word_errors if w.metric == "cpWER")
    # "1" is A: B's words are inserted there and deleted from B.
    assert (cp.insertions, cp.deletions, cp.error_rate) == (4, 4, 1.0)
    assert (cp.missed_speakers, cp.scored_speakers) == (1, 2)


def test_tcpwer_counts_words_said_at_the_wrong_time(tmp_path: Path) -> None:
    ref = write(tmp_path, "ref.stm", REF_STM)
    late = write(tmp_path, "hyp.json", seglst((0, 4, "1", "hello there my friend"), (25, 28, "2", "good to see you")))
    result = evaluate(ref, late)
    assert result.wer("cpWER") == 0.0
    # 20 s late is far outside the 5 s collar: 4 deletions + 4 insertions.
    assert result.wer("tcpWER") == pytest.approx(1.0)
    assert next(w.collar for w in result.word_errors if w.metric == "tcpWER") == 5.0
    assert evaluate(ref, late, tcp_collar=30.0).wer("tcpWER") == 0.0


def test_words_where_the_reference_has_none_are_all_error(tmp_path: Path) -> None:
    # Speech marked with no transcript: meeteval has no rate for 3 insertions over 0 words, and it was shown as 0 %.
    ref = write(tmp_path, "ref.stm", "meet 1 A 0.0 4.0\nmeet 1 B 5.0 8.0\n")
    cp = next(w for w in evaluate(ref, write(tmp_path, "hyp.stm", REF_STM)).word_errors if w.metric == "cpWER")
    assert (cp.errors, cp.length, cp.error_rate) == (8, 0, 1.0)
    assert evaluate(ref, ref).wer() == 0.0


def test_asking_for_a_collar_or_metric_that_was_not_scored_says_so(tmp_path: Path) -> None:
    ref = write(tmp_path, "ref.stm", REF_STM)
    result = evaluate(ref, ref, collars=(0.5,))
    assert result.der(0.5) == 0.0
    # der() with its default 0.25 ended in a bare StopIteration; wer("cpwer") said None, as if WER had been skipped.
    with pytest.raises(ValueError, match=re.escape("no DER at collar 0.25 s; scored at 0.5 s")):
        result.der()
    with pytest.raises(ValueError, match="unknown WER metric 'cpwer'; choose from cpWER, tcpWER"):
        result.wer("cpwer")


def test_formats_are_detected_from_content(tmp_path: Path) -> None:
    as_rttm = load_segments(write(tmp_path, "ref.txt", REF_RTTM))
    as_stm = load_segments(write(tmp_path, "ref.lst", REF_STM))
    as_seglst = load_segments(write(tmp_path, "ref.out", seglst((0, 4, "A", "hi"))))
    assert [s["speaker"] for s in as_rttm] == ["A", "B"] and "words" not in as_rttm[0]
    assert [s["words"] for s in as_stm] == ["hello there my friend", "good to see you"]
    assert as_seglst[0]["end_time"] == 4.0


def test_a_session_of_zero_length_turns_only_scores_nothing(tmp_path: Path) -> None:
    # Nothing on either side to take the session's end from: max() of nothing ended the command.
    ref = write(tmp_path, "ref.rttm", REF_RTTM + rttm((1, 1, "C"), uri="blank"))
    result = evaluate(ref, write(tmp_path, "hyp.rttm", REF_RTTM))
    assert result.der(0.0) == 0.0 and result.diarization[0].total == pytest.approx(7.0)


def test_turns_shorter_than_the_collars_score_nothing_not_100_percent(tmp_path: Path) -> None:
    # Every turn lies within the 0.25 s collars either side of its boundaries: at that collar nothing is scored.
    # pyannote's JER said 100 % for the file scored against itself; dscore's JER and pyannote's own DER say 0.
    short = write(tmp_path, "short.rttm", rttm((0, 0.3, "A"), (1, 1.4, "B")))
    result = evaluate(short, short)
    assert [(d.collar, d.total, d.der, d.jer) for d in result.diarization] == [
        (0.0, pytest.approx(0.7), 0.0, 0.0),
        (0.25, 0.0, 0.0, 0.0),
    ]
    assert any("collar 0.25 s score no reference speech" in note for note in result.notes)
    # Hypothesis speech where the reference has none left to score is still all error.
    result = evaluate(short, write(tmp_path, "hyp.rttm", rttm((0, 0.3, "x"), (1, 1.4, "y"), (3, 4, "x"))))
    assert (result.der(0.25), result.diarization[1].jer) == (1.0, 1.0)


# sclite's STM as TED-LIUM and NIST write it: labels before the words, gaps that nobody speaks in, a span out of bounds.
SCLITE_STM = """;; CATEGORY "0" "" ""
;; LABEL "O" "Overall" "Overall"
meet 1 A 0.0 4.0 <o,f0,female> hello there my friend
meet 1 inter_segment_gap 4.0 5.0 <o,,unknown>
meet 1 B 5.0 8.0 <O,F0,male> good to see you
meet 1 inter_segment_gap 8.0 10.0 <o,,unknown> IGNORE_TIME_SEGMENT_IN_SCORING
"""


def test_sclite_stm_labels_gaps_and_ignored_spans(tmp_path: Path) -> None:
    ref = write(tmp_path, "ref.stm", SCLITE_STM)
    said = [(0, 4, "1", "hello there my friend"), (5, 8, "2", "good to see you")]
    applause = (8.5, 9.5, "3", "clapping heard as words")  # in the ignored span: not scored, not even as speech
    result = evaluate(ref, write(tmp_path, "hyp.json", seglst(*said, applause)))
    assert result.ref_speakers == 2 and result.der(0.0) == result.der(0.25) == 0.0
    assert [(w.error_rate, w.length) for w in result.word_errors] == [(0.0, 8), (0.0, 8)]
    # The gap is a pause like any other: speech the hypothesis puts there is a false alarm and an insertion.
    result = evaluate(ref, write(tmp_path, "hyp.json", seglst(*said, (4.2, 4.8, "1", "um"))))
    assert result.diarization[0].false_alarm == pytest.approx(0.6) and result.der(0.0) == pytest.approx(0.6 / 7)
    assert result.wer("cpWER") == pytest.approx(1 / 8)
    # A first word in angle brackets is a word, not a label.
    assert load_segments(write(tmp_path, "unk.stm", "meet 1 A 0 4 <unk> hello\n"))[0]["words"] == "<unk> hello"


def test_a_recording_the_reference_puts_all_out_of_bounds_is_not_one_it_lacks(tmp_path: Path) -> None:
    ref = write(tmp_path, "ref.stm", REF_STM + "other 1 excluded_region 0 10 IGNORE_TIME_SEGMENT_IN_SCORING\n")
    said = "meet 1 A 0.0 4.0 hello there my friend\nmeet 1 B 5.0 8.0 good to see you\n"
    # It was "hypothesis has sessions the reference lacks: other".
    result = evaluate(ref, write(tmp_path, "hyp.stm", said + "other 1 x 2 3 la\n"))
    assert result.sessions == ["meet", "other"] and result.der(0.0) == 0.0 and result.wer() == 0.0
    # Speech outside the ignored span is scored there as anywhere: a false alarm and an insertion.
    result = evaluate(ref, write(tmp_path, "late.stm", said + "other 1 x 12 13 la\n"))
    assert result.diarization[0].false_alarm == pytest.approx(1.0) and result.wer() == pytest.approx(1 / 8)
    # A lone hypothesis recording named as the out-of-bounds one is not renamed to the scored one.
    assert evaluate(ref, write(tmp_path, "wrong.stm", "other 1 x 2 3 la\n")).der(0.0) == 1.0


def test_a_uem_limits_what_is_scored(tmp_path: Path) -> None:
    ref = write(tmp_path, "ref.stm", REF_STM)
    said = [(0, 4, "1", "hello there my friend"), (5, 8, "2", "good to see you")]
    music = (9, 12, "3", "la la la")  # after the annotated part of the recording
    hyp = write(tmp_path, "hyp.json", seglst(*said, music))
    assert evaluate(ref, hyp).der(0.0) == pytest.approx(3 / 7) and evaluate(ref, hyp).wer() == pytest.approx(3 / 8)
    result = evaluate(ref, hyp, uem=write(tmp_path, "all.uem", ";; scored\nmeet 1 0.0 8.5\n"))
    assert result.der(0.0) == 0.0 and result.wer() == 0.0
    # Two spans, B's turn cut at 6 s: 5 s of speech scored; B's words go by their segment's middle (6.5 s), out.
    result = evaluate(ref, hyp, uem=write(tmp_path, "two.uem", "meet 1 0 4\nmeet 1 5.0 6.0\n"))
    assert result.diarization[0].total == pytest.approx(5.0) and result.der(0.0) == 0.0
    assert [(w.length, w.errors) for w in result.word_errors] == [(4, 0), (4, 0)]


def test_a_recording_with_words_on_one_side_only_of_the_scored_spans(tmp_path: Path) -> None:
    ref = write(tmp_path, "ref.stm", "meet 1 A 0 4 hello there\nother 1 C 0 2 one two\n")
    uem = write(tmp_path, "ref.uem", "meet 1 0 10\nother 1 5 10\n")
    # The UEM leaves no reference words in "other", but the hypothesis speaks there: meeteval refused a session the
    # reference lacks and the command ended in a RuntimeError traceback.
    hyp = write(tmp_path, "hyp.stm", "meet 1 A 0 4 hello there\nother 1 x 6 8 la la\n")
    cp = next(w for w in evaluate(ref, hyp, uem=uem).word_errors if w.metric == "cpWER")
    assert (cp.insertions, cp.length, cp.error_rate) == (2, 2, 1.0)
    # x is an extra speaker, and the padding that stands in for the missing side is no speaker at all.
    assert (cp.scored_speakers, cp.missed_speakers, cp.false_alarm_speakers) == (1, 0, 1)
    # No hypothesis for "other": its one speaker is missed (the padding's empty speaker had taken its place).
    cp = next(w for w in evaluate(ref, write(tmp_path, "meet.stm", "meet 1 A 0 4 hello there\n")).word_errors)
    assert (cp.deletions, cp.scored_speakers, cp.missed_speakers, cp.false_alarm_speakers) == (2, 2, 1, 0)
    # No words in the scored spans on either side: meeteval refused the empty reference.
    result = evaluate(ref, ref, uem=write(tmp_path, "late.uem", "meet 1 5 10\nother 1 5 10\n"))
    assert result.word_errors == [] and "cpWER and tcpWER skipped: no words lie in the scored spans" in result.notes


@pytest.mark.parametrize(
    ("uem", "message"),
    [
        ("meet 1 0.0\n", "two.uem:2: expected '<recording> <channel> <start> <end>', got 'meet 1 0.0'"),
        ("other 1 0 9\n", "the UEM has no spans for session(s) meet"),
        (";; nothing\n", "no spans to score"),
        ("meet 1 8 0\n", "two.uem:2: the span from 8 to 0 s is not a span of time"),
        ("meet 1 0 nan\n", "two.uem:2: the span from 0 to nan s is not a span of time"),
    ],
)
def test_a_bad_uem_is_a_clear_error(tmp_path: Path, uem: str, message: str) -> None:
    ref = write(tmp_path, "ref.stm", REF_STM)
    with pytest.raises(EvaluationError, match=re.escape(message)):
        evaluate(ref, ref, uem=write(tmp_path, "two.uem", ";; header\n" + uem))


@pytest.mark.parametrize(
    ("name", "text"), [("ref.rttm", REF_RTTM), ("ref.stm", REF_STM), ("ref.json", seglst((0, 4, "A", "hi")))]
)
def test_files_from_windows_tools_read_the_same(tmp_path: Path, name: str, text: str) -> None:
    # A byte-order mark and CRLF line ends: the mark hid the first RTTM turn and made the first STM line a session.
    windows = tmp_path / "windows" / name
    windows.parent.mkdir()
    windows.write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())
    assert list(load_segments(windows)) == list(load_segments(write(tmp_path, name, text)))


def test_in_memory_inputs_and_session_names(tmp_path: Path) -> None:
    ref = write(tmp_path, "ref.stm", REF_STM)
    transcript = Transcript(
        [Segment(0, 0.0, 4.0, "hello there my friend", "SPEAKER_00"), Segment(1, 5.0, 8.0, "good to see you", "S1")],
        ["SPEAKER_00", "S1"],
        "en",
        8.0,
    )
    result = evaluate(ref, transcript)
    assert result.der(0.0) == 0.0 and result.wer() == 0.0
    # The transcript's session ("audio") is not the reference's ("meet"): one each, so they are lined up.
    assert result.sessions == ["meet"] and any("'audio'" in note for note in result.notes)
    turns = [ReferenceTurn(0.0, 4.0, "A", "hello there my friend"), ReferenceTurn(5.0, 8.0, "B", "good to see you")]
    assert evaluate(turns, transcript).wer() == 0.0


def test_a_session_missing_from_the_hypothesis_is_scored_as_silence(tmp_path: Path) -> None:
    ref = write(tmp_path, "ref.stm", REF_STM + "other 1 C 0.0 2.0 one two\n")
    result = evaluate(ref, write(tmp_path, "hyp.stm", REF_STM))
    assert result.sessions == ["meet", "other"]
    assert result.der(0.0) == pytest.approx(2 / 9)
    cp = next(w for w in result.word_errors if w.metric == "cpWER")
    assert (cp.deletions, cp.length) == (2, 10)
    with pytest.raises(EvaluationError, match="sessions the reference lacks"):
        evaluate(write(tmp_path, "one.stm", REF_STM), ref)


def test_seglst_ids_written_as_json_numbers_match_other_files(tmp_path: Path) -> None:
    rows = [
        {"session_id": 1, "speaker": 0, "start_time": 0, "end_time": 4, "words": "a b"},
        {"session_id": 2, "speaker": 1, "start_time": 0, "end_time": 3, "words": "c d"},
    ]
    numbers = write(tmp_path, "hyp.json", json.dumps(rows))
    ref = write(tmp_path, "ref.rttm", rttm((0, 4, "A"), uri="1") + rttm((0, 3, "B"), uri="2"))
    # Session 1 of the JSON is recording "1" of the RTTM and of the UEM: it was "sessions the reference lacks: 1, 2".
    result = evaluate(ref, numbers, uem=write(tmp_path, "all.uem", "1 1 0 4\n2 1 0 3\n"))
    assert result.sessions == ["1", "2"] and result.der(0.0) == 0.0
    # Numbers mixed with names in one file: sorting the sessions failed with a TypeError.
    mixed = write(tmp_path, "mixed.json", json.dumps([rows[0], {**rows[1], "session_id": "b"}]))
    assert evaluate(mixed, mixed).sessions == ["1", "b"]


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("ref.xyz", "what is this\n", "unknown format"),
        ("ref.rttm", "SPEAKER meet 1 zero 4 <NA> <NA> A <NA> <NA>\n", "not a valid RTTM"),
        ("ref.json", '{"not": "a list"}', "JSON list"),
        ("ref.json", '[{"speaker": "A"}]', "lacks session_id"),
        # The normalizer ended in an AttributeError traceback on words that are not text.
        ("ref.json", seglst((0, 4, "A", None)), "segment 0: words must be a string, not null"),
        ("ref.json", seglst((0, 4, "A", ["a", "b"])), r'not \["a", "b"\]'),
        ("ref.rttm", "", "no speech"),
        # float() reads these, and pyannote dropped the turn that ends before it starts or made every score NaN.
        ("ref.rttm", rttm((0, 4, "A")) + "SPEAKER meet 1 5 -3 <NA> <NA> B <NA> <NA>\n", "from 5 to 2 s: not a span"),
        ("ref.rttm", "SPEAKER meet 1 nan 4 <NA> <NA> A <NA> <NA>\n", r"\(A in meet\) runs from nan to nan s"),
        ("ref.json", seglst((0, float("inf"), "A", "hi")), "from 0 to inf s: not a span of time"),
    ],
)
def test_bad_inputs_raise_clear_errors(tmp_path: Path, name: str, text: str, message: str) -> None:
    hyp = write(tmp_path, "hyp.rttm", REF_RTTM)
    with pytest.raises(EvaluationError, match=message):
        evaluate(write(tmp_path, name, text), hyp)


# --- the command ------------------------------------------------------------------------------------------------


@pytest.fixture
def cli() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:  # a group, so that `eval` is a subcommand as in turnscribe's own app
        pass

    app.command("eval")(eval_command)
    return app


def test_eval_prints_a_table(tmp_path: Path, cli: typer.Typer) -> None:
    ref, hyp = write(tmp_path, "ref.stm", REF_STM), write(tmp_path, "hyp.stm", REF_STM)
    result = CliRunner().invoke(cli, ["eval", "--ref", str(ref), "--hyp", str(hyp)])
    assert result.exit_code == 0, result.output
    for metric in ("DER", "JER", "cpWER", "tcpWER"):
        assert metric in result.output
    assert "0.00%" in result.output


def test_eval_json_output_shape(tmp_path: Path, cli: typer.Typer) -> None:
    ref = write(tmp_path, "ref.stm", REF_STM)
    hyp = write(tmp_path, "hyp.json", seglst((0, 4, "1", "hello there my friend"), (5, 8, "1", "good to see you")))
    out = tmp_path / "scores.json"
    result = CliRunner().invoke(
        cli, ["eval", "--ref", str(ref), "--hyp", str(hyp), "--format", "json", "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert json.loads(result.stdout) == data
    assert set(data) == {
        "sessions",
        "ref_speakers",
        "hyp_speakers",
        "diarization",
        "word_errors",
        "normalizer",
        "notes",
    }
    assert [d["collar"] for d in data["diarization"]] == [0.0, 0.25]
    assert set(data["diarization"][0]) == {"collar", "der", "jer", "missed", "false_alarm", "confusion", "total"}
    assert [(w["metric"], w["collar"]) for w in data["word_errors"]] == [("cpWER", None), ("tcpWER", 5.0)]
    assert data["word_errors"][0]["error_rate"] == 1.0
    assert data["diarization"][0]["der"] == pytest.approx(3 / 7)


def test_eval_rttm_notes_the_skipped_wer(tmp_path: Path, cli: typer.Typer) -> None:
    ref, hyp = write(tmp_path, "ref.rttm", REF_RTTM), write(tmp_path, "hyp.stm", REF_STM)
    result = CliRunner().invoke(cli, ["eval", "--ref", str(ref), "--hyp", str(hyp)])
    assert result.exit_code == 0 and "skipped" in result.output and "cpWER" in result.output


@pytest.mark.parametrize(
    ("ref_name", "ref_text", "extra", "message"),
    [
        ("missing.rttm", None, [], "no such file"),
        ("ref.abc", "nothing to see\n", [], "unknown format"),
        ("ref.rttm", REF_RTTM, ["--format", "xml"], "table, json"),
        ("ref.stm", REF_STM, ["--normalizer", "shout"], "shout"),
        ("ref.json", '{"segments": [], "speakers": []}', [], "not SegLST: score the .seglst.json"),
        ("ref.stm", REF_STM, ["--json", "/no/such/folder/scores.json"], "/no/such/folder/scores.json"),
        ("ref.stm", REF_STM, ["--uem", "/no/such/folder/ref.uem"], "/no/such/folder/ref.uem: no such file"),
    ],
)
def test_eval_bad_input_exits_2_without_a_traceback(
    tmp_path: Path, cli: typer.Typer, ref_name: str, ref_text: str | None, extra: list[str], message: str
) -> None:
    ref = tmp_path / ref_name
    if ref_text is not None:
        ref.write_text(ref_text)
    hyp = write(tmp_path, "hyp.stm", REF_STM)
    result = CliRunner().invoke(cli, ["eval", "--ref", str(ref), "--hyp", str(hyp), *extra])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)


def test_eval_chime_normalizer_without_chime_utils_is_a_clear_error(
    tmp_path: Path, cli: typer.Typer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # meeteval imports chime-utils (not on PyPI) only when the normalizer is built: the command ended in a traceback.
    monkeypatch.setitem(sys.modules, "chime_utils.text_norm", None)
    ref = write(tmp_path, "ref.stm", REF_STM)
    result = CliRunner().invoke(cli, ["eval", "--ref", str(ref), "--hyp", str(ref), "--normalizer", "chime8"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    source = "git+https://github.com/chimechallenge/chime-utils"
    assert f"the chime8 normalizer needs chime-utils (pip install {source})" in result.output
