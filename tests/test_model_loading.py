"""The transformers backend: both checkpoint layouts, prompt, batching, clear errors."""

import json
import shutil

import numpy as np
import pytest
import torch
from tiny_model import Script, build_tokenizer

from turnscribe.checkpoint import CheckpointError, detect_layout, read_checkpoint, resolve_model_dir
from turnscribe.decoders.base import WindowAudio
from turnscribe.decoders.transformers import TransformersDecoder, load_model, max_new_tokens_for
from turnscribe.prompt import LanguageError, PromptTokenError, diarize_prompt_ids, diarize_prompt_tokens
from turnscribe.types import SAMPLE_RATE, WindowSpan


def window(seconds: float, index: int = 0, seed: int = 0) -> WindowAudio:
    samples = np.random.default_rng(seed).standard_normal(int(seconds * SAMPLE_RATE)).astype(np.float32) * 0.1
    return WindowAudio(WindowSpan(index, 0, len(samples)), samples)


def test_layouts_are_detected(tiny_native, tiny_original):
    assert read_checkpoint(tiny_native).layout == "native"
    assert read_checkpoint(tiny_original).layout == "original"
    with pytest.raises(CheckpointError, match="neither a native"):
        detect_layout({"model_type": "whisper", "d_model": 8}, "x")


def test_original_layout_loads_the_same_weights_as_native(tiny_native, tiny_original):
    _, native = load_model(tiny_native, "cpu", torch.float32, False, None)
    processor, original = load_model(tiny_original, "cpu", torch.float32, False, None)
    # The original config says vocab 16384 (stale); the weights and head.num_classes say otherwise.
    assert original.config.vocab_size == len(build_tokenizer()) != 16384
    a, b = native.state_dict(), original.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert processor.feature_extractor.feature_size == 128


def test_original_layout_with_model_prefix_loads(tiny_native, tiny_original, tmp_path):
    from safetensors.torch import load_file, save_file

    shutil.copytree(tiny_original, tmp_path, dirs_exist_ok=True)
    weights = load_file(str(tmp_path / "model.safetensors"))
    save_file({f"model.{k}": v for k, v in weights.items()}, str(tmp_path / "model.safetensors"))
    _, native = load_model(tiny_native, "cpu", torch.float32, False, None)
    _, prefixed = load_model(tmp_path, "cpu", torch.float32, False, None)
    assert all(torch.equal(v, prefixed.state_dict()[k]) for k, v in native.state_dict().items())


def test_weights_that_do_not_fit_are_a_clear_error(tiny_original, tmp_path):
    shutil.copytree(tiny_original, tmp_path, dirs_exist_ok=True)
    config = json.loads((tmp_path / "config.json").read_text())
    config["transf_decoder"]["config_dict"]["num_layers"] = 3  # the weights have 2
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="do not fit"):
        load_model(tmp_path, "cpu", torch.float32, False, None)


@pytest.mark.parametrize(
    ("setup", "match"),
    [
        (lambda p: None, "no config.json"),
        (lambda p: (p / "config.json").write_text("{not json"), "not valid JSON"),
        (lambda p: (p / "config.json").write_text('{"model_type": "bert"}'), "neither a native"),
    ],
)
def test_unloadable_folders(tmp_path, setup, match):
    setup(tmp_path)
    with pytest.raises(CheckpointError, match=match):
        TransformersDecoder(tmp_path, device="cpu")


def test_missing_path_and_offline_hub_id_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="neither a folder"):
        resolve_model_dir(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="Could not fetch model"):
        resolve_model_dir("someone/not-downloaded-model")


def test_prompt_is_one_special_token_each(tiny_native):
    tok = build_tokenizer()
    ids = diarize_prompt_ids("de", tok.convert_tokens_to_ids, tok.unk_token_id)
    assert tok.convert_ids_to_tokens(ids) == diarize_prompt_tokens("de")
    assert diarize_prompt_tokens("de")[3:5] == ["<|de|>", "<|de|>"]
    assert "<|diarize|>" in diarize_prompt_tokens("en") and "<|nodiarize|>" not in diarize_prompt_tokens("en")
    with pytest.raises(LanguageError, match=r"Valid languages: ar \(Arabic\), de"):
        diarize_prompt_tokens("xx")
    with pytest.raises(PromptTokenError, match="diarize"):
        diarize_prompt_ids("en", lambda toks: [0 if t == "<|diarize|>" else 5 for t in toks], 0)


@pytest.mark.parametrize("fixture", ["tiny_native", "tiny_original"])
def test_scripted_output_comes_back_through_generate(request, fixture):
    path = request.getfixturevalue(fixture)
    outputs = ["<|spltoken0|><|t:0.0|> Welcome back. <|t:1.5|><|spltoken1|><|t:1.5|> Thanks. <|t:2.4|>", ""]
    decoder = TransformersDecoder(path, device="cpu", logits_processor_factory=Script(build_tokenizer(), outputs))
    raw = decoder.decode([window(28.0), window(0.2, 1)], "en")
    assert raw[0].startswith(outputs[0] + "<|endoftext|>")
    assert raw[1].startswith("<|endoftext|>")


def test_batched_generate_equals_one_window_at_a_time(tiny_native):
    # Right padding with an attention mask must not change what a short window decodes to.
    decoder = TransformersDecoder(tiny_native, device="cpu", batch_size=3, max_new_tokens=24)
    windows = [window(28.0, 0, 1), window(11.3, 1, 2), window(3.0, 2, 3)]
    batched = decoder.decode(windows, "en")
    single = [decoder.decode([w], "en")[0] for w in windows]
    assert batched == single


def test_generation_budget_scales_with_the_window():
    assert max_new_tokens_for(30.0) >= 400  # the card's budget for a 30 s clip
    assert max_new_tokens_for(5.0) < max_new_tokens_for(28.0)


def test_trust_remote_code_takes_the_checkpoints_own_auto_classes(tiny_native):
    # A checkpoint without remote code still loads: transformers falls back to its native classes.
    decoder = TransformersDecoder(tiny_native, device="cpu", trust_remote_code=True)
    assert type(decoder.model).__name__ == "CohereAsrForConditionalGeneration"
