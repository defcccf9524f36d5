"""The decoder Protocol: windows of audio in, the model's raw token streams out."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from ..types import TurnscribeError, WindowSpan

DTYPES = ("auto", "bfloat16", "float16", "float32")  # a model's precision: see transformers.pick_dtype


def check_dtype(dtype: str) -> str:
    if dtype not in DTYPES:
        raise ValueError(f"Unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}")
    return dtype


class DecoderError(TurnscribeError):
    pass


@dataclass(frozen=True)
class WindowAudio:
    """One window to decode: where it sits in the file, and its 16 kHz mono samples (≤ 30 s)."""

    span: WindowSpan
    samples: np.ndarray


@runtime_checkable
class Decoder(Protocol):
    """Anything that turns windows into token streams in the model's grammar.

    `decode` returns one string per window, special tokens kept, e.g.
    ``<|spltoken0|><|t:0.0|> Welcome back. <|t:1.5|>...``. It may raise for a whole batch; the
    pipeline then retries the windows one by one and reports any window that still fails.
    """

    name: str
    model_id: str

    @property
    def batch_size(self) -> int:
        """Windows per `decode` call the backend does best with (read-only here: a backend may compute it)."""
        ...

    def decode(self, windows: Sequence[WindowAudio], language: str) -> list[str]: ...


@runtime_checkable
class StreamingDecoder(Decoder, Protocol):
    """A decoder that queues windows and answers each with a future (e.g. one fed by a `BatchScheduler`).

    `Pipeline` keeps `batch_size` windows of a file in flight through it and reports progress window by window.
    """

    def submit(self, windows: Sequence[WindowAudio], language: str) -> list[Future[str]]: ...
