"""Loading and decoding QA: checkpoints whose parts do not fit together, and fix-checkpoint on awkward folders."""

from __future__ import annotations

import pytest
from tiny_model import DIARIZE_ONLY_TOKENS, build_checkpoint
from transformers import PreTrainedTokenizerFast

from turnscribe.decoders.transformers import TransformersDecoder
from turnscribe.prompt import PromptTokenError


def test_a_checkpoint_without_the_diarize_tokens_is_refused_when_loaded(tmp_path):
    """Not at every window of every file (or every request of a server that started healthy)."""
    base = build_checkpoint(tmp_path / "base", "native", diarize_vocabulary=False)
    with pytest.raises(PromptTokenError, match=r"<\|diarize\|>: this is not a diarize checkpoint"):
        TransformersDecoder(base, device="cpu")


def test_a_tokenizer_with_tokens_the_weights_lack_is_refused_when_loaded(tmp_path):
    """The diarize tokens added to the base model's tokenizer only: prompt ids past the embedding's rows crashed
    generate() (IndexError on the CPU, a device-side assert on CUDA)."""
    base = build_checkpoint(tmp_path / "base", "native", diarize_vocabulary=False)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(base)
    rows = len(tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": sorted(DIARIZE_ONLY_TOKENS)})
    tokenizer.save_pretrained(base)
    with pytest.raises(PromptTokenError, match=rf"do not match: .*<\|diarize\|>.* only {rows} token rows"):
        TransformersDecoder(base, device="cpu")
