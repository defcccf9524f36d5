"""A tiny, randomly initialised `cohere_asr` model with the diarize vocabulary, saved the way users get it.

`build_checkpoint(path, layout)` writes either the native transformers layout or the base model's
original NeMo-style layout (config keys encoder/transf_decoder/head/preprocessor, original weight
names, vocabulary in head.num_classes). `ScriptedLogits` makes generate() emit a chosen token stream,
so the real model path (features → encoder → generate → decode) is checked against a known answer.
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (
    CohereAsrConfig,
    CohereAsrFeatureExtractor,
    CohereAsrForConditionalGeneration,
    CohereAsrProcessor,
    LogitsProcessor,
    PreTrainedTokenizerFast,
)

from turnscribe.prompt import LANGUAGES, SPEAKER_TOKENS, TIMESTAMP_TOKENS
from turnscribe.random_model import SPECIAL_TOKENS, ForcedTokens, build_tokenizer, model_config

# What the base model (Cohere Transcribe, before the diarize fine-tune) lacks: `turnscribe train` adds these.
DIARIZE_ONLY_TOKENS = {"<|timestamp|>", "<|diarize|>", *SPEAKER_TOKENS, *TIMESTAMP_TOKENS}
BASE_SPECIAL_TOKENS = [t for t in SPECIAL_TOKENS if t not in DIARIZE_ONLY_TOKENS]

# native weight name → original name (the inverse of transformers' conversion mapping for cohere_asr)
_TO_ORIGINAL = [
    (r"^model\.encoder\.subsampling\.layers\.", "encoder.pre_encode.conv."),
    (r"^model\.encoder\.subsampling\.linear\.", "encoder.pre_encode.out."),
    (r"^model\.decoder\.pos_emb\.weight$", "transf_decoder._embedding.position_embedding.pos_enc"),
    (r"^model\.decoder\.embed_tokens\.", "transf_decoder._embedding.token_embedding."),
    (r"^model\.decoder\.embedding_layernorm\.", "transf_decoder._embedding.layer_norm."),
    (r"^model\.decoder\.norm\.", "transf_decoder._decoder.final_layer_norm."),
    (r"^model\.decoder\.proj\.", "encoder_decoder_proj."),
    (r"^model\.decoder\.layers\.", "transf_decoder._decoder.layers."),
    (r"^model\.encoder\.", "encoder."),
    (r"^proj_out\.", "log_softmax.mlp.layer0."),
    (r"\.self_attn\.q_proj\.", ".self_attn.linear_q."),
    (r"\.self_attn\.k_proj\.", ".self_attn.linear_k."),
    (r"\.self_attn\.v_proj\.", ".self_attn.linear_v."),
    (r"\.self_attn\.o_proj\.", ".self_attn.linear_out."),
    (r"\.self_attn\.relative_k_proj\.", ".self_attn.linear_pos."),
    (r"\.self_attn\.bias_u$", ".self_attn.pos_bias_u"),
    (r"\.self_attn\.bias_v$", ".self_attn.pos_bias_v"),
    (r"\.conv\.norm\.", ".conv.batch_norm."),
    (r"\.input_layernorm\.", ".layer_norm_1."),
    (r"\.post_attention_layernorm\.", ".layer_norm_2."),
    (r"\.final_layernorm\.", ".layer_norm_3."),
    (r"\.mlp\.fc1\.", ".third_sub_layer.dense_in."),
    (r"\.mlp\.fc2\.", ".third_sub_layer.dense_out."),
]
_DECODER_ATTENTION = [
    (r"(_decoder\.layers\.\d+)\.self_attn\.linear_q\.", r"\1.first_sub_layer.query_net."),
    (r"(_decoder\.layers\.\d+)\.self_attn\.linear_k\.", r"\1.first_sub_layer.key_net."),
    (r"(_decoder\.layers\.\d+)\.self_attn\.linear_v\.", r"\1.first_sub_layer.value_net."),
    (r"(_decoder\.layers\.\d+)\.self_attn\.linear_out\.", r"\1.first_sub_layer.out_projection."),
    (r"\.encoder_attn\.q_proj\.", ".second_sub_layer.query_net."),
    (r"\.encoder_attn\.k_proj\.", ".second_sub_layer.key_net."),
    (r"\.encoder_attn\.v_proj\.", ".second_sub_layer.value_net."),
    (r"\.encoder_attn\.o_proj\.", ".second_sub_layer.out_projection."),
]


def build_checkpoint(path: Path, layout: str = "native", seed: int = 0, *, diarize_vocabulary: bool = True) -> Path:
    """`diarize_vocabulary=False` builds a stand-in for the base model: no speaker, timestamp or diarize tokens."""
    tokenizer = build_tokenizer(SPECIAL_TOKENS if diarize_vocabulary else BASE_SPECIAL_TOKENS)
    config = model_config("tiny", tokenizer)
    torch.manual_seed(seed)
    model = CohereAsrForConditionalGeneration(config).eval()
    processor = CohereAsrProcessor(feature_extractor=CohereAsrFeatureExtractor(), tokenizer=tokenizer)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    if layout == "original":
        _to_original_layout(path, config)
    return path


def _original_name(name: str) -> str:
    for pattern, repl in _TO_ORIGINAL + _DECODER_ATTENTION:
        name = re.sub(pattern, repl, name)
    # transformers >= 5 already saves cohere_asr weights under their original names, but below its wrapper's
    # "model." prefix; the base model's own files have no prefix.
    return name.removeprefix("model.")


def _to_original_layout(path: Path, config: CohereAsrConfig) -> None:
    weights = load_file(str(path / "model.safetensors"))
    original = {_original_name(k): v.contiguous() for k, v in weights.items()}
    # What NeMo checkpoints also carry and a loader must tolerate.
    for name in [k for k in original if k.endswith("batch_norm.running_var")]:
        original[name.replace("running_var", "num_batches_tracked")] = torch.tensor(0)
    save_file(original, str(path / "model.safetensors"), metadata={"format": "pt"})
    enc = config.encoder_config
    (path / "config.json").write_text(
        json.dumps(
            {
                "architectures": ["CohereAsrForConditionalGeneration"],
                "model_type": "cohere_asr",
                "vocab_size": 16384,  # stale on purpose: the base model's size, as the real file has it
                "encoder": {
                    "feat_in": enc.num_mel_bins,
                    "n_layers": enc.num_hidden_layers,
                    "d_model": enc.hidden_size,
                    "n_heads": enc.num_attention_heads,
                    "ff_expansion_factor": enc.intermediate_size // enc.hidden_size,
                    "conv_kernel_size": enc.conv_kernel_size,
                    "subsampling_factor": enc.subsampling_factor,
                    "subsampling_conv_channels": enc.subsampling_conv_channels,
                    "pos_emb_max_len": enc.max_position_embeddings,
                },
                "transf_decoder": {
                    "config_dict": {
                        "num_layers": config.num_hidden_layers,
                        "hidden_size": config.hidden_size,
                        "num_attention_heads": config.num_attention_heads,
                        "inner_size": config.intermediate_size,
                        "max_sequence_length": config.max_position_embeddings,
                        "hidden_act": config.hidden_act,
                        "vocab_size": 16384,
                    }
                },
                "head": {"num_classes": config.vocab_size, "log_softmax": True},
                "preprocessor": {
                    "sample_rate": 16000,
                    "features": 128,
                    "n_fft": 512,
                    "window_size": 0.025,
                    "window_stride": 0.01,
                    "window": "hann",
                    "normalize": "per_feature",
                },
                "supported_languages": sorted(LANGUAGES),
            },
            indent=2,
        )
    )
    (path / "processor_config.json").unlink(missing_ok=True)


ScriptedLogits = ForcedTokens  # forces each batch row to emit its scripted token ids, then end-of-text


class Script:
    """A queue of raw outputs (strings in the model grammar) handed out window by window, in order."""

    def __init__(self, tokenizer: PreTrainedTokenizerFast, outputs: Sequence[str], prompt_len: int = 9):
        self.tokenizer = tokenizer
        self.outputs = deque(outputs)
        self.prompt_len = prompt_len

    def __call__(self, windows: Sequence[object]) -> list[LogitsProcessor]:
        texts = [self.outputs.popleft() for _ in windows]
        scripts = [self.tokenizer(t, add_special_tokens=False).input_ids for t in texts]
        return [ScriptedLogits(scripts, self.prompt_len, self.tokenizer.eos_token_id)]


def skip_if_eager_attention_pads_with_nan() -> None:
    """Tests that take eager attention as their reference skip on transformers < 5.18: its Parakeet encoder fills
    masked positions with -inf, so padded frames (fully masked rows) come out NaN (5.18 fills with the dtype's
    minimum). turnscribe refuses such output (TransformersDecoder._encode); SDPA, the default, is unaffected."""
    import transformers
    from packaging.version import Version

    if Version(transformers.__version__) < Version("5.18"):
        pytest.skip(f"transformers {transformers.__version__} < 5.18: eager attention gives NaN for padded frames")


class NoEndOfText(LogitsProcessor):
    """Keeps generate() from ending early: every window decodes the same number of steps (speed comparisons)."""

    def __init__(self, eos_id: int) -> None:
        self.eos_id = eos_id

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores[:, self.eos_id] = -float("inf")
        return scores
