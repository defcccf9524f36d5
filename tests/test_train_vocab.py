"""Vocabulary extension of a base checkpoint: tokens added, matrices resized, new rows from the old rows' statistics."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_model import build_checkpoint

from turnscribe.decoders.transformers import load_model
from turnscribe.prompt import diarize_prompt_ids
from turnscribe.train.vocab import DIARIZE_TOKENS, extend_checkpoint, missing_tokens


def _digest(folder: Path) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(folder.iterdir()) if f.is_file()}


@pytest.mark.parametrize("layout", ["native", "original"])
def test_base_checkpoint_is_extended_saved_and_reloaded(tmp_path: Path, layout: str) -> None:
    base = build_checkpoint(tmp_path / "base", layout, diarize_vocabulary=False)
    base_processor, base_model = load_model(base, "cpu", torch.float32, False, None)
    assert len(missing_tokens(base_processor.tokenizer)) == len(DIARIZE_TOKENS)
    rows_before = base_model.get_input_embeddings().weight.shape[0]

    extension = extend_checkpoint(base, tmp_path / "extended")

    assert extension.added_tokens == list(DIARIZE_TOKENS)
    assert extension.rows_after == rows_before + len(DIARIZE_TOKENS)
    processor, model = load_model(tmp_path / "extended", "cpu", torch.float32, False, None)
    tokenizer = processor.tokenizer
    assert missing_tokens(tokenizer) == []
    prompt = diarize_prompt_ids("de", tokenizer.convert_tokens_to_ids, tokenizer.unk_token_id)
    assert len(prompt) == 9
    embedding = model.get_input_embeddings().weight.detach()
    head = model.get_output_embeddings().weight.detach()
    assert embedding.shape[0] == head.shape[0] == len(tokenizer) == extension.rows_after
    # Old rows kept exactly; new rows drawn around the old rows' mean with their spread, all distinct.
    old, new = embedding[:rows_before], embedding[rows_before:]
    assert torch.equal(old, base_model.get_input_embeddings().weight.detach())
    assert torch.equal(head[:rows_before], base_model.get_output_embeddings().weight.detach())
    assert torch.unique(new, dim=0).shape[0] == len(new)
    assert (new.mean(0) - old.mean(0)).abs().max() < 3 * old.std(0).max() / len(new) ** 0.5 + 1e-6
    assert 0.5 < new.std(0).mean() / old.std(0).mean() < 2.0
    # The text tokens still tokenize as before.
    assert (
        tokenizer("Hello", add_special_tokens=False).input_ids
        == base_processor.tokenizer("Hello", add_special_tokens=False).input_ids
    )


def test_extension_is_idempotent(tmp_path: Path) -> None:
    base = build_checkpoint(tmp_path / "base", "native", diarize_vocabulary=False)
    extended = tmp_path / "extended"
    extend_checkpoint(base, extended)
    before = _digest(extended)
    again = extend_checkpoint(extended, extended)
    assert not again.changed and again.added_tokens == [] and again.rows_after == again.rows_before
    assert _digest(extended) == before
    # Into another folder: the same weights as the input.
    extend_checkpoint(extended, tmp_path / "copy")
    first, second = (
        load_file(str(extended / "model.safetensors")),
        load_file(str(tmp_path / "copy" / "model.safetensors")),
    )
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_diarize_checkpoint_needs_nothing(tiny_native: Path) -> None:
    extension = extend_checkpoint(tiny_native, tiny_native)
    assert not extension.changed
