"""Data preparation on tiny corpora in AMI's and LibriSpeech's on-disk layouts, and on a user corpus (SegLST)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from train_corpora import RATE, Turn, tone_audio, write_ami, write_librispeech
from typer.testing import CliRunner

pytest.importorskip("lhotse")
from lhotse import CutSet  # noqa: E402

from turnscribe.cli import app  # noqa: E402
from turnscribe.parse import parse_window  # noqa: E402
from turnscribe.train import data  # noqa: E402

T = Turn
# ES2002a (train): five speakers in the first 28 s window (left out), then a window of three speakers in which
# E's turn is cut by the window's start and A's runs over the middle. ES2003a (dev), EN2002a (test).
AMI = {
    "ES2002a": (
        40.0,
        [
            T("A", 1.0, 4.0, "good morning everyone"),
            T("B", 5.0, 8.0, "thanks for having me"),
            T("C", 9.0, 11.0, "hello there"),
            T("D", 12.0, 13.0, "right"),
            T("E", 12.5, 16.5, "yes indeed that is true"),
            T("A", 20.0, 30.0, "this turn runs over the edge of the first window"),
            T("B", 34.0, 39.0, "see you next week"),
        ],
    ),
    "ES2003a": (20.0, [T("A", 1.0, 5.0, "hello dev set"), T("B", 6.0, 9.0, "it works")]),
    "EN2002a": (20.0, [T("A", 1.0, 5.0, "hello test set")]),
}


def read_back(folder: Path) -> list:
    return list(CutSet.from_shar(in_dir=folder))


def test_ami_windows_targets_and_shards(tmp_path: Path) -> None:
    write_ami(tmp_path / "ami", AMI)
    splits = data.ami_cuts(tmp_path / "ami")
    assert {c.id.split("-")[0] for c in splits["train"]} == {"ES2002a"}

    summaries = data.prepare_windows(
        tmp_path / "out",
        {"train": splits["train"], "dev": splits["dev"]},
        data.WindowConfig(),
        language="en",
        source="t",
    )

    # 40 s → windows at 0 s (five speakers: left out) and 14 s (26 s long).
    assert summaries["train"].windows == 1 and summaries["train"].dropped == {"too_many_speakers": 1}
    (window,) = read_back(tmp_path / "out" / "train")
    assert window.duration == 26.0 and window.load_audio().shape == (1, 26 * RATE)
    # E's words are spread evenly over 12.5-16.5 s (0.8 s each): "yes" (12.5-13.3, mid 12.9) lies before the window
    # start (14 s) and is cut; "indeed" (13.3-14.1, mid 13.7) too; "that" (14.1-14.9) is the first word inside.
    assert window.custom["target"] == (
        "<|spltoken0|><|t:0.1|> THAT IS TRUE <|t:2.5|>"
        "<|spltoken1|><|t:6.0|> THIS TURN RUNS OVER THE EDGE OF THE FIRST WINDOW <|t:16.0|>"
        "<|spltoken2|><|t:20.0|> SEE YOU NEXT WEEK <|t:25.0|><|endoftext|>"
    )
    assert window.custom["language"] == "en" and window.custom["speakers"] == 3
    (dev,) = read_back(tmp_path / "out" / "dev")
    assert dev.custom["target"].startswith("<|spltoken0|><|t:1.0|> HELLO DEV SET <|t:5.0|><|spltoken1|>")
    assert sorted(p.name for p in (tmp_path / "out" / "train").iterdir()) == [
        "cuts.000000.jsonl.gz",
        "recording.000000.tar",
    ]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["splits"]["train"]["windows"] == 1 and summary["settings"]["window_s"] == 28.0
    assert data.count_windows(tmp_path / "out" / "train") == 1


def test_ami_needs_its_layout(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(data.DataPreparationError, match="ami_public_manual"):
        data.ami_cuts(tmp_path / "empty")


def _librispeech(root: Path) -> Path:
    utterances = {
        str(1000 + s): [(1.0 + 0.4 * u + 0.2 * s, f"UTTERANCE {u} OF SPEAKER {s}") for u in range(4)] for s in range(6)
    }
    return write_librispeech(root, "train-clean-5", utterances)


def test_librispeech_mixtures(tmp_path: Path) -> None:
    utterances = data.librispeech_cuts(_librispeech(tmp_path / "ls"))
    assert len(utterances) == 24
    config = data.MixtureConfig(count=40, max_duration_s=10.0, overlap_probability=0.5, seed=3)

    summaries = data.prepare_mixtures(
        tmp_path / "mix", utterances, config, dev_count=5, language="en", source="t", shard_size=16
    )

    assert summaries["train"].windows == 40 and summaries["dev"].windows == 5
    assert len(list((tmp_path / "mix" / "train").glob("cuts.*.jsonl.gz"))) == 3  # 16 + 16 + 8
    cuts = read_back(tmp_path / "mix" / "train")
    counts = {k: 0 for k in (1, 2, 3, 4)}
    overlaps = 0
    for cut in cuts:
        speakers = {s.speaker for s in cut.supervisions}
        segments = parse_window(cut.custom["target"], cut.duration).segments
        # Slots local to the window in order of first appearance; one per speaker.
        first_seen = list(dict.fromkeys(s.slot for s in segments))
        assert first_seen == list(range(len(speakers))) == list(range(cut.custom["speakers"]))
        counts[len(speakers)] += 1
        assert cut.duration <= 10.0 and cut.load_audio().shape[1] == cut.num_samples
        for seg, sup in zip(segments, sorted(cut.supervisions, key=lambda s: s.start)):
            assert seg.start == round(sup.start, 1) and seg.end == round(sup.end, 1)
            assert seg.text == sup.text
        overlaps += any(b.start < a.end for a, b in zip(segments, segments[1:]))
        # A speaker's turns never overlap each other.
        for speaker in speakers:
            own = sorted((s for s in cut.supervisions if s.speaker == speaker), key=lambda s: s.start)
            assert all(b.start >= a.end for a, b in zip(own, own[1:]))
    assert all(counts[k] > 0 for k in counts), counts  # K = 1…4 all drawn (weights 0.2/0.3/0.3/0.2)
    assert overlaps > 0
    # The same seed gives the same mixtures.
    again = data.prepare_mixtures(tmp_path / "again", utterances, config, dev_count=0, language="en", source="t")
    assert again["train"].windows == 40
    assert [c.custom["target"] for c in read_back(tmp_path / "again" / "train")] == [c.custom["target"] for c in cuts]


def test_user_corpus_from_seglst_via_cli(tmp_path: Path) -> None:
    sessions = {
        "call1": [
            ("alice", 1.0, 6.0, "Hello, how are you?"),
            ("bob", 7.0, 12.0, "Fine, thanks."),
            ("alice", 25.0, 33.0, "This turn crosses the window edge."),
        ],
        "call2": [("carol", 2.0, 8.0, "Testing one two three."), ("dave", 9.0, 12.0, "Loud and clear.")],
    }
    audio, segments = [], []
    for i, (session, turns) in enumerate(sessions.items()):
        path = tmp_path / f"{session}.wav"
        sf.write(path, tone_audio(40.0 if session == "call1" else 15.0, i), RATE)
        audio += ["--audio", str(path)]
        segments += [
            {"session_id": session, "speaker": s, "start_time": a, "end_time": b, "words": w} for s, a, b, w in turns
        ]
    (tmp_path / "ref.seglst.json").write_text(json.dumps(segments))

    result = CliRunner().invoke(
        app, ["prepare-data", "corpus", str(tmp_path / "out"), *audio, "--ref", str(tmp_path / "ref.seglst.json")]
    )

    assert result.exit_code == 0, result.output
    # call1 (held out for dev) → windows at 0 and 14 s; the first cuts alice's second turn at 28 s (no word
    # times: which words fall inside cannot be told), the second (14-40 s) holds it whole.
    (dev,) = read_back(tmp_path / "out" / "dev")
    assert dev.custom["target"] == "<|spltoken0|><|t:11.0|> This turn crosses the window edge. <|t:19.0|><|endoftext|>"
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["splits"]["dev"]["dropped"] == {"turn_cut_at_edge": 1}
    (train,) = read_back(tmp_path / "out" / "train")
    assert train.custom["target"] == (
        "<|spltoken0|><|t:2.0|> Testing one two three. <|t:8.0|><|spltoken1|><|t:9.0|> Loud and clear. <|t:12.0|>"
        "<|endoftext|>"
    )
    assert np.abs(train.load_audio()).max() > 0


def test_rttm_alone_is_refused(tmp_path: Path) -> None:
    sf.write(tmp_path / "a.wav", tone_audio(5.0, 0), RATE)
    (tmp_path / "a.rttm").write_text("SPEAKER a 1 0.50 2.00 <NA> <NA> spk1 <NA> <NA>\n")
    with pytest.raises(data.DataPreparationError, match="no words"):
        data.corpus_cuts([tmp_path / "a.wav"], [tmp_path / "a.rttm"])
