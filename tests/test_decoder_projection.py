"""SpeedOptions.project_once: the encoder→decoder projection runs once per window, not at every decoding step,
and nothing the decoder emits changes (token ids and every step's logits, bit for bit).

The tiny random model's logits depend only weakly on the audio (by ~1e-6), so equal token ids alone would
prove little; equal logits do, and `test_logits_do_see_a_wrong_projection` shows they would catch a mistake.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Any

import pytest
import torch
from tiny_model import NoEndOfText, skip_if_eager_attention_pads_with_nan

from turnscribe.decoders import projection
from turnscribe.decoders.base import WindowAudio
from turnscribe.decoders.transformers import SpeedOptions, TransformersDecoder
from turnscribe.random_model import noise_windows, random_model

NEW_TOKENS = 24
LENGTHS = [28.0, 7.5, 19.0, 12.0, 3.0]


@pytest.fixture(scope="module")
def windows() -> list[WindowAudio]:
    return noise_windows(LENGTHS, level=0.1)


@pytest.fixture(scope="module")
def models() -> dict[str, Any]:
    """One loaded model per attention implementation, each shared by every decoder of the tests below."""
    return {attention: random_model("tiny", attention=attention) for attention in ("eager", "sdpa")}


def decoder(loaded: Any, speed: SpeedOptions) -> TransformersDecoder:
    if speed.attention == "eager":
        skip_if_eager_attention_pads_with_nan()
    d = TransformersDecoder("random-tiny", device="cpu", speed=speed, max_new_tokens=NEW_TOKENS, loaded=loaded)
    d.logits_processor_factory = lambda _: [NoEndOfText(d.processor.tokenizer.eos_token_id)]
    return d


def run(d: TransformersDecoder, windows: list[WindowAudio]) -> tuple[torch.Tensor, torch.Tensor]:
    out = d.generate(windows, "en", output_logits=True, return_dict_in_generate=True)
    return out.sequences, torch.stack(out.logits, dim=1)


def count_projections(model: Any) -> tuple[list[torch.Size], Any]:
    """The input shapes of every call of the model's (real) projection, and the hook's handle."""
    shapes: list[torch.Size] = []
    handle = model.model.decoder.proj.register_forward_hook(lambda _m, args, _out: shapes.append(args[0].shape))
    return shapes, handle


# The plain path (eager attention, transformers' default dynamic cache) and the CPU's --fast (SDPA), and the
# static cache --fast adds on CUDA.
PATHS = {
    "plain": ("eager", SpeedOptions(attention="eager")),
    "fast": ("sdpa", SpeedOptions.fast("cpu")),
    "static-cache": ("sdpa", SpeedOptions(attention="sdpa", static_cache=True)),
}


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("batch_size", [1, 2, 5])
def test_project_once_keeps_token_ids_and_logits(models, windows, path, batch_size):
    attention, speed = PATHS[path]
    once = decoder(models[attention], speed)
    every_step = decoder(models[attention], replace(speed, project_once=False))
    assert once.speed.project_once and not every_step.speed.project_once
    for start in range(0, len(windows), batch_size):
        batch = windows[start : start + batch_size]
        sequences, logits = run(once, batch)
        expected_sequences, expected_logits = run(every_step, batch)
        assert sequences.shape == (len(batch), len(once.prompt_ids("en")) + NEW_TOKENS)
        assert torch.equal(sequences, expected_sequences)
        assert torch.equal(logits, expected_logits)


@pytest.mark.parametrize("path", list(PATHS))
def test_the_projection_runs_once_per_window(models, windows, path):
    attention, speed = PATHS[path]
    model = models[attention][1]
    shapes, handle = count_projections(model)
    try:
        decoder(models[attention], speed).generate_ids(windows[:3], "en")
        once = list(shapes)
        shapes.clear()
        decoder(models[attention], replace(speed, project_once=False)).generate_ids(windows[:3], "en")
    finally:
        handle.remove()
    # One call over the batch, each window in it once; transformers alone projects at every step.
    assert len(once) == 1 and once[0][0] == 3
    assert len(shapes) == NEW_TOKENS and all(s == once[0] for s in shapes)


def test_logits_do_see_a_wrong_projection(models, windows, monkeypatch):
    """The negative control: unprojected encoder states (same width in the tiny model) change the logits."""
    d = decoder(models["eager"], SpeedOptions(attention="eager"))
    _, expected = run(d, windows[:2])

    def unprojected(model: Any, input_features: Any, attention_mask: Any, **options: Any) -> Any:
        return model.get_encoder()(input_features=input_features, attention_mask=attention_mask, **options)

    monkeypatch.setattr(projection, "encode_projected", unprojected)
    _, wrong = run(d, windows[:2])
    assert not torch.equal(wrong, expected)


def test_the_shared_model_is_left_alone_and_concurrent_decoders_agree(models, windows):
    loaded = models["sdpa"]
    model = loaded[1]
    keys = list(model.state_dict())
    once = decoder(loaded, SpeedOptions.fast("cpu"))
    every_step = decoder(loaded, SpeedOptions(attention="sdpa", project_once=False))
    expected = {name: d.generate_ids(windows[:3], "en") for name, d in (("once", once), ("every", every_step))}
    assert torch.equal(expected["once"], expected["every"])

    results: dict[str, list[torch.Tensor]] = {"once": [], "every": []}

    def work(name: str, d: TransformersDecoder) -> None:
        for _ in range(3):
            results[name].append(d.generate_ids(windows[:3], "en"))

    threads = [threading.Thread(target=work, args=item) for item in (("once", once), ("every", every_step))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(torch.equal(ids, expected["once"]) for name in results for ids in results[name])
    assert sum(len(r) for r in results.values()) == 6
    # The model itself: its projection, its weights' names, and no attribute of the view.
    assert type(model.model.decoder.proj) is torch.nn.Linear
    assert list(model.state_dict()) == keys
    assert every_step.generating_model is model
    view = once.generating_model
    assert view is not model and type(view.model.decoder.proj) is torch.nn.Identity
    assert view.model.decoder.layers is model.model.decoder.layers and view.model.encoder is model.model.encoder
    assert view.proj_out.weight is model.proj_out.weight


def test_the_view_follows_the_model():
    loaded = random_model("tiny")
    model = loaded[1]
    d = decoder(loaded, SpeedOptions())
    view = d.generating_model
    assert d.generating_model is view  # kept while the model is unchanged
    model.train()
    try:
        assert d.generating_model is not view and d.generating_model.training
    finally:
        model.eval()
    view = d.generating_model
    model.model.decoder.norm = torch.nn.LayerNorm(model.config.hidden_size)
    assert d.generating_model is not view and d.generating_model.model.decoder.norm is model.model.decoder.norm


def test_models_without_the_projection_run_as_they_are():
    assert not projection.supports(torch.nn.Linear(2, 2))
    assert projection.supports(random_model("tiny")[1])
