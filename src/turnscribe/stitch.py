"""Window-local segments → one file timeline, with the overlap between neighbouring windows resolved.

The rule (documented in the README):

* Every segment is shifted by its window's start.
* Where window i and window i+1 overlap, a segment of window i that reaches into the overlap and a
  segment of window i+1 that starts inside it are the SAME speech when they overlap (or touch) in time and
  their words align (longest common run of normalised words, at least two words, or all the words
  of a one-word segment). They merge into one segment: window i's words up to the end of the
  aligned run, then window i+1's words after it. Words window i heard cut off at its right edge and
  words window i+1 heard cut off at its left edge are the ones dropped; every word heard whole by
  either window is kept exactly once.
* An utterance both windows heard whole inside the overlap, at the same times and with at least half its words
  agreeing, is kept once (window i's): a word heard differently leaves no run of two to align (see _twins).
* A segment whose words a merged segment already holds (the same slot of its window, overlapping it in
  time) is dropped: one window split at a pause the speech that the other window heard as one segment.
* Segments that find no partner are kept as they are: two people talking over each other in the
  overlap stay two segments, and speech only one window transcribed is not lost.
* A merge records that (window i, slot a) and (window i+1, slot b) spoke the same words: evidence the
  speaker stage may use.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from difflib import Match, SequenceMatcher

from .types import ParsedWindow, Repair, StitchedSegment, WindowSpan

_NORMALISE_RE = re.compile(r"[\W_]+", re.UNICODE)
MIN_ALIGNED_WORDS = 2
# Two passes place the same boundary up to two 0.1 s steps apart (see _twins).
TWIN_TOLERANCE_S = 0.25


@dataclass
class _Piece:
    start: float
    end: float
    words: list[str]
    window: int
    slot: int
    also_seen_as: list[tuple[int, int]] = field(default_factory=list)


def _char_units(text: str) -> tuple[list[str], list[int]]:
    """The normalised characters of text, and for each the position in text just past it: punctuation and spaces
    are no units (they do not align), yet a merge cuts the text itself, so they stay in the merged segment."""
    units: list[str] = []
    ends: list[int] = []
    for position, char in enumerate(text):
        for unit in _NORMALISE_RE.sub("", char.lower()):
            units.append(unit)
            ends.append(position + 1)
    return units, ends


def _units(words: list[str], char_level: bool) -> list[str]:
    if char_level:
        return _char_units(" ".join(words))[0]
    return [_NORMALISE_RE.sub("", w.lower()) for w in words]


def _meet(a: _Piece, b: _Piece) -> bool:
    """Whether two pieces overlap in time or touch: two decoder passes may place one word boundary a 0.1 s step
    apart, so the same speech can end in one window where it starts in the other."""
    return min(a.end, b.end) >= max(a.start, b.start)


def _longest_run(ua: list[str], ub: list[str], needed: int) -> Match | None:
    """The longest run of units a and b share, if `needed` long; of several as long, the one that leaves out the
    fewest units (a's after it, b's before it). b's speech follows a's, so where a says a word twice ("the ... the")
    and b heard only the last, the first would cut a short and drop everything a heard after it."""
    matcher = SequenceMatcher(None, ua, ub, autojunk=False)
    best = match = matcher.find_longest_match(0, len(ua), 0, len(ub))
    if match.size == 0 or match.size < needed:
        return None  # before looking for ties: runs of one character would be many
    while match.size == best.size:
        if len(ua) - match.a - match.size + match.b < len(ua) - best.a - best.size + best.b:
            best = match
        match = matcher.find_longest_match(match.a + 1, len(ua), 0, len(ub))
    return best


def _align(a: _Piece, b: _Piece, char_level: bool) -> tuple[int, int] | None:
    """Where the aligned run ends in a and starts-after in b, or None if a and b are not the same speech."""
    if not _meet(a, b):
        return None
    ua, ub = _units(a.words, char_level), _units(b.words, char_level)
    match = _longest_run(ua, ub, min(MIN_ALIGNED_WORDS if not char_level else 4, len(ua), len(ub)))
    if match is None:
        return None
    # For scripts without spaces these are character positions in the joined text (see _merge).
    return match.a + match.size, match.b + match.size


def _merge(a: _Piece, b: _Piece, cut: tuple[int, int], char_level: bool) -> _Piece:
    end_a, start_b = cut
    if char_level:
        # a's text up to its last aligned character, then b's from just past its own (with what follows it).
        text_a, text_b = " ".join(a.words), " ".join(b.words)
        cut_a, cut_b = _char_units(text_a)[1][end_a - 1], _char_units(text_b)[1][start_b - 1]
        words = (text_a[:cut_a] + text_b[cut_b:]).split()
    else:
        words = a.words[:end_a] + b.words[start_b:]
    return _Piece(
        start=min(a.start, b.start),
        end=max(a.end, b.end),
        words=words,
        window=a.window,
        slot=a.slot,
        also_seen_as=[*a.also_seen_as, (b.window, b.slot), *b.also_seen_as],
    )


def _repeats(piece: _Piece, words: list[str], merged: _Piece, char_level: bool) -> bool:
    """Whether `piece` is speech `merged` already holds: the same slot of the same window went into the merge,
    they overlap in time, and `words` (the piece's) are a run of the merged words."""
    if (piece.window, piece.slot) not in {(merged.window, merged.slot), *merged.also_seen_as}:
        return False
    if not _meet(piece, merged):
        return False
    units, host = _units(words, char_level), _units(merged.words, char_level)
    match = SequenceMatcher(None, units, host, autojunk=False).find_longest_match(0, len(units), 0, len(host))
    return bool(units) and match.size == len(units)


def _twins(a: _Piece, b: _Piece, overlap: tuple[float, float], char_level: bool) -> bool:
    """Whether a and b are one utterance that both windows heard whole, a word or so told apart: both lie inside the
    overlap, at the same times, and at least half their words agree. With one word of two different ("Yes,
    exactly." / "Yeah, exactly.") no run of two words aligns, and the utterance came out twice. Two people speaking
    there would each be heard by both windows, and paired by the merges first."""
    start, end = overlap[0] - TWIN_TOLERANCE_S, overlap[1] + TWIN_TOLERANCE_S
    if not all(start <= p.start and p.end <= end for p in (a, b)):
        return False
    if abs(a.start - b.start) > TWIN_TOLERANCE_S or abs(a.end - b.end) > TWIN_TOLERANCE_S:
        return False
    return (
        SequenceMatcher(None, _units(a.words, char_level), _units(b.words, char_level), autojunk=False).ratio() >= 0.5
    )


def stitch(
    windows: Sequence[tuple[WindowSpan, ParsedWindow]], *, char_level: bool = False
) -> tuple[list[StitchedSegment], list[Repair]]:
    """Place every window's segments on the file timeline and resolve the overlaps (see module docstring)."""
    ordered = sorted(windows, key=lambda item: item[0].index)
    pieces: list[list[_Piece]] = [
        [_Piece(span.start + s.start, span.start + s.end, s.text.split(), span.index, s.slot) for s in parsed.segments]
        for span, parsed in ordered
    ]
    repairs: list[Repair] = []
    for i in range(len(ordered) - 1):
        overlap_start, overlap_end = ordered[i + 1][0].start, ordered[i][0].end
        left = [p for p in pieces[i] if p.end > overlap_start]
        right = [p for p in pieces[i + 1] if p.start < overlap_end]
        candidates = []
        for a in left:
            for b in right:
                cut = _align(a, b, char_level)
                if cut is not None:
                    overlap = min(a.end, b.end) - max(a.start, b.start)
                    candidates.append((overlap, a, b, cut))
        used: set[int] = set()
        merges: list[_Piece] = []
        for _, a, b, cut in sorted(candidates, key=lambda c: -c[0]):
            if id(a) in used or id(b) in used:
                continue
            used.update((id(a), id(b)))
            merged = _merge(a, b, cut, char_level)
            merges.append(merged)
            pieces[i].remove(a)
            pieces[i + 1][pieces[i + 1].index(b)] = merged
            repairs.append(
                Repair("overlap_merged", f"{a.start:.1f}-{b.end:.1f}s decoded by windows {i} and {i + 1}", i + 1)
            )
        for a in [p for p in left if id(p) not in used]:
            twin = next(
                (b for b in right if id(b) not in used and _twins(a, b, (overlap_start, overlap_end), char_level)), None
            )
            if twin is not None:
                used.update((id(a), id(twin)))
                a.also_seen_as.append((twin.window, twin.slot))
                pieces[i + 1].remove(twin)
                repairs.append(
                    Repair(
                        "overlap_merged", f"{a.start:.1f}-{a.end:.1f}s heard whole by windows {i} and {i + 1}", i + 1
                    )
                )
        # One window may split speech in two segments (at a pause) that the other heard as one: the merge keeps
        # the whole of it, and the other half's segment would say its words twice.
        for side, unmerged, at_window_start in ((pieces[i], left, False), (pieces[i + 1], right, True)):
            for piece in [p for p in unmerged if id(p) not in used]:
                words = piece.words
                # The word a window heard at its edge may be cut off: it need not be among the merged words.
                if (piece.start <= overlap_start if at_window_start else piece.end >= overlap_end) and len(words) > 1:
                    words = words[1:] if at_window_start else words[:-1]
                host = next((m for m in merges if _repeats(piece, words, m, char_level)), None)
                if host is not None:
                    side.remove(piece)
                    repairs.append(
                        Repair(
                            "overlap_repeated",
                            f"{piece.start:.1f}-{piece.end:.1f}s repeats words of the segment merged at "
                            f"{host.start:.1f}-{host.end:.1f}s: dropped",
                            i + 1,
                        )
                    )
    stitched = [
        StitchedSegment(
            start=round(p.start, 3),
            end=round(p.end, 3),
            text=" ".join(p.words),
            window=p.window,
            slot=p.slot,
            also_seen_as=tuple(p.also_seen_as),
        )
        for window_pieces in pieces
        for p in window_pieces
        if p.words
    ]
    stitched.sort(key=lambda s: (s.start, s.end))
    return stitched, repairs
