"""Synthetic meetings: deterministic, and their RTTM / SegLST / turns agree with each other and with the audio."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from pyannote.core import Annotation
from pyannote.core import Segment as Span

from turnscribe import Pipeline, load_audio
from turnscribe.decoders.reference import ReferenceDecoder
from turnscribe.evaluation import evaluate, load_segments
from turnscribe.evaluation.oracle import OracleEmbedder, tag_speakers
from turnscribe.evaluation.synthetic import (
    BACKCHANNELS,
    MeetingConfig,
    SyntheticMeeting,
    generate_meeting,
    have_espeak,
    write_meeting,
)
from turnscribe.speakers import ClusteringLinker
from turnscribe.types import SAMPLE_RATE

pytestmark = pytest.mark.skipif(not have_espeak(), reason="espeak-ng is not on PATH (apt-get install espeak-ng)")

CONFIG = MeetingConfig(speakers=4, duration_s=150, overlap_share=0.15, seed=3)


@pytest.fixture(scope="module")
def meeting() -> SyntheticMeeting:
    return generate_meeting(CONFIG)


def annotation(meeting: SyntheticMeeting) -> Annotation:
    ann = Annotation()
    for i, t in enumerate(meeting.turns):
        ann[Span(t.start, t.end), i] = t.speaker
    return ann


def overlap_share(meeting: SyntheticMeeting) -> float:
    ann = annotation(meeting)
    return ann.get_overlap().duration() / ann.get_timeline().support().duration()


def test_same_seed_same_meeting(meeting: SyntheticMeeting) -> None:
    again = generate_meeting(CONFIG)
    assert again.turns == meeting.turns and np.array_equal(again.audio, meeting.audio)
    other = generate_meeting(MeetingConfig(speakers=4, duration_s=150, overlap_share=0.15, seed=4))
    assert other.turns != meeting.turns


def test_turns_are_well_formed(meeting: SyntheticMeeting) -> None:
    turns = meeting.turns
    assert meeting.duration == CONFIG.duration_s and len(meeting.audio) == 150 * SAMPLE_RATE
    assert [t.start for t in turns] == sorted(t.start for t in turns)
    assert {t.speaker for t in turns} == {"spk1", "spk2", "spk3", "spk4"}
    assert len(set(meeting.voices.values())) == 4
    assert all(0 < t.start < t.end < meeting.duration and t.text for t in turns)
    # On the model's 0.1 s grid.
    assert all(abs(x * 10 - round(x * 10)) < 1e-6 for t in turns for x in (t.start, t.end))
    # Never three voices at once.
    ann = annotation(meeting)
    for region in ann.get_overlap():
        assert len(ann.crop(region).labels()) == 2
    # Back-channels sit inside someone else's turn.
    backchannels = [t for t in turns if t.text in BACKCHANNELS]
    assert backchannels
    for b in backchannels:
        assert any(o.speaker != b.speaker and o.start <= b.start and b.end <= o.end for o in turns)


@pytest.mark.parametrize("share", [0.0, 0.1, 0.25])
def test_overlap_share_is_what_was_asked(share: float) -> None:
    meeting = generate_meeting(MeetingConfig(speakers=3, duration_s=180, overlap_share=share, seed=1))
    assert overlap_share(meeting) == pytest.approx(share, abs=0.02)
    if share == 0.0:
        assert not any(t.text in BACKCHANNELS for t in meeting.turns)


def test_speech_where_turns_are_and_silence_in_pauses(meeting: SyntheticMeeting) -> None:
    audio = meeting.audio
    for t in meeting.turns:
        part = audio[round(t.start * SAMPLE_RATE) : round(t.end * SAMPLE_RATE)]
        assert np.sqrt(np.mean(part**2)) > 0.01, t
    pauses = annotation(meeting).get_timeline().support().gaps(Span(0, meeting.duration))
    assert len(pauses) >= 4
    for pause in pauses:
        assert np.abs(audio[round(pause.start * SAMPLE_RATE) : round(pause.end * SAMPLE_RATE)]).max(initial=0) < 1e-3


def test_noise_at_the_asked_snr(meeting: SyntheticMeeting) -> None:
    noisy = generate_meeting(MeetingConfig(**{**CONFIG.__dict__, "snr_db": 10.0}))
    assert noisy.turns == meeting.turns
    noise = noisy.audio - meeting.audio
    speaking = np.zeros(len(noise), bool)
    for t in meeting.turns:
        speaking[round(t.start * SAMPLE_RATE) : round(t.end * SAMPLE_RATE)] = True
    snr = 10 * np.log10(np.mean(meeting.audio[speaking] ** 2) / np.mean(noise**2))
    assert snr == pytest.approx(10.0, abs=0.1)


def test_written_files_agree_with_the_turns(meeting: SyntheticMeeting, tmp_path: Path) -> None:
    files = write_meeting(meeting, tmp_path, stem="m1", audio_format="flac")
    audio = load_audio(files.audio)
    assert len(audio) == len(meeting.audio) and np.abs(audio - meeting.audio).max() < 1e-4
    for path, has_words in ((files.rttm, False), (files.seglst, True)):
        segments = sorted(load_segments(path), key=lambda s: (s["start_time"], s["speaker"]))
        turns = sorted(meeting.turns, key=lambda t: (t.start, t.speaker))
        assert [(s["session_id"], s["speaker"]) for s in segments] == [("m1", t.speaker) for t in turns]
        assert [s["start_time"] for s in segments] == pytest.approx([t.start for t in turns], abs=1e-3)
        assert [s["end_time"] for s in segments] == pytest.approx([t.end for t in turns], abs=1e-3)
        assert [s.get("words") for s in segments] == [t.text if has_words else None for t in turns]
    assert write_meeting(meeting, tmp_path, stem="m2", audio_format="wav").audio.suffix == ".wav"


def test_the_truth_through_the_pipeline_with_the_oracle_scores_zero(meeting: SyntheticMeeting) -> None:
    audio, names = tag_speakers(meeting.audio, meeting.turns)
    assert sorted(names) == ["spk1", "spk2", "spk3", "spk4"]
    assert np.abs(audio - meeting.audio).max() < 1e-5
    pipeline = Pipeline(ReferenceDecoder(meeting.turns), ClusteringLinker(OracleEmbedder()))
    transcript = pipeline.run(audio, sampling_rate=SAMPLE_RATE)
    result = evaluate(meeting.turns, transcript)
    assert result.der(0.0) == 0.0 and result.wer("cpWER") == 0.0 and result.hyp_speakers == 4


def test_oracle_reads_the_owner_of_slices_copies_and_pooled_clips(meeting: SyntheticMeeting) -> None:
    audio, names = tag_speakers(meeting.audio, meeting.turns)
    first, second = (next(t for t in meeting.turns if t.speaker == s) for s in ("spk1", "spk2"))

    def clip(turn):  # the turn's own stretch, without any overlap at its edges
        return audio[round((turn.start + turn.end) / 2 * SAMPLE_RATE) : round(turn.end * SAMPLE_RATE) - 16000]

    pooled = np.concatenate([clip(first), clip(first).copy(), clip(second)[:100]])
    rows = OracleEmbedder().embed([clip(first), clip(second).copy(), pooled, np.zeros(800, np.float32)])
    expected = [names.index("spk1") + 1, names.index("spk2") + 1, names.index("spk1") + 1, 0]
    assert rows.argmax(axis=1).tolist() == expected
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0)


@pytest.mark.slow
def test_thirty_minutes_with_eight_speakers_generate_quickly() -> None:
    t0 = time.perf_counter()
    meeting = generate_meeting(MeetingConfig(speakers=8, duration_s=1800, overlap_share=0.2, snr_db=5, seed=9))
    assert time.perf_counter() - t0 < 30
    assert len({t.speaker for t in meeting.turns}) == 8
    assert overlap_share(meeting) == pytest.approx(0.2, abs=0.02)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"speakers": 1},
        {"speakers": 9},
        {"duration_s": 30},
        {"overlap_share": 0.5},
        {"pause_s": (2.0, 1.0)},
        # snr_db was not checked: NaN gave an all-NaN meeting, -inf one of nothing but clipped noise.
        {"snr_db": float("nan")},
        {"snr_db": float("-inf")},
        {"snr_db": float("inf")},
    ],
)
def test_bad_configs(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        MeetingConfig(**kwargs)
