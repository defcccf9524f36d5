"""Model output → window-local segments.

The grammar is ``<|spltokenN|><|t:S|> text <|t:E|>`` repeated. The model card's regex silently drops
whatever does not match; this parser walks the token stream instead, keeps every word it can, and
records each repair so that nothing is lost without a trace. It never raises on model output.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .types import LocalSegment, ParsedWindow, Repair

_TOKEN_RE = re.compile(r"<\|[^|<>]*\|>")
_SPEAKER_RE = re.compile(r"<\|spltoken(\d+)\|>")
_TIME_RE = re.compile(r"<\|t:(\d+(?:\.\d+)?)\|>")
_END_TOKENS = ("<|endoftext|>",)
# What is left of a token cut in half (a truncated stream ends in "<|t:2"), or an unpaired marker.
_TOKEN_RESIDUE_RE = re.compile(r"<\|\S*|\S*\|>")
# The prompt echoed back by generate(): control tokens up to the diarize marker. Only at the start, and with no
# speaker or time token in it: a marker the model emits later is a stray token, and what came before it is speech.
_PROMPT_ECHO_RE = re.compile(r"\s*(?:<\|(?!spltoken|t:)[^|<>]*\|>\s*)*?<\|diarize\|>")

TIME_STEP = 0.1
# The file timeline is rounded to the millisecond: a segment shorter (a time clamped to a window ending just past a
# 0.1 s step) would come out with end == start.
MIN_LENGTH = 1e-3
MAX_REPEATS = 2
"""A phrase repeated back-to-back more than this many times is a decoding loop, not speech."""


@dataclass
class _Open:
    slot: int | None
    start: float | None
    words: list[str] = field(default_factory=list)


class _Parser:
    def __init__(self, window_duration: float, window: int | None) -> None:
        self.window_duration = window_duration
        self.window = window
        self.segments: list[LocalSegment] = []
        self.repairs: list[Repair] = []
        self.slot: int | None = None
        # False once a segment has used the last speaker token: the grammar wants one per segment.
        self.slot_fresh = False
        self.open: _Open | None = None
        # Segments cut short by the next speaker token, their end token missing: they end at the next time token.
        self.unended: list[_Open] = []
        self.last_end = 0.0

    def repair(self, kind: str, detail: str) -> None:
        self.repairs.append(Repair(kind, detail, self.window))

    def clamp(self, t: float) -> float:
        if t > self.window_duration + 1e-6:
            self.repair("time_past_window", f"{t:.1f}s clamped to the window's {self.window_duration:.1f}s")
            return self.window_duration
        return t

    def speaker(self, slot: int) -> None:
        if self.open is not None and self.open.words:
            # A new speaker token while text is open: the end timestamp is missing. The next time token bounds it
            # (the next segment's start); the window's end would stretch it over every segment after it.
            self.unended.append(self.open)
            self.open = None
        elif self.open is not None:
            self.repair("repeated_speaker_token", f"spltoken{self.open.slot} replaced by spltoken{slot}")
            self.open = None
        self.slot = slot
        self.slot_fresh = True

    def new_segment(self, start: float | None, what: str) -> _Open:
        if not self.slot_fresh:
            self.repair("missing_speaker", f"{what} without a speaker token: given the previous speaker or 0")
        self.slot_fresh = False
        self.open = _Open(self.slot if self.slot is not None else 0, start)
        return self.open

    def time(self, t: float) -> None:
        t = self.clamp(t)
        self.end_unended(t)
        if self.open is None:
            self.new_segment(t, f"segment at {t:.1f}s")
        elif self.open.start is None:
            self.open.start = t
        else:
            self.close_open(t)

    def text(self, chunk: str) -> None:
        cleaned = _TOKEN_RESIDUE_RE.sub(" ", chunk)
        if cleaned != chunk:
            self.repair("stray_token", f"token fragment removed from {chunk.strip()[:40]!r}")
        words = cleaned.split()
        if not words:
            return
        segment = self.open
        if segment is None:
            segment = self.new_segment(self.last_start(), f"text {' '.join(words)[:40]!r}")
            self.repair("missing_start", f"text without a start time starts at {segment.start:.1f}s")
        elif segment.start is None:
            segment.start = self.last_start()
            self.repair("missing_start", f"speaker token followed by text: start set to {segment.start:.1f}s")
        segment.words.extend(words)

    def last_start(self) -> float:
        """Where text without a start time starts: at the last end, or with the segment whose end is missing."""
        return self.unended[-1].start if self.unended and self.unended[-1].start is not None else self.last_end

    def end_unended(self, end: float | None) -> None:
        for segment in self.unended:
            self.close(segment, end, missing_end=True)
        self.unended = []

    def close_open(self, end: float | None) -> None:
        assert self.open is not None
        segment, self.open = self.open, None
        self.close(segment, end)

    def close(self, seg: _Open, end: float | None, missing_end: bool = False) -> None:
        """End a segment at `end`; None: the stream stopped first, and the speech ran on to the window's end at most."""
        start = seg.start if seg.start is not None else self.last_end
        if end is None or missing_end:
            end = self.window_duration if end is None else end
            kind = "missing_end" if missing_end else "truncated"
            self.repair(kind, f"segment at {start:.1f}s had no end time; ended at {end:.1f}s")
        if not seg.words:
            self.repair("empty_text", f"segment {start:.1f}-{end:.1f}s with no words dropped")
            # Its times still say where the stream is: text after it that lacks a start time begins there.
            self.last_end = max(start, end)
            return
        if end < start:
            self.repair("end_before_start", f"{start:.1f}s > {end:.1f}s: times swapped")
            start, end = end, start
        if end - start < MIN_LENGTH:
            end = min(start + TIME_STEP, self.window_duration)
            start = min(start, max(0.0, end - TIME_STEP))
            self.repair("zero_length", f"segment at {start:.1f}s widened to one {TIME_STEP}s step")
        text = collapse_repetitions(" ".join(seg.words))
        if text != " ".join(seg.words):
            self.repair("repetition_loop", f"repeated phrase collapsed in segment at {start:.1f}s")
        slot = seg.slot if seg.slot is not None else 0
        self.last_end = end
        segment = LocalSegment(slot, start, end, text)
        if segment in self.segments:
            # One speaker cannot say the same words twice over the same stretch: the decoder went back over it.
            self.repair("repetition_loop", f"segment {text[:40]!r} at {start:.1f}s said again, same times: dropped")
            return
        if len(self.segments) >= MAX_REPEATS and all(
            s.slot == slot and s.text == text for s in self.segments[-MAX_REPEATS:]
        ):
            self.repair("repetition_loop", f"segment {text[:40]!r} repeated again: dropped")
            return
        self.segments.append(segment)

    def finish(self) -> None:
        self.end_unended(None)
        if self.open is not None:
            if self.open.words:
                self.close_open(None)
            else:
                self.repair("empty_text", "trailing speaker/time tokens with no words dropped")
                self.open = None


def collapse_repetitions(text: str) -> str:
    """Collapse a word n-gram that repeats back-to-back more than MAX_REPEATS times to MAX_REPEATS copies."""
    words = text.split()
    out: list[str] = []
    i = 0
    while i < len(words):
        # Any length of phrase (a greedy decoder loops on whole sentences); only where the phrase could restart.
        lengths = range(1, (len(words) - i) // (MAX_REPEATS + 1) + 1)
        for n in (n for n in lengths if words[i + n] == words[i]):
            gram = words[i : i + n]
            reps = 1
            while words[i + reps * n : i + (reps + 1) * n] == gram:
                reps += 1
            if reps > MAX_REPEATS:
                out.extend(gram * MAX_REPEATS)
                i += reps * n
                break
        else:
            out.append(words[i])
            i += 1
    return " ".join(out)


def strip_prompt(raw: str) -> str:
    if echo := _PROMPT_ECHO_RE.match(raw):
        raw = raw[echo.end() :]
    for end in _END_TOKENS:
        if end in raw:
            raw = raw.split(end, 1)[0]
    return raw


def parse_window(raw: str, window_duration: float = 30.0, window: int | None = None) -> ParsedWindow:
    """Parse one window's decoded token stream (special tokens kept) into window-local segments."""
    parser = _Parser(window_duration, window)
    body = strip_prompt(raw)
    pos = 0
    for match in _TOKEN_RE.finditer(body):
        parser.text(body[pos : match.start()])
        pos = match.end()
        token = match.group(0)
        if m := _SPEAKER_RE.fullmatch(token):
            parser.speaker(int(m.group(1)))
        elif m := _TIME_RE.fullmatch(token):
            parser.time(float(m.group(1)))
        else:
            parser.repair("stray_token", f"{token} removed")
    parser.text(body[pos:])
    parser.finish()
    return ParsedWindow(parser.segments, parser.repairs)


def format_segments(segments: list[LocalSegment]) -> str:
    """The model's grammar for given segments: what a perfect decoder would emit (used by scripted decoders)."""
    return (
        "".join(f"<|spltoken{s.slot}|><|t:{s.start:.1f}|> {s.text} <|t:{s.end:.1f}|>" for s in segments)
        + "<|endoftext|>"
    )
