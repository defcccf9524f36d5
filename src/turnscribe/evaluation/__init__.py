"""Evaluation: scoring against a reference, synthetic meetings with ground truth, and an oracle embedder."""

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
