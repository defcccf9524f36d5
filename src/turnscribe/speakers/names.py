"""Known speakers' names: checked once where they enter (library, command line, server), since every output
format writes them verbatim, and a line break or a control character in one would break the file."""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

from turnscribe.types import TurnscribeError

MAX_SPEAKER_NAME_CHARS = 100  # a label in a subtitle or a Praat tier, not a description
# Control characters (newline, tab, NUL, …), lone surrogates (no UTF-8 file can hold them) and the Unicode line
# and paragraph separators, which readers treat as line breaks.
_FORBIDDEN_CATEGORIES = {"Cc", "Cs", "Zl", "Zp"}


class SpeakerNameError(TurnscribeError, ValueError):
    """A known speaker's name that an output format could not carry."""


def check_speaker_name(name: str) -> str:
    """The name without surrounding whitespace, or SpeakerNameError saying what is wrong with it."""
    if not isinstance(name, str):  # {1: clip} was an AttributeError ('int' object has no attribute 'strip')
        raise SpeakerNameError(f"a known speaker's name must be text, got {name!r} ({type(name).__name__})")
    stripped = name.strip()
    if not stripped:
        raise SpeakerNameError("a known speaker's name must not be empty")
    if len(stripped) > MAX_SPEAKER_NAME_CHARS:
        raise SpeakerNameError(
            f"known speaker name {stripped[:20]!r}… is {len(stripped)} characters; at most {MAX_SPEAKER_NAME_CHARS}"
        )
    if any(unicodedata.category(c) in _FORBIDDEN_CATEGORIES for c in stripped):
        raise SpeakerNameError(f"known speaker name {stripped!r} contains a line break or control character")
    return stripped


def check_speaker_names(names: Iterable[str]) -> list[str]:
    """Each name checked by `check_speaker_name`, and all distinct once stripped."""
    checked = [check_speaker_name(name) for name in names]
    if duplicates := sorted({name for name in checked if checked.count(name) > 1}):
        raise SpeakerNameError(f"each known speaker may be named once: {', '.join(map(repr, duplicates))}")
    return checked
