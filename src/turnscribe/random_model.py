"""Randomly initialised Cohere ASR models with the diarize vocabulary, and forced token streams for them.

For benchmarks and tests, with no download (this module imports torch and transformers): `random_model("full")`
has the real checkpoint's sizes (the `CohereAsrConfig` defaults are Cohere Transcribe's: a 48-layer, 1280-wide
conformer encoder of ~2 B parameters and an 8-layer, 1024-wide decoder; the fine-tune's 16,684-token
vocabulary), `random_model("tiny")` a model small enough for CI. `ForcedTokens` makes `generate()` emit chosen
token ids, and `scripted_window` writes a realistic stream in the model's grammar (speaker and timestamp tokens
around words) of a chosen length.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from transformers import LogitsProcessor

from .decoders.base import WindowAudio
from .prompt import LANGUAGES, SPEAKER_TOKENS, TIMESTAMP_TOKENS
from .types import SAMPLE_RATE, WindowSpan

Size = Literal["full", "tiny"]
FULL_VOCAB = 16684  # the fine-tune's: 16,384 base tokens + 8 speaker + 300 timestamp tokens (model card)
SPECIAL_TOKENS = [
    "<unk>",
    "<|nospeech|>",
    "<pad>",
    "<|endoftext|>",
    "<|startoftranscript|>",
    "<|startofcontext|>",
    "<|emo:undefined|>",
    *[f"<|{code}|>" for code in LANGUAGES],
    *["<|pnc|>", "<|nopnc|>", "<|itn|>", "<|noitn|>", "<|timestamp|>", "<|notimestamp|>", "<|diarize|>"],
    "<|nodiarize|>",
    *SPEAKER_TOKENS,
    *TIMESTAMP_TOKENS,
]
# Character-level text vocabulary: any scripted sentence over these characters can be forced.
TEXT_TOKENS = ["▁", *string.ascii_letters, *string.digits, *".,?!'-"]
WORDS = [
    "so",
    "the",
    "plan",
    "for",
    "next",
    "quarter",
    "is",
    "to",
    "ship",
    "the",
    "new",
    "release",
    "after",
    "we",
    "finish",
    "testing",
    "on",
    "real",
    "devices",
    "and",
    "fix",
    "the",
    "login",
    "problem",
    "that",
    "the",
    "customers",
    "reported",
    "last",
    "week",
    "thanks",
    "everyone",
    "for",
    "the",
    "updates",
]


def build_tokenizer(special_tokens: Sequence[str] = SPECIAL_TOKENS) -> Any:
    """A fast tokenizer with every special token of the diarize grammar (or those given), one id each, and
    character-level text."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate([*special_tokens, *TEXT_TOKENS])}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special_tokens])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        pad_token="<pad>",
        eos_token="<|endoftext|>",
        bos_token="<|startoftranscript|>",
    )


def model_config(size: Size, tokenizer: Any) -> Any:
    """A `CohereAsrConfig` whose token ids agree with `tokenizer`; "full" keeps transformers' (real) sizes."""
    from transformers import CohereAsrConfig

    ids = {
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "decoder_start_token_id": tokenizer.convert_tokens_to_ids("<|startofcontext|>"),
    }
    if size == "full":
        return CohereAsrConfig(vocab_size=max(FULL_VOCAB, len(tokenizer)), **ids)
    return CohereAsrConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=1024,
        encoder_config={
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "subsampling_conv_channels": 8,
            "num_mel_bins": 128,
        },
        **ids,
    )


def random_model(
    size: Size,
    *,
    device: str = "cpu",
    dtype: Any = None,
    attention: str | None = None,
    seed: int = 0,
    encoder_layers: int | None = None,
) -> tuple[Any, Any]:
    """(processor, model) with random weights, built directly on `device` in `dtype`, in eval mode.
    `encoder_layers`: fewer conformer layers than `size` has (decoder benchmarks: the encoder's depth does not
    change the decoder's work, its width and frame count do)."""
    from transformers import AutoModelForSpeechSeq2Seq, CohereAsrFeatureExtractor, CohereAsrProcessor

    tokenizer = build_tokenizer()
    config = model_config(size, tokenizer)
    if encoder_layers is not None:
        config.encoder_config.num_hidden_layers = encoder_layers
    torch.manual_seed(seed)
    options: dict[str, Any] = {"dtype": dtype or torch.float32}
    if attention:
        options["attn_implementation"] = attention
    with torch.device(device):
        model = AutoModelForSpeechSeq2Seq.from_config(config, **options)
    processor = CohereAsrProcessor(feature_extractor=CohereAsrFeatureExtractor(), tokenizer=tokenizer)
    return processor, model.eval()


def scripted_window(tokenizer: Any, duration_s: float, tokens: int, seed: int = 0) -> list[int]:
    """Exactly `tokens` ids (end-of-text not counted) in the diarize grammar for a window of `duration_s`:
    segments of about 4 s, two speakers taking turns, each `<|spltokenK|><|t:start|> words <|t:end|>`."""
    rng = np.random.default_rng(seed)
    count = max(1, min(round(duration_s / 4), tokens // 4))
    budget = tokens - 3 * count  # each segment: speaker, start and end tokens around its words
    edges = np.linspace(0, min(duration_s, 29.9), count + 1)
    ids: list[int] = []
    for i in range(count):
        text = " ".join(rng.choice(WORDS, size=budget))  # more words than needed; cut to this segment's share
        share = budget // count + (1 if i < budget % count else 0)
        words = tokenizer(text, add_special_tokens=False).input_ids[:share]
        start, end = (f"<|t:{t:.1f}|>" for t in (np.floor(edges[i] * 10) / 10, np.floor(edges[i + 1] * 10) / 10))
        ids += [tokenizer.convert_tokens_to_ids(SPEAKER_TOKENS[i % 2]), tokenizer.convert_tokens_to_ids(start)]
        ids += words + [tokenizer.convert_tokens_to_ids(end)]
    return ids


class ForcedTokens(LogitsProcessor):
    """Makes each batch row emit its script, then end-of-text: all rows in one scatter per step (a Python loop
    over rows would launch a GPU kernel per row per step)."""

    def __init__(self, scripts: Sequence[Sequence[int]], prompt_len: int, eos_id: int) -> None:
        width = max((len(s) for s in scripts), default=0) + 1
        self.table = torch.full((len(scripts), width), eos_id, dtype=torch.long)
        for row, script in enumerate(scripts):
            self.table[row, : len(script)] = torch.tensor(list(script), dtype=torch.long)
        self.prompt_len = prompt_len

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.Tensor:
        if self.table.device != scores.device:
            self.table = self.table.to(scores.device)
        step = min(input_ids.shape[1] - self.prompt_len, self.table.shape[1] - 1)
        forced = torch.full_like(scores, float("-inf"))
        return forced.scatter_(1, self.table[:, step : step + 1], 0.0)


def noise_windows(seconds: Sequence[float], *, level: float = 0.05, seed: int = 0) -> list[WindowAudio]:
    """Windows of audible white noise (never skipped as silence), one per length; forced outputs ignore the audio."""
    rng = np.random.default_rng(seed)
    return [
        WindowAudio(
            WindowSpan(i, 0, round(s * SAMPLE_RATE)),
            (level * rng.standard_normal(round(s * SAMPLE_RATE))).astype(np.float32),
        )
        for i, s in enumerate(seconds)
    ]
