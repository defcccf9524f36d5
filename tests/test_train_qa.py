"""Training recipe edge cases: settings as users write them, wrong paths and choices, window lengths at the model's
limit, mixture overlap, stereo calls, dotted file names, runs sharing an output folder, what an epoch is, and a
warm-up longer than the run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from tiny_model import build_checkpoint
from train_corpora import RATE, tone_audio, write_librispeech
from typer.testing import CliRunner

pytest.importorskip("lhotse")
pytest.importorskip("accelerate")

from lhotse import CutSet  # noqa: E402

from turnscribe.cli import app  # noqa: E402
from turnscribe.train import data  # noqa: E402
from turnscribe.train.loop import (  # noqa: E402
    CHECKPOINTS,
    TrainConfig,
    TrainingError,
    latest_checkpoint,
    load_config,
    train,
    window_samples,
)
from turnscribe.train.vocab import DIARIZE_TOKENS  # noqa: E402

BASE = ["model=m", "train_data=data/train", "output_dir=out"]


def test_numbers_are_read_as_numbers_whatever_yaml_makes_of_them(tmp_path: Path) -> None:
    # YAML 1.1 reads 1e-4 (no dot) as the string '1e-4': the README's own `--set peak_lr=1e-4` used to reach the
    # optimizer as text and fail there with a TypeError.
    file = tmp_path / "run.yaml"
    file.write_text("model: base\ntrain_data: data/train\noutput_dir: out\npeak_lr: 1e-4\nmax_steps: 2e1\n")
    config = load_config(file, ["weight_decay=1e-2", "epochs=3", "eval_data="])
    assert (config.peak_lr, config.weight_decay, config.epochs) == (1e-4, 1e-2, 3.0)
    assert config.max_steps == 20 and isinstance(config.max_steps, int)
    assert config.train_data == ["data/train"] and config.eval_data == []


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("epochs=abc", "epochs: expected a number, got 'abc'"),
        ("effective_batch=2.5", "effective_batch: expected a whole number"),
        ("gradient_checkpointing=maybe", "gradient_checkpointing: expected true or false"),
        ("precision=fp16", "precision: expected 'bf16' or 'fp32'"),
        ("train_data=[1, 2]", "train_data: expected a list of folders"),
        ("micro_batch=0", "must be positive"),
    ],
)
def test_a_setting_of_the_wrong_type_is_named(override: str, message: str) -> None:
    with pytest.raises(TrainingError, match=re.escape(message)):
        load_config(None, [*BASE, override])


def test_an_unreadable_config_file_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("model: x\n- not a mapping\n")
    for file in (tmp_path / "missing.yaml", tmp_path / "bad.yaml"):
        result = CliRunner().invoke(app, ["train", str(file)])
        assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
        assert "cannot read the config" in result.output


def _utterances(root: Path) -> Path:
    items = {str(1000 + s): [(0.6 + 0.7 * u + 0.1 * s, f"UTTERANCE {u} OF {s}") for u in range(6)] for s in range(4)}
    return write_librispeech(root, "train-clean-5", items)


def test_wrong_corpus_paths_are_named(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    sf.write(tmp_path / "a.wav", tone_audio(2.0, 0), RATE)
    (tmp_path / "a.seglst.json").write_text(
        json.dumps([{"session_id": "a", "speaker": "x", "start_time": 0.1, "end_time": 1.0, "words": "hi"}])
    )
    out = str(tmp_path / "out")
    cases = [
        (["mixtures", out, "--librispeech", str(tmp_path / "nowhere")], "'--librispeech':dir'/nowhere'doesnotexist"),
        (["mixtures", out, "--librispeech", str(tmp_path / "empty")], "LibriSpeechrecipefailedon/empty"),
        (["mixtures", out, "--cuts", str(tmp_path / "cuts.jsonl.gz")], "'--cuts':file'/cuts.jsonl.gz'doesnotexist"),
        (["corpus", out, "--audio", str(tmp_path / "b.wav"), "--ref", str(tmp_path / "a.seglst.json")], "'/b.wav'"),
        (["ami", str(tmp_path / "ami"), out], "'corpus':dir'/ami'doesnotexist"),
    ]
    for args, message in cases:
        result = CliRunner().invoke(app, ["prepare-data", *args])
        assert result.exit_code == 2 and isinstance(result.exception, SystemExit), (args, result.output)
        # The message without the temporary folder and rich's box and line breaks.
        text = re.sub(r"[\s│╭╮╰╯─]", "", result.output).replace(re.sub(r"\s", "", str(tmp_path)), "")
        assert message in text, (args, result.output)


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("qa")
    config = data.MixtureConfig(count=4, max_duration_s=6.0, seed=0)
    data.prepare_mixtures(
        root / "mix", data.librispeech_cuts(_utterances(root / "ls")), config, dev_count=0, language="en", source="t"
    )
    return root / "mix" / "train"


def test_a_wrong_eval_folder_fails_before_the_model_loads(shards: Path, tmp_path: Path) -> None:
    config = TrainConfig(
        model=str(tmp_path / "no-model"),
        train_data=[str(shards)],
        eval_data=[str(tmp_path / "dev")],
        output_dir=str(tmp_path / "run"),
    )
    with pytest.raises(data.DataPreparationError, match="dev holds no Lhotse Shar shards"):
        train(config)


def test_a_second_run_into_the_same_folder_needs_resume(shards: Path, tmp_path: Path) -> None:
    base = build_checkpoint(tmp_path / "base", "native", diarize_vocabulary=False)
    settings = {"effective_batch": 2, "micro_batch": 1, "num_workers": 0, "eval_every": 0, "save_every": 1}
    config = TrainConfig(model=str(base), train_data=[str(shards)], output_dir=str(tmp_path / "run"), **settings)
    first = train(config)
    assert first.steps == 4 and latest_checkpoint(tmp_path / "run").name == "step-0000004"
    # Without --resume the new run's checkpoints would be pruned in favour of the old run's higher step numbers.
    with pytest.raises(TrainingError, match="checkpoints of an earlier run: --resume"):
        train(config)
    # A checkpoint cut short while saving (no state file yet) is not resumed from.
    (tmp_path / "run" / CHECKPOINTS / "step-0000009").mkdir()
    assert latest_checkpoint(tmp_path / "run").name == "step-0000004"
    assert train(config, resume=True).steps == 4


def test_a_window_is_at_most_one_decoder_pass_and_its_times_are_tokens(tmp_path: Path) -> None:
    with pytest.raises(data.DataPreparationError, match=r"\(0, 30\] s"):
        data.WindowConfig(window_s=40.0)
    with pytest.raises(data.DataPreparationError, match=r"\(0, 30\] s"):
        data.MixtureConfig(count=1, max_duration_s=31.0)
    with pytest.raises(data.DataPreparationError, match="1 to 8 speakers"):
        data.WindowConfig(max_speakers=9)  # <|spltoken8|> is no token either
    sf.write(tmp_path / "call.wav", tone_audio(30.0, 0), RATE)
    turns = [("a", 1.0, 6.0, "hello there"), ("b", 24.0, 30.0, "until the very end")]
    rows = [{"session_id": "call", "speaker": s, "start_time": b, "end_time": e, "words": w} for s, b, e, w in turns]
    (tmp_path / "ref.seglst.json").write_text(json.dumps(rows))
    recordings = data.corpus_cuts([tmp_path / "call.wav"], [tmp_path / "ref.seglst.json"])

    (window,) = data.windows(recordings, data.WindowConfig(window_s=30.0, hop_s=30.0), "en", data.SplitSummary())

    # <|t:30.0|> is no token (the last is <|t:29.9|>): it would be learnt as a dozen text pieces.
    assert window.custom["target"].endswith("<|spltoken1|><|t:24.0|> until the very end <|t:29.9|><|endoftext|>")
    assert set(re.findall(r"<\|[^|]*\|>", window.custom["target"])) <= {*DIARIZE_TOKENS, "<|endoftext|>"}


def test_mixed_speakers_never_talk_over_themselves(tmp_path: Path) -> None:
    utterances = data.librispeech_cuts(_utterances(tmp_path / "ls")).to_eager()
    config = data.MixtureConfig(count=100, max_duration_s=12.0, overlap_probability=0.8, seed=0)
    overlapped = 0
    for mixture in data.mixtures(utterances, config, "en"):
        turns = sorted(mixture.supervisions, key=lambda s: s.start)
        overlapped += any(b.start < a.end for a, b in zip(turns, turns[1:]))
        for speaker in {t.speaker for t in turns}:
            own = [t for t in turns if t.speaker == speaker]
            assert all(b.start >= a.end for a, b in zip(own, own[1:])), mixture.custom["target"]
    assert overlapped > 50  # the overlap between speakers is still there


def test_epochs_are_passes_over_the_data(shards: Path, tmp_path: Path) -> None:
    # 4 windows, 3 per optimizer step (an incomplete group carries over into the next epoch): 3 epochs are 4 steps.
    # The step count was ceil(4 / 3) = 2 per epoch, so `epochs: 3` read the data 4½ times over.
    base = build_checkpoint(tmp_path / "base", "native", diarize_vocabulary=False)
    settings: dict = {"effective_batch": 3, "micro_batch": 1, "epochs": 3, "num_workers": 0, "log_every": 0}
    config = TrainConfig(model=str(base), train_data=[str(shards)], output_dir=str(tmp_path / "run"), **settings)

    result = train(config)

    assert result.steps == result.total_steps == 4
    (last,) = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert last["step"] == 4 and last["epoch"] == 2  # the third pass


def test_a_stereo_call_is_heard_on_both_channels(tmp_path: Path) -> None:
    # Calls are often recorded one party per channel; the collator used to take the first channel only, so the
    # model was taught to write the other party's words without hearing them.
    t = np.arange(20 * RATE) / RATE
    agent = np.where((t > 1) & (t < 6), 0.3 * np.sin(2 * np.pi * 220 * t), 0.0)
    customer = np.where((t > 8) & (t < 12), 0.3 * np.sin(2 * np.pi * 330 * t), 0.0)
    sf.write(tmp_path / "call.wav", np.stack([agent, customer], 1).astype(np.float32), RATE)
    sf.write(tmp_path / "mono.wav", ((agent + customer) / 2).astype(np.float32), RATE)
    turns = [("agent", 1.0, 6.0, "how can I help"), ("customer", 8.0, 12.0, "my order is late")]
    rows = [
        {"session_id": session, "speaker": s, "start_time": b, "end_time": e, "words": w}
        for session in ("call", "mono")
        for s, b, e, w in turns
    ]
    (tmp_path / "ref.seglst.json").write_text(json.dumps(rows))
    recordings = data.corpus_cuts([tmp_path / "call.wav", tmp_path / "mono.wav"], [tmp_path / "ref.seglst.json"])
    data.prepare_windows(tmp_path / "out", {"train": recordings}, data.WindowConfig(), language="en", source="t")
    stereo, mono = sorted(CutSet.from_shar(in_dir=tmp_path / "out" / "train"), key=lambda c: c.id)
    assert stereo.custom["target"] == mono.custom["target"] and "my order is late" in stereo.custom["target"]

    # What the collator and the evaluation feed the model: the mix (FLAC in the shards: 16-bit steps apart).
    assert np.abs(window_samples(stereo) - window_samples(mono)).max() < 1e-4


def test_session_ids_are_file_stems_with_dots(tmp_path: Path) -> None:
    # "standup.2024-05-01.wav" was session "standup": its turns were not found, and two such days would collide.
    rows = []
    for day in ("standup.2024-05-01", "standup.2024-05-02"):
        sf.write(tmp_path / f"{day}.wav", tone_audio(5.0, 0), RATE)
        rows.append({"session_id": day, "speaker": "a", "start_time": 1.0, "end_time": 3.0, "words": f"hello {day}"})
    (tmp_path / "ref.seglst.json").write_text(json.dumps(rows))

    cuts = data.corpus_cuts(sorted(tmp_path.glob("*.wav")), [tmp_path / "ref.seglst.json"])

    assert sorted(cuts.ids) == ["standup.2024-05-01", "standup.2024-05-02"]
    assert [c.supervisions[0].text for c in cuts] == ["hello standup.2024-05-01", "hello standup.2024-05-02"]


def test_a_misspelt_choice_is_refused(tmp_path: Path) -> None:
    # Anything but "kaldi" gave lhotse's unnormalised text with punctuation stripped; anything but "std" the
    # covariance draw.
    with pytest.raises(data.DataPreparationError, match="kaldi or punctuated, got 'Punctuated'"):
        data.ami_cuts(tmp_path, text="Punctuated")  # type: ignore[arg-type]
    result = CliRunner().invoke(app, ["extend-vocab", str(tmp_path / "base"), str(tmp_path / "out"), "--init", "Std"])
    assert result.exit_code == 2 and "covariance or std, got 'Std'" in result.output


def test_a_warm_up_longer_than_the_run_is_reported(
    shards: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The card's 100 warm-up steps on a small corpus: the learning rate only ever rose, to a fraction of its peak.
    base = build_checkpoint(tmp_path / "base", "native", diarize_vocabulary=False)
    settings: dict = {"effective_batch": 2, "micro_batch": 1, "num_workers": 0, "max_steps": 1}
    config = TrainConfig(model=str(base), train_data=[str(shards)], output_dir=str(tmp_path / "run"), **settings)

    with caplog.at_level("WARNING", logger="turnscribe.train.loop"):
        train(config)

    assert "warmup_steps 100 is not below the run's 4 steps" in caplog.text
