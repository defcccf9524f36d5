"""The diarize prompt of the model card, built as token ids (never by tokenizing the marker strings)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .types import TurnscribeError

# The base model's 14 languages (Cohere Transcribe); the fine-tune keeps its vocabulary.
LANGUAGES: dict[str, str] = {
    "ar": "Arabic",
    "de": "German",
    "el": "Greek",
    "en": "English",
    "es": "Spanish",
    "fr": "French",
    "it": "Italian",
    "ja": "Japanese",
    "ko": "Korean",
    "nl": "Dutch",
    "pl": "Polish",
    "pt": "Portuguese",
    "vi": "Vietnamese",
    "zh": "Chinese",
}

SPEAKER_TOKENS = [f"<|spltoken{i}|>" for i in range(8)]
TIMESTAMP_TOKENS = [f"<|t:{i / 10:.1f}|>" for i in range(300)]


class LanguageError(TurnscribeError, ValueError):
    pass


class PromptTokenError(TurnscribeError):
    pass


def check_language(language: str) -> str:
    valid = ", ".join(f"{c} ({n})" for c, n in LANGUAGES.items())
    if not isinstance(language, str):
        # language=None asks faster-whisper and WhisperX to detect it; this model is told the language in its prompt.
        raise LanguageError(f"A language is required (the model does not detect it), got {language!r}. Valid: {valid}.")
    code = language.strip().lower()
    if code not in LANGUAGES:
        raise LanguageError(f"Unknown language {language!r}. Valid languages: {valid}.")
    return code


def diarize_prompt_tokens(language: str) -> list[str]:
    """Audio language and transcript language are the same code: 'transcribe', with speakers and timestamps on."""
    code = check_language(language)
    return [
        "<|startofcontext|>",
        "<|startoftranscript|>",
        "<|emo:undefined|>",
        f"<|{code}|>",
        f"<|{code}|>",
        "<|pnc|>",
        "<|noitn|>",
        "<|timestamp|>",
        "<|diarize|>",
    ]


def diarize_prompt_ids(
    language: str, convert_tokens_to_ids: Callable[[list[str]], Sequence[int | None]], unk_id: int | None
) -> list[int]:
    """Resolve each marker as ONE special token; a tokenizer that lacks one cannot run the diarize task."""
    tokens = diarize_prompt_tokens(language)
    ids = list(convert_tokens_to_ids(tokens))
    missing = [t for t, i in zip(tokens, ids) if i is None or i == unk_id]
    if missing:
        raise PromptTokenError(
            f"The tokenizer has no special token for {', '.join(missing)}: this is not a diarize checkpoint "
            "(expected syvai/cohere-transcribe-diarize or a model trained with `turnscribe train`)."
        )
    return [int(i) for i in ids if i is not None]


def tokenizer_prompt_ids(tokenizer: Any, language: str) -> list[int]:
    """The diarize prompt from any tokenizer with `convert_tokens_to_ids` (transformers', or vLLM's)."""
    return diarize_prompt_ids(language, tokenizer.convert_tokens_to_ids, getattr(tokenizer, "unk_token_id", None))
