"""Output writers: a Transcript rendered as text in the formats that speech and subtitle tools read.

Each format is written through the field's own library where one exists, so the output is what that library (and the
tools built on it) reads back, rather than a hand-written approximation.
"""

from __future__ import annotations

import dataclasses
import datetime
import html
import itertools
import json
import math
import os
import secrets
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import srt
import webvtt
from meeteval.io import SegLST
from praatio.data_classes.interval_tier import IntervalTier
from praatio.textgrid import Textgrid
from pyannote.core import Annotation
from pyannote.core import Segment as Span
from webvtt.models import Timestamp

from turnscribe.types import Segment, Transcript, text_separator

DEFAULT_URI = "audio"  # the recording's name where none is given, or where the given one is blank
UNNAMED = "unnamed"  # a blank speaker's RTTM token
_TEMP_NAME_BYTES = 255 - len(".") - len(".01234567.tmp")  # room for the output's name in its temporary's


@dataclass(frozen=True)
class Writer:
    """How one format is rendered, and the file-name ending its files get."""

    extension: str
    render: Callable[[Transcript, str], str]


def format_names() -> list[str]:
    return list(FORMATS)


def _writer(fmt: str) -> Writer:
    try:
        return FORMATS[fmt]
    except KeyError:
        raise ValueError(f"unknown output format {fmt!r}; valid formats: {', '.join(format_names())}") from None


def extension(fmt: str) -> str:
    """The file-name ending, dot included, e.g. '.rttm' or '.diarized.json'."""
    return _writer(fmt).extension


def render(transcript: Transcript, fmt: str, *, uri: str = DEFAULT_URI) -> str:
    """The transcript as text in format `fmt`; `uri` names the recording where the format has a field for it."""
    text = _writer(fmt).render(transcript, uri)
    # A file name that is not UTF-8 (a Latin-1 'café.wav') reaches Python with its stray bytes as lone surrogates,
    # in `uri` and the JSON's source; no UTF-8 file can hold those, so they are written as U+FFFD.
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def write(transcript: Transcript, fmt: str, path: Path, *, uri: str) -> Path:
    """Write atomically: readers of `path` see the old file or the complete new one, never a partial one."""
    text = render(transcript, fmt, uri=uri)
    path = Path(path)
    # Same directory so os.replace is a rename within one filesystem; O_EXCL with mode 0o666 lets the umask decide
    # permissions as for any new file (mkstemp would leave the output readable by its owner only).
    tmp = _temp_path(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with open(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _temp_path(path: Path) -> Path:
    """A hidden, unique name beside `path` to write it under first. Its name is cut so that the whole stays within
    the 255 bytes a file name may have: an output whose own name fits must not fail for its temporary's."""
    name = os.fsdecode(os.fsencode(path.name)[:_TEMP_NAME_BYTES])
    return path.with_name(f".{name}.{secrets.token_hex(4)}.tmp")


def _token(name: str, placeholder: str) -> str:
    """A field of a space-separated format (RTTM): no whitespace inside, and never empty (that would drop a field)."""
    return "_".join(name.split()) or placeholder


def _speaker_tokens(transcript: Transcript) -> dict[str, str]:
    """Each speaker's RTTM token, distinct speakers' distinct: 'Ana María' and 'Ana_María' both become 'Ana_María'
    by `_token`, so the name that needs no change keeps it and the other one gets a numbered suffix."""
    names = dict.fromkeys([*transcript.speakers, *(seg.speaker for seg in transcript.segments)])
    tokens: dict[str, str] = {}
    taken: set[str] = set()
    for name in sorted(names, key=lambda name: _token(name, UNNAMED) != name):  # stable: names already tokens first
        token = base = _token(name, UNNAMED)
        for suffix in itertools.count(2):
            if token not in taken:
                break
            token = f"{base}_{suffix}"
        tokens[name] = token
        taken.add(token)
    return tokens


def _timeline(transcript: Transcript) -> list[Segment]:
    """The segments as the timed formats (txt, SRT, WebVTT, RTTM, TextGrid) show them: in start order (WebVTT
    requires it), on the millisecond grid those formats write, none before 0 and each at least a millisecond long.
    A cue that ends where it starts is dropped by srt.compose and invalid in WebVTT, an RTTM turn of 0.000 s is
    empty and a Praat interval must have length: a segment shorter than a millisecond would lose its text."""
    timed = []
    for seg in sorted(transcript.segments, key=lambda s: s.start):
        start = max(round(seg.start * 1000), 0)
        end = max(round(seg.end * 1000), start + 1)
        timed.append(dataclasses.replace(seg, start=start / 1000, end=end / 1000))
    return timed


def _merge(segments: Iterable[Segment], joins: Callable[[Segment, Segment], bool], language: str) -> list[Segment]:
    """Fold each segment into the one before it while `joins(previous, current)` holds."""
    merged: list[Segment] = []
    for seg in segments:
        if merged and joins(merged[-1], seg):
            prev = merged[-1]
            text = text_separator(language).join(t for t in (prev.text, seg.text) if t)
            merged[-1] = dataclasses.replace(prev, end=max(prev.end, seg.end), text=text)
        else:
            merged.append(seg)
    return merged


def _clock(seconds: float) -> str:
    """HH:MM:SS.mmm, rounded to the millisecond the way webvtt-py does it."""
    return str(Timestamp.from_seconds(seconds))


def _one_line(text: str) -> str:
    # A line break inside a cue could end it early (a blank line ends an SRT/VTT block).
    return " ".join(text.splitlines())


def _json(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, indent=2) + "\n"


def _diarized_json(transcript: Transcript, uri: str) -> str:
    return _json(
        {
            "task": "transcribe",
            "language": transcript.language,
            "duration": transcript.duration,
            "text": transcript.text,
            "segments": [
                {
                    "type": "transcript.text.segment",
                    "id": f"seg_{seg.id}",
                    "start": seg.start,
                    "end": seg.end,
                    "text": seg.text,
                    "speaker": seg.speaker,
                }
                for seg in transcript.segments
            ],
            "speakers": list(transcript.speakers),
            "usage": {"type": "duration", "seconds": math.ceil(transcript.duration)},
        }
    )


def _full_json(transcript: Transcript, uri: str) -> str:
    return _json(transcript.to_dict())


def _txt(transcript: Transcript, uri: str) -> str:
    turns = _merge(_timeline(transcript), lambda prev, seg: prev.speaker == seg.speaker, transcript.language)
    return "\n".join(f"[{_clock(t.start)} --> {_clock(t.end)}] {t.speaker}: {_one_line(t.text)}\n" for t in turns)


def _srt(transcript: Transcript, uri: str) -> str:
    def at(seconds: float) -> datetime.timedelta:
        return datetime.timedelta(milliseconds=round(seconds * 1000))

    # compose() numbers the cues.
    subtitles = [
        srt.Subtitle(None, at(seg.start), at(seg.end), f"{seg.speaker}: {_one_line(seg.text)}")
        for seg in _timeline(transcript)
    ]
    return srt.compose(subtitles)


def _vtt(transcript: Transcript, uri: str) -> str:
    vtt = webvtt.WebVTT()
    for seg in _timeline(transcript):
        # Cue text is markup: webvtt-py writes it verbatim, so '&', '<' and '>' must be escaped here.
        voice, text = (html.escape(s, quote=False) for s in (seg.speaker, _one_line(seg.text)))
        vtt.captions.append(webvtt.Caption(_clock(seg.start), _clock(seg.end), f"<v {voice}>{text}"))
    return vtt.content


def _rttm(transcript: Transcript, uri: str) -> str:
    annotation = Annotation(uri=_token(uri, DEFAULT_URI))
    tokens = _speaker_tokens(transcript)
    for track, seg in enumerate(_timeline(transcript)):
        # One track per segment keeps overlapping turns, even of one speaker, apart.
        annotation[Span(seg.start, seg.end), track] = tokens[seg.speaker]
    return annotation.to_rttm()


def _textgrid(transcript: Transcript, uri: str) -> str:
    timeline = _timeline(transcript)
    end = max([transcript.duration, *(seg.end for seg in timeline)])
    speakers = list(dict.fromkeys([*transcript.speakers, *(seg.speaker for seg in timeline)]))
    grid = Textgrid(0, end)
    for speaker in speakers:
        own = [s for s in timeline if s.speaker == speaker]
        # Praat intervals within a tier may not overlap, so a speaker's overlapping segments become one interval.
        intervals = _merge(own, lambda prev, seg: seg.start < prev.end, transcript.language)
        grid.addTier(IntervalTier(speaker, [(s.start, s.end, s.text) for s in intervals], 0, end))
    # praatio only saves to a path.
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "out.TextGrid"
        grid.save(str(path), format="long_textgrid", includeBlankSpaces=True)
        return path.read_text(encoding="utf-8")


def to_seglst(transcript: Transcript, uri: str = DEFAULT_URI) -> SegLST:
    """The transcript as meeteval segments, e.g. for cpWER against a reference."""
    return SegLST(
        [
            {
                "session_id": _token(uri, DEFAULT_URI),
                "speaker": seg.speaker,
                "start_time": seg.start,
                "end_time": seg.end,
                "words": seg.text,
            }
            for seg in transcript.segments
        ]
    )


def _seglst(transcript: Transcript, uri: str) -> str:
    # SegLST.dumps() needs simplejson, which only meeteval's optional extras install; the JSON is the same.
    return _json(to_seglst(transcript, uri).segments)


FORMATS: dict[str, Writer] = {
    "diarized_json": Writer(".diarized.json", _diarized_json),
    "json": Writer(".json", _full_json),
    "txt": Writer(".txt", _txt),
    "srt": Writer(".srt", _srt),
    "vtt": Writer(".vtt", _vtt),
    "rttm": Writer(".rttm", _rttm),
    "textgrid": Writer(".TextGrid", _textgrid),
    "seglst": Writer(".seglst.json", _seglst),
}
