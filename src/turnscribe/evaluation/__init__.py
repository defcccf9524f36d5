"""Evaluation: scoring against a reference, synthetic meetings with ground truth, and an oracle embedder.

The scorers (pyannote.metrics, meeteval, pandas) are imported on first use, not by `turnscribe`'s CLI at start.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .metrics import (
        DiarizationScores,
        EvaluationError,
        EvaluationResult,
        WordErrorScores,
        evaluate,
        load_segments,
    )

__all__ = [
    "DiarizationScores",
    "EvaluationError",
    "EvaluationResult",
    "WordErrorScores",
    "evaluate",
    "load_segments",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module(".metrics", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
