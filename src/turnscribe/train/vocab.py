"""Extend a base Cohere Transcribe checkpoint's vocabulary with the diarize tokens (model card, "Training recipe").

The fine-tune adds 8 speaker tokens ``<|spltoken0|>``…``<|spltoken7|>`` and 300 timestamp tokens
``<|t:0.0|>``…``<|t:29.9|>``, plus the ``<|timestamp|>``/``<|diarize|>`` prompt controls where the base lacks
them. The embedding and LM-head matrices grow to fit, and the new rows are drawn from the statistics of the
existing token rows (their mean and covariance, or mean and per-dimension std), so that a new token starts
out looking like a typical token rather than like noise of another scale. Running it on an extended model
changes nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from ..prompt import SPEAKER_TOKENS, TIMESTAMP_TOKENS
from ..types import TurnscribeError

DIARIZE_CONTROL_TOKENS = ("<|timestamp|>", "<|diarize|>")
DIARIZE_TOKENS = (*DIARIZE_CONTROL_TOKENS, *SPEAKER_TOKENS, *TIMESTAMP_TOKENS)
RowInit = Literal["covariance", "std"]


class VocabularyError(TurnscribeError):
    pass


@dataclass(frozen=True)
class VocabularyExtension:
    added_tokens: list[str]  # new to the tokenizer
    initialised_rows: list[int]  # embedding / LM-head rows drawn from the statistics of the existing rows
    rows_before: int
    rows_after: int

    @property
    def changed(self) -> bool:
        return bool(self.added_tokens or self.initialised_rows)


def missing_tokens(tokenizer: Any) -> list[str]:
    vocab = tokenizer.get_vocab()
    return [t for t in DIARIZE_TOKENS if t not in vocab]


def check_row_init(init: str) -> None:
    if init not in get_args(RowInit):  # anything else drew from the covariance without a word
        raise VocabularyError(f"new rows are drawn by covariance or std, got {init!r}")


def extend_vocabulary(
    model: Any, tokenizer: Any, *, init: RowInit = "covariance", seed: int = 0
) -> VocabularyExtension:
    """Add the diarize tokens to `tokenizer` and fit `model`'s embedding and LM head to it, in place."""
    import torch
    from tokenizers import AddedToken

    check_row_init(init)
    added = missing_tokens(tokenizer)
    if added:
        tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in added], special_tokens=True)
    rows_before = int(model.get_input_embeddings().weight.shape[0])
    rows_after = max(rows_before, len(tokenizer))
    # Rows to draw: those of the tokens just added (a base matrix may have spare rows already), and any row
    # a token has but the matrix lacked (a tokenizer extended earlier without resizing the model).
    fresh = set(tokenizer.convert_tokens_to_ids(added)) | set(range(rows_before, len(tokenizer)))
    if not fresh:
        return VocabularyExtension([], [], rows_before, rows_before)
    if rows_after > rows_before:
        # mean_resizing=False: transformers' mean resizing draws with covariance × 1e-9, i.e. every new row the
        # same vector; we draw real samples below.
        model.resize_token_embeddings(rows_after, mean_resizing=False)
    rows = sorted(fresh)
    known = torch.tensor([i for i in range(rows_before) if i not in fresh])
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for matrix in _token_matrices(model):
            matrix[rows] = _draw_rows(matrix[known], len(rows), init, generator).to(matrix.dtype)
        bias = getattr(model.get_output_embeddings(), "bias", None)
        if bias is not None:
            bias[rows] = bias[known].float().mean().to(bias.dtype)
    return VocabularyExtension(added, rows, rows_before, rows_after)


def _token_matrices(model: Any) -> list[Any]:
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    # A tied head is the embedding itself: draw its rows once.
    return [embedding] if head.data_ptr() == embedding.data_ptr() else [embedding, head]


def _draw_rows(existing: Any, count: int, init: RowInit, generator: Any) -> Any:
    import torch

    rows = existing.float()
    mean = rows.mean(dim=0)
    noise = torch.randn(count, rows.shape[1], generator=generator)
    if init == "std":
        return mean + noise * rows.std(dim=0)
    centred = rows - mean
    covariance = centred.T @ centred / max(len(rows) - 1, 1)
    # A little jitter keeps the Cholesky factorisation defined when rows are fewer than dimensions.
    jitter = 1e-6 * covariance.diagonal().mean().clamp_min(1e-12)
    factor = torch.linalg.cholesky(covariance + jitter * torch.eye(len(covariance)))
    return mean + noise @ factor.T


def extend_checkpoint(
    source: str | os.PathLike[str],
    destination: str | os.PathLike[str],
    *,
    init: RowInit = "covariance",
    seed: int = 0,
) -> VocabularyExtension:
    """Extend a checkpoint (either layout) and save it in the native layout; reload it to check the result.

    When `source` already has every token and row, nothing is written if `destination` is `source`.
    """
    import torch

    from ..decoders.transformers import load_model

    check_row_init(init)  # before the model loads
    source, destination = Path(source), Path(destination)
    processor, model = load_model(source, "cpu", torch.float32, False, None)
    extension = extend_vocabulary(model, processor.tokenizer, init=init, seed=seed)
    if not extension.changed and destination.resolve() == source.resolve():
        return extension
    destination.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(destination)
    processor.save_pretrained(destination)
    verify_checkpoint(destination, expected=model)
    return extension


def verify_checkpoint(path: Path, expected: Any | None = None) -> None:
    """Reload `path`: every diarize token is one token id, the matrices have a row for each, and (given the
    model that was saved) the weights read back are the ones written."""
    import torch

    from ..decoders.transformers import load_model

    processor, model = load_model(path, "cpu", torch.float32, False, None)
    tokenizer = processor.tokenizer
    if missing := missing_tokens(tokenizer):
        raise VocabularyError(f"{path}: the saved tokenizer lacks {len(missing)} diarize tokens, e.g. {missing[:3]}")
    ids = tokenizer.convert_tokens_to_ids(list(DIARIZE_TOKENS))
    rows = int(model.get_input_embeddings().weight.shape[0])
    if len(set(ids)) != len(ids) or max(ids) >= rows or tokenizer.unk_token_id in ids:
        raise VocabularyError(f"{path}: diarize tokens do not map to distinct rows of the {rows}-row embedding")
    for token in ("<|spltoken0|>", "<|t:29.9|>"):
        if tokenizer(token, add_special_tokens=False).input_ids != [tokenizer.convert_tokens_to_ids(token)]:
            raise VocabularyError(f"{path}: {token} does not tokenize as one token")
    if expected is not None:
        for name, reloaded in model.state_dict().items():
            if not torch.equal(reloaded, expected.state_dict()[name]):
                raise VocabularyError(f"{path}: tensor {name} did not read back as written")
