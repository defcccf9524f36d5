"""Fine-tuning: a tiny random base model is extended and trained on espeak-ng windows until its loss is below what
any model deaf to the audio can reach, and greedy decoding of the saved checkpoint gives the turns back; resuming
gives the same weights as an uninterrupted run; a GPU smoke run of the full-size architecture."""

from __future__ import annotations

import json
import math
import os
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file
from tiny_model import build_checkpoint

pytest.importorskip("lhotse")
pytest.importorskip("accelerate")

from turnscribe.decoders.base import WindowAudio  # noqa: E402
from turnscribe.decoders.transformers import TransformersDecoder  # noqa: E402
from turnscribe.evaluation.synthetic import VOICES, have_espeak, synthesise  # noqa: E402
from turnscribe.parse import parse_window  # noqa: E402
from turnscribe.train import data  # noqa: E402
from turnscribe.train.loop import (  # noqa: E402
    TrainConfig,
    TrainingError,
    WindowCollator,
    eval_cuts,
    latest_checkpoint,
    load_config,
    token_loss_sum,
    train,
)
from turnscribe.types import WindowSpan  # noqa: E402

WORDS = ["yes", "no", "okay", "thanks", "hello"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Windows of one espeak-ng word each (5 words, 4 voices) made by the mixture recipe from a LibriSpeech
    layout; and a tiny base model without the diarize vocabulary."""
    if not have_espeak():
        pytest.skip("espeak-ng is not installed")
    root = tmp_path_factory.mktemp("train")
    for s, voice in enumerate(VOICES[:4]):
        folder = root / "ls" / "train-clean-5" / f"{100 + s}" / "1"
        folder.mkdir(parents=True)
        lines = []
        for u, word in enumerate(WORDS[s : s + 2]):
            utterance = f"{100 + s}-1-{u:04d}"
            sf.write(folder / f"{utterance}.flac", np.asarray(synthesise(word, voice)), 16_000)
            lines.append(f"{utterance} {word.upper()}")
        (folder / f"{100 + s}-1.trans.txt").write_text("\n".join(lines) + "\n")
    # K = 1 and 2 s: one word per window, so that the words can only come from the audio.
    config = data.MixtureConfig(count=6, speaker_weights=(1.0,), max_duration_s=2.0, seed=1)
    data.prepare_mixtures(
        root / "mix", data.librispeech_cuts(root / "ls"), config, dev_count=0, language="en", source="t"
    )
    base = build_checkpoint(root / "base", "native", diarize_vocabulary=False)
    return root / "mix" / "train", base


def _config(shards: Path, base: Path, out: Path, **overrides: object) -> TrainConfig:
    settings: dict = {
        "model": str(base),
        "train_data": [str(shards)],
        "output_dir": str(out),
        "peak_lr": 1e-2,
        "warmup_steps": 3,
        "effective_batch": 4,
        "micro_batch": 2,  # 2 micro-batches accumulated per step
        "eval_every": 0,
        "save_every": 0,
        "num_workers": 0,
        "log_every": 50,
    }
    return TrainConfig(**{**settings, **overrides})  # type: ignore[arg-type]


def _mean_loss(model_dir: Path, cuts: list) -> float:
    decoder = TransformersDecoder(model_dir, device="cpu")
    batch = WindowCollator(decoder.processor)(cuts)
    with torch.no_grad():
        return float(token_loss_sum(decoder.model, batch)) / int((batch["labels"] != -100).sum())


def audio_blind_loss(sequences: list[list[int]]) -> float:
    """The lowest mean loss per token any model that ignores the audio can reach on these target sequences: the
    entropy of each next token given the tokens before it, over the sequences (the empirical distribution is
    the optimal audio-blind predictor on them)."""
    counts: dict[tuple[int, ...], Counter[int]] = defaultdict(Counter)
    for seq in sequences:
        for i, token in enumerate(seq):
            counts[tuple(seq[:i])][token] += 1
    total = sum(
        -math.log(counts[tuple(seq[:i])][token] / sum(counts[tuple(seq[:i])].values()))
        for seq in sequences
        for i, token in enumerate(seq)
    )
    return total / sum(len(s) for s in sequences)


@pytest.mark.slow
def test_training_learns_from_the_audio(corpus: tuple[Path, Path], tmp_path: Path) -> None:
    shards, base = corpus
    cuts = eval_cuts([str(shards)], 6)
    starts = {parse_window(c.custom["target"]).segments[0].start for c in cuts}
    assert len(starts) >= 3  # where the word starts differs from window to window: only the audio tells

    # 6 windows, 4 per optimizer step: 1.5 steps per epoch, 200 steps.
    result = train(_config(shards, base, tmp_path / "run", epochs=133.3, eval_data=[str(shards)], eval_windows=6))

    assert result.steps == result.total_steps == 200 and result.optimizer == "AdamW"
    model_dir = tmp_path / "run" / "model"
    decoder = TransformersDecoder(model_dir, device="cpu")
    targets = WindowCollator(decoder.processor)(cuts)["labels"]
    blind = audio_blind_loss([[int(t) for t in row if t != -100] for row in targets])
    trained, untrained = _mean_loss(model_dir, cuts), _mean_loss(_untrained(shards, base, tmp_path), cuts)
    # Below what any audio-blind model can reach on these windows (so it reads the audio), far below a new model.
    assert trained < 0.75 * blind < untrained / 5, (trained, blind, untrained)
    # The saved model loads the way `turnscribe transcribe --model PATH` loads it; greedy decoding (with the
    # card's repetition penalty) gives each window's turn back: its speaker slot and word, times within 0.2 s.
    outputs = decoder.decode([WindowAudio(WindowSpan(0, 0, c.num_samples), c.load_audio()[0]) for c in cuts], "en")
    for cut, output in zip(cuts, outputs):
        (want,) = parse_window(cut.custom["target"], cut.duration).segments
        parsed = parse_window(output, cut.duration)
        assert parsed.repairs == [], output
        (got,) = parsed.segments
        assert (got.slot, got.text) == (want.slot, want.text), (cut.custom["target"], output)
        assert abs(got.start - want.start) <= 0.21 and abs(got.end - want.end) <= 0.21, (cut.custom["target"], output)
    # Scored through turnscribe.evaluation at the end of training.
    (final,) = result.evaluations
    assert final.windows == 6 and final.der < 0.1 and final.cpwer == 0.0
    logged = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert logged[-1]["step"] == 200 and logged[-1]["lr"] == 0.0  # linear decay ends at 0


def _untrained(shards: Path, base: Path, tmp_path: Path) -> Path:
    """The base model, only extended (one step at a negligible learning rate), saved the same way."""
    return train(_config(shards, base, tmp_path / "untrained", epochs=1, max_steps=1, peak_lr=1e-12)).model_dir


def test_resume_continues_exactly(corpus: tuple[Path, Path], tmp_path: Path) -> None:
    shards, base = corpus
    straight = train(_config(shards, base, tmp_path / "straight", epochs=8))
    assert straight.steps == 12

    first = train(_config(shards, base, tmp_path / "resumed", epochs=8, max_steps=5, save_every=2))
    assert first.steps == 5
    assert latest_checkpoint(tmp_path / "resumed").name == "step-0000005"
    halfway = load_file(str(first.model_dir / "model.safetensors"))
    second = train(_config(shards, base, tmp_path / "resumed", epochs=8), resume=True)
    assert second.steps == 12

    a = load_file(str(straight.model_dir / "model.safetensors"))
    b = load_file(str(second.model_dir / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    # The resumed part did train: the weights moved on from step 5.
    assert not all(torch.equal(a[k], halfway[k]) for k in a)
    assert len(list((tmp_path / "resumed" / "checkpoints").glob("step-*"))) <= 2  # keep_checkpoints


def test_config_file_defaults_are_the_card_recipe(tmp_path: Path) -> None:
    file = tmp_path / "run.yaml"
    file.write_text("model: base\ntrain_data: [data/ami/train, data/mix/train]\noutput_dir: out\n")
    config = load_config(file, ["micro_batch=4", "eval_data=[data/ami/dev]"])
    assert (config.epochs, config.peak_lr, config.warmup_steps, config.effective_batch) == (2.0, 3e-4, 100, 128)
    assert (config.precision, config.gradient_checkpointing, config.optimizer) == ("bf16", True, "adamw8bit")
    assert config.micro_batch == 4 and config.eval_data == ["data/ami/dev"]
    with pytest.raises(TrainingError, match="unknown setting"):
        load_config(file, ["learning_rate=1"])
    with pytest.raises(TrainingError, match="multiple of micro_batch"):
        load_config(file, ["micro_batch=3"])
    shipped = Path(__file__).parent.parent / "configs" / "card-recipe.yaml"
    assert load_config(shipped).effective_batch == 128


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_full_size_bf16_steps_on_gpu() -> None:
    """A few optimizer steps of the full-size architecture (random weights, 16,692 tokens) in bf16 with gradient
    checkpointing and the card's micro-batch of 2 × 28 s windows; step time and peak memory are printed and
    written to $TURNSCRIBE_GPU_REPORT when set."""
    from accelerate import Accelerator
    from transformers import CohereAsrConfig, CohereAsrForConditionalGeneration

    from turnscribe.train.loop import make_optimizer

    accelerator = Accelerator(mixed_precision="bf16")
    model = CohereAsrForConditionalGeneration(CohereAsrConfig(vocab_size=16692))
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    config = TrainConfig(model="-", train_data=["-"], output_dir="-")
    optimizer, name = make_optimizer(model.parameters(), config, on_cuda=True)
    model, optimizer = accelerator.prepare(model, optimizer)
    generator = torch.Generator().manual_seed(0)
    micro = 2
    features = torch.randn(micro, 2800, 128, generator=generator)  # 28 s of 10 ms mel frames
    tokens = torch.randint(0, 16692, (micro, 360), generator=generator)  # ≈ 13 tokens/s, the card's budget
    batch = {
        "input_features": features.to(accelerator.device),
        "attention_mask": torch.ones(micro, 2800, dtype=torch.long, device=accelerator.device),
        "decoder_input_ids": tokens[:, :-1].to(accelerator.device),
        "labels": tokens[:, 1:].to(accelerator.device),
    }
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(4):
        torch.cuda.synchronize()
        started = time.perf_counter()
        with accelerator.autocast():
            loss = token_loss_sum(model, batch) / batch["labels"].numel()
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    report = {
        "device": torch.cuda.get_device_name(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "optimizer": name,
        "micro_batch": micro,
        "seconds_per_micro_batch_step": float(np.median(times[1:])),
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30,
        "loss": float(loss),
    }
    print(json.dumps(report))
    if path := os.environ.get("TURNSCRIBE_GPU_REPORT"):
        Path(path).write_text(json.dumps(report, indent=2) + "\n")
    assert np.isfinite(report["loss"])
