"""A decoder that returns prepared token streams: for tests, benchmarks and replaying saved outputs."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..types import WindowSpan
from .base import WindowAudio


class ScriptedDecoder:
    """Answers each window with `script(span)`; no model involved."""

    name = "scripted"

    def __init__(self, script: Callable[[WindowSpan], str], *, model_id: str = "scripted", batch_size: int = 8):
        self.script = script
        self.model_id = model_id
        self.batch_size = batch_size

    def decode(self, windows: Sequence[WindowAudio], language: str) -> list[str]:
        return [self.script(w.span) for w in windows]
