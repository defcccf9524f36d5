"""Scoring a speaker-attributed transcript against a reference.

DER and JER come from pyannote.metrics, cpWER and tcpWER from meeteval; this module only reads the files,
lines the two sides up and collects the numbers into typed records.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TypeAlias

from meeteval.io import RTTM, STM, SegLST
from meeteval.wer import combine_error_rates
from meeteval.wer.api import cpwer, tcpwer
from meeteval.wer.normalizer import normalizers
from pyannote.core import Annotation, Segment, Timeline
from pyannote.metrics.diarization import JER_SPEAKER_COUNT, DiarizationErrorRate, JaccardErrorRate

from ..decoders.reference import ReferenceTurn
from ..formats import to_seglst
from ..types import Transcript, TurnscribeError
from .conventions import COLLARS, DEFAULT_NORMALIZER, TCP_COLLAR

FORMATS = ("rttm", "stm", "seglst")
WER_METRICS = ("cpWER", "tcpWER")

Source: TypeAlias = "str | os.PathLike[str] | Transcript | SegLST | Sequence[ReferenceTurn]"
_SEGLST_KEYS = ("session_id", "speaker", "start_time", "end_time")
IGNORED = "ignore_time_segment_in_scoring"
"""sclite's words (in any case) for a reference span that is out of bounds: nothing said in it is scored."""
GAP_SPEAKER = "inter_segment_gap"
"""sclite's speaker for a reference span in which nobody speaks."""
# sclite's optional STM label before the words, e.g. <o,f0,male>; meeteval leaves it in the words. The comma keeps a
# first word in angle brackets (<unk>, <laugh>) from being taken for one.
_STM_LABEL = re.compile(r"^<[^<>\s]*,[^<>\s]*>\s*")


class EvaluationError(TurnscribeError):
    """An input cannot be scored (missing, unreadable, unknown format, no speech); the message says which."""


@dataclass(frozen=True)
class DiarizationScores:
    """Who spoke when, scored with overlapping speech included (pyannote.metrics, skip_overlap=False)."""

    collar: float  # seconds either side of each reference boundary, not scored
    der: float  # (missed + false_alarm + confusion) / total
    jer: float
    missed: float  # seconds
    false_alarm: float
    confusion: float
    total: float  # seconds of reference speech (overlap counted once per speaker)


@dataclass(frozen=True)
class WordErrorScores:
    """Words per speaker: the best mapping of hypothesis to reference speakers, then WER (meeteval)."""

    metric: str  # "cpWER" or "tcpWER"
    collar: float | None  # tcpWER only: seconds
    error_rate: float
    errors: int
    length: int  # reference words
    insertions: int
    deletions: int
    substitutions: int
    missed_speakers: int
    false_alarm_speakers: int
    scored_speakers: int


@dataclass(frozen=True)
class EvaluationResult:
    sessions: list[str]
    ref_speakers: int  # summed over sessions
    hyp_speakers: int
    diarization: list[DiarizationScores]
    word_errors: list[WordErrorScores]  # empty when either side has no words
    normalizer: str | None
    notes: list[str] = field(default_factory=list)

    def der(self, collar: float = 0.25) -> float:
        for scores in self.diarization:
            if scores.collar == collar:
                return scores.der
        # A bare StopIteration said nothing (and inside a generator became a RuntimeError).
        scored = ", ".join(f"{d.collar:g}" for d in self.diarization)
        raise ValueError(f"no DER at collar {collar:g} s; scored at {scored} s (evaluate's collars)")

    def wer(self, metric: str = "cpWER") -> float | None:
        """The metric's rate; None when WER was skipped (a side without words)."""
        if metric not in WER_METRICS:  # a misspelt name read as "skipped"
            raise ValueError(f"unknown WER metric {metric!r}; choose from {', '.join(WER_METRICS)}")
        return next((w.error_rate for w in self.word_errors if w.metric == metric), None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def detect_format(path: Path, text: str) -> str:
    """RTTM, STM or SegLST, from the file name ending or else from the content."""
    suffix = path.suffix.lower()
    if suffix in (".rttm", ".stm"):
        return suffix[1:]
    if suffix == ".json":
        return "seglst"
    lines = [line.split() for line in text.splitlines() if line.strip() and not line.startswith(";;")]
    if text.lstrip().startswith("["):
        return "seglst"
    if lines and all(fields[0] in ("SPEAKER", "SPKR-INFO") and len(fields) in (9, 10) for fields in lines):
        return "rttm"
    if lines and all(len(fields) >= 5 and _numbers(fields[3:5]) for fields in lines):
        return "stm"
    raise EvaluationError(f"{path}: unknown format; expected RTTM (.rttm), STM (.stm) or SegLST (.json)")


def _numbers(fields: Sequence[str]) -> bool:
    try:
        [float(f) for f in fields]
    except ValueError:
        return False
    return True


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise EvaluationError(f"{path}: {'is a directory' if path.is_dir() else 'no such file'}")
    try:
        # utf-8-sig: a byte-order mark (Windows tools write one) would stick to the first line, which then was no
        # RTTM turn (dropped without a word) or an STM line of a session of its own.
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise EvaluationError(f"{path}: cannot be read as text ({exc})") from exc


def load_segments(path: str | os.PathLike[str], fmt: str | None = None) -> SegLST:
    """Read an RTTM, STM or SegLST file as meeteval segments (float times; `words` only where the format has them)."""
    path = Path(path)
    text = _read_text(path)
    fmt = fmt or detect_format(path, text)
    if fmt not in FORMATS:
        raise EvaluationError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    try:
        if fmt == "rttm":
            # Only SPEAKER lines are turns; SPKR-INFO and the like describe them.
            turns = "\n".join(line for line in text.splitlines() if line.split()[:1] == ["SPEAKER"])
            segments = RTTM.parse(turns, parse_float=float).to_seglst()
        elif fmt == "stm":
            segments = STM.parse(text, parse_float=float).to_seglst()
            segments = segments.map(lambda s: {**s, "words": _STM_LABEL.sub("", s["words"], count=1)})
        else:
            # meeteval's SegLST.load needs simplejson (an optional extra of meeteval); the format is plain JSON.
            segments = _seglst_from_json(json.loads(text))
        _check_times(segments)
    except EvaluationError as exc:
        raise EvaluationError(f"{path}: {exc}") from None
    except (ValueError, AssertionError, TypeError, KeyError, IndexError) as exc:
        # meeteval's line parsers assert on field counts and raise ValueError on bad numbers.
        raise EvaluationError(f"{path}: not a valid {fmt.upper()} file ({type(exc).__name__}: {exc})") from exc
    return segments


def _check_times(segments: SegLST) -> None:
    """Every segment a span of time. float() reads "nan" and "inf", and pyannote drops a span that ends before it
    starts: a turn was left out without a word, and an infinite one made every score NaN."""
    for number, seg in enumerate(segments, start=1):
        start, end = seg["start_time"], seg["end_time"]
        if not (math.isfinite(start) and math.isfinite(end) and end >= start):
            where = f"segment {number} ({seg['speaker']} in {seg['session_id']})"
            raise EvaluationError(f"{where} runs from {start:g} to {end:g} s: not a span of time")


def _seglst_from_json(data: Any) -> SegLST:
    if isinstance(data, dict) and "segments" in data:  # `turnscribe transcribe`'s default json, or diarized_json
        raise EvaluationError("a transcript's JSON, not SegLST: score the .seglst.json or .rttm of `-f seglst,rttm`")
    if not isinstance(data, list) or not all(isinstance(s, dict) for s in data):
        raise EvaluationError("SegLST must be a JSON list of segment objects")
    for i, seg in enumerate(data):
        missing = [k for k in _SEGLST_KEYS if k not in seg]
        if missing:
            raise EvaluationError(f"segment {i} lacks {', '.join(missing)}")
        if not isinstance(seg.get("words", ""), str):  # the normalizer and meeteval's word splitting need text
            raise EvaluationError(f"segment {i}: words must be a string, not {json.dumps(seg['words'])}")
        seg["start_time"], seg["end_time"] = float(seg["start_time"]), float(seg["end_time"])
        # Ids as text, as RTTM, STM and UEM files have them: a JSON number (session 1, speaker 0) did not match the
        # other side's "1", and numbers mixed with names could not be sorted.
        seg["session_id"], seg["speaker"] = str(seg["session_id"]), str(seg["speaker"])
    return SegLST(data)


def as_segments(source: Source, *, uri: str = "audio") -> SegLST:
    """Any accepted input as meeteval segments; a Transcript or ReferenceTurns become session `uri`."""
    if isinstance(source, SegLST):
        return source
    if isinstance(source, Transcript):
        return to_seglst(source, uri)
    if isinstance(source, (str, os.PathLike)):
        return load_segments(source)
    return SegLST(
        [
            {"session_id": uri, "speaker": t.speaker, "start_time": t.start, "end_time": t.end, "words": t.text}
            for t in source
        ]
    )


def _split_ignored(ref: SegLST) -> tuple[SegLST, dict[str, Timeline]]:
    """The reference's speech, and per session the spans it puts out of bounds (sclite's STM conventions, which
    TED-LIUM and NIST references follow). An `inter_segment_gap` line is no one's speech: the hypothesis is scored
    there as in any pause, unless the line's words also say IGNORE_TIME_SEGMENT_IN_SCORING."""
    speech: list[dict[str, Any]] = []
    ignored: dict[str, Timeline] = {}
    for seg in ref:
        if str(seg.get("words", "")).strip().lower() == IGNORED:
            span = Segment(float(seg["start_time"]), float(seg["end_time"]))
            ignored.setdefault(seg["session_id"], Timeline()).add(span)
        elif seg["speaker"] != GAP_SPEAKER:
            speech.append(seg)
    return SegLST(speech), ignored


def load_uem(path: str | os.PathLike[str]) -> dict[str, Timeline]:
    """A NIST UEM file (as md-eval, dscore and pyannote read it): `<recording> <channel> <start> <end>` per scored
    span, ';;' comments. Returns each recording's scored spans."""
    path = Path(path)
    spans: dict[str, Timeline] = {}
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip() or line.startswith(";;"):
            continue
        try:
            recording, _channel, start, end = line.split()
            span = Segment(float(start), float(end))
        except ValueError:
            expected = "'<recording> <channel> <start> <end>'"
            raise EvaluationError(f"{path}:{number}: expected {expected}, got {line!r}") from None
        if not (math.isfinite(span.start) and math.isfinite(span.end) and span.end > span.start):
            # An empty or backwards span scored nothing there without a word (dscore refuses it too).
            raise EvaluationError(f"{path}:{number}: the span from {start} to {end} s is not a span of time")
        spans.setdefault(recording, Timeline()).add(span)
    if not spans:
        raise EvaluationError(f"{path}: no spans to score")
    return spans


@dataclass(frozen=True)
class _Bounds:
    """What is scored of each session: the UEM's spans (all of it where no UEM is given) less the ignored spans."""

    uem: dict[str, Timeline] | None
    ignored: dict[str, Timeline]

    def timeline(self, session: str, end: float) -> Timeline:
        scored = self.uem[session] if self.uem is not None else Timeline([Segment(0.0, end)])
        return scored.extrude(self.ignored.get(session, Timeline()))

    def holds(self, seg: dict[str, Any]) -> bool:
        """Whether a segment's words are scored, by its middle: sclite keeps or leaves out each word by the time of its
        middle, and a segment's words have no times of their own."""
        middle = (float(seg["start_time"]) + float(seg["end_time"])) / 2
        session = seg["session_id"]
        in_uem = self.uem is None or _covers(self.uem[session], middle)
        return in_uem and not _covers(self.ignored.get(session, Timeline()), middle)


def _covers(spans: Timeline, time: float) -> bool:
    return any(span.start <= time <= span.end for span in spans)


def _has_words(segments: SegLST) -> bool:
    return all("words" in s for s in segments)


def _annotation(segments: SegLST, session: str) -> Annotation:
    """Who speaks when in `session`: each speaker's segments merged where they overlap or touch, as md-eval and
    dscore merge a speaker's turns. pyannote scores each track, so a speaker's two overlapping segments would count
    as two voices there (a false alarm in the hypothesis, speech to find twice in the reference)."""
    annotation = Annotation(uri=session)
    for track, seg in enumerate(s for s in segments if s["session_id"] == session):
        # One track per segment: a speaker's own overlapping segments must not overwrite each other.
        annotation[Segment(float(seg["start_time"]), float(seg["end_time"])), track] = str(seg["speaker"])
    return annotation.support()


def _line_up(ref: SegLST, hyp: SegLST, known: set[str], notes: list[str]) -> tuple[list[str], SegLST]:
    """Sessions to score, and the hypothesis renamed so that its sessions are the reference's. `known` holds every
    session the reference names, those with no speech (all out of bounds or pauses) included."""
    ref_sessions = sorted(ref.unique("session_id"))
    hyp_sessions = sorted(hyp.unique("session_id"))
    if len(ref_sessions) == 1 and len(hyp_sessions) == 1 and hyp_sessions[0] not in known:
        # One recording each: file ids often differ (a file stem vs a corpus id) and still mean the same thing.
        notes.append(f"hypothesis session {hyp_sessions[0]!r} scored as reference session {ref_sessions[0]!r}")
        hyp = hyp.map(lambda s: {**s, "session_id": ref_sessions[0]})
    extra = sorted(set(hyp.unique("session_id")) - known)
    if extra:
        raise EvaluationError(f"hypothesis has sessions the reference lacks: {', '.join(map(str, extra))}")
    missing = sorted(set(ref_sessions) - set(hyp.unique("session_id")))
    if missing:
        notes.append(f"no hypothesis for session(s) {', '.join(map(str, missing))}: scored as silence")
    # A session whose reference is all out of bounds is still scored where the hypothesis has it: speech outside
    # the ignored spans is a false alarm, as in any other recording.
    return sorted({*ref_sessions, *hyp.unique("session_id")}), hyp


def _diarization(ref: SegLST, hyp: SegLST, sessions: list[str], collar: float, bounds: _Bounds) -> DiarizationScores:
    # pyannote's collar is the whole width, centred on the boundary: twice the NIST "either side" value.
    der = DiarizationErrorRate(collar=2 * collar, skip_overlap=False)
    jer = JaccardErrorRate(collar=2 * collar, skip_overlap=False)
    for session in sessions:
        reference, hypothesis = _annotation(ref, session), _annotation(hyp, session)
        # No segments at all: a session whose reference turns are all 0 s long, and no hypothesis for it.
        end = max((s.end for s in (*reference.itersegments(), *hypothesis.itersegments())), default=0.0)
        # An explicit UEM instead of pyannote's guessed one.
        uem = bounds.timeline(session, end)
        der(reference, hypothesis, uem=uem)
        jer(reference, hypothesis, uem=uem)
    parts = der.accumulated_
    jaccard = abs(jer)
    if jer.accumulated_[JER_SPEAKER_COUNT] == 0 and parts["false alarm"] == 0:
        # No reference speech left to score (every turn within its collars) and no hypothesis speech either: nothing
        # is wrong. pyannote's JER says 100 % there, where its DER says 0 and dscore's JER says 0.
        jaccard = 0.0
    return DiarizationScores(
        collar=collar,
        der=abs(der),
        jer=jaccard,
        missed=parts["missed detection"],
        false_alarm=parts["false alarm"],
        confusion=parts["confusion"],
        total=parts["total"],
    )


def _pad(segments: SegLST, sessions: set[str]) -> SegLST:
    """One empty segment for each of `sessions` that `segments` lack: meeteval refuses a session that one side lacks,
    and scores the empty one as all deletions (or insertions)."""
    present = set(segments.unique("session_id"))
    empty = {"speaker": "", "start_time": 0.0, "end_time": 0.0, "words": ""}
    return segments + SegLST([{"session_id": s, **empty} for s in sorted(sessions - present)])


def _word_errors(ref: SegLST, hyp: SegLST, tcp_collar: float, normalizer: str | None) -> list[WordErrorScores]:
    if normalizer is not None:
        try:
            normalizers[normalizer]  # an unknown name is meeteval's ValueError, which says what there is
        except ModuleNotFoundError:
            # meeteval's chime6/7/8 normalizers come from chime-utils: not on PyPI, not a dependency of meeteval.
            source = "git+https://github.com/chimechallenge/chime-utils"
            raise EvaluationError(f"the {normalizer} normalizer needs chime-utils (pip install {source})") from None
    # A session the hypothesis left out (or that has no words in the scored spans on one side, as a UEM or ignored
    # spans can leave it) is padded with an empty segment; the padding's empty speaker is then taken out of the
    # speaker counts.
    ref_sessions, hyp_sessions = set(ref.unique("session_id")), set(hyp.unique("session_id"))
    scored = ref_sessions | hyp_sessions
    ref, hyp = _pad(ref, scored), _pad(hyp, scored)
    scores = []
    for name, collar in (("cpWER", None), ("tcpWER", tcp_collar)):
        # meeteval's normalizer edits segments in place: give it copies.
        r, h = SegLST(copy.deepcopy(ref.segments)), SegLST(copy.deepcopy(hyp.segments))
        if collar is None:
            per_session = cpwer(r, h, normalizer=normalizer)
        else:
            per_session = tcpwer(r, h, collar=collar, normalizer=normalizer)
        for session in scored - ref_sessions:  # no one to find: each hypothesis speaker is extra
            er = per_session[session]
            per_session[session] = replace(er, scored_speaker=0, missed_speaker=0, falarm_speaker=er.falarm_speaker + 1)
        for session in scored - hyp_sessions:  # no one found: each reference speaker is missed
            er = per_session[session]
            per_session[session] = replace(er, missed_speaker=er.scored_speaker, falarm_speaker=0)
        total = combine_error_rates(per_session)
        # No reference words (meeteval's rate is None): inserted words are all error, as pyannote's DER has it for
        # speech where the reference has none; 0 % read as a perfect hypothesis.
        rate = total.error_rate if total.error_rate is not None else float(total.errors > 0)
        scores.append(
            WordErrorScores(
                metric=name,
                collar=collar,
                error_rate=float(rate),
                errors=total.errors,
                length=total.length,
                insertions=total.insertions,
                deletions=total.deletions,
                substitutions=total.substitutions,
                missed_speakers=total.missed_speaker,
                false_alarm_speakers=total.falarm_speaker,
                scored_speakers=total.scored_speaker,
            )
        )
    return scores


def evaluate(
    ref: Source,
    hyp: Source,
    *,
    collars: Sequence[float] = COLLARS,
    tcp_collar: float = TCP_COLLAR,
    normalizer: str | None = DEFAULT_NORMALIZER,
    uri: str = "audio",
    uem: str | os.PathLike[str] | dict[str, Timeline] | None = None,
) -> EvaluationResult:
    """Score `hyp` against `ref`: DER and JER at each collar; cpWER and tcpWER when both sides have words.

    Each side is a path (RTTM, STM or SegLST), a Transcript, meeteval segments, or ReferenceTurns; the last
    two kinds of in-memory input are session `uri`. A lone session on each side is scored as one recording
    whatever its name. `uem` (a UEM file, or each session's spans) limits scoring to its spans.
    """
    all_ref = as_segments(ref, uri=uri)
    ref_segments, ignored = _split_ignored(all_ref)
    hyp_segments = as_segments(hyp, uri=uri)
    if not any(s["end_time"] > s["start_time"] for s in ref_segments):
        raise EvaluationError("the reference has no speech: there is nothing to score against")
    notes: list[str] = []
    sessions, hyp_segments = _line_up(ref_segments, hyp_segments, set(all_ref.unique("session_id")), notes)
    if isinstance(uem, (str, os.PathLike)):
        uem = load_uem(uem)
    if uem is not None and (unbounded := [s for s in sessions if s not in uem]):
        raise EvaluationError(f"the UEM has no spans for session(s) {', '.join(map(str, unbounded))}")
    bounds = _Bounds(uem, ignored)
    diarization = [_diarization(ref_segments, hyp_segments, sessions, c, bounds) for c in collars]
    for scores in diarization:
        if scores.total == 0:
            # Turns shorter than two collars vanish: a DER and JER of 0 there would otherwise read as a perfect score.
            where = "within the collars or outside the scored spans"
            notes.append(f"DER and JER at collar {scores.collar:g} s score no reference speech: all of it lies {where}")
    word_errors: list[WordErrorScores] = []
    if _has_words(ref_segments) and _has_words(hyp_segments):
        scored_ref, scored_hyp = ref_segments.filter(bounds.holds), hyp_segments.filter(bounds.holds)
        if scored_ref or scored_hyp:
            word_errors = _word_errors(scored_ref, scored_hyp, tcp_collar, normalizer)
        else:  # meeteval refuses an empty reference
            notes.append("cpWER and tcpWER skipped: no words lie in the scored spans")
    else:
        side = "reference" if not _has_words(ref_segments) else "hypothesis"
        notes.append(f"cpWER and tcpWER skipped: the {side} has no words (RTTM carries none)")

    def speakers(segments: SegLST) -> int:
        return sum(len({s["speaker"] for s in segments if s["session_id"] == session}) for session in sessions)

    return EvaluationResult(
        sessions=sessions,
        ref_speakers=speakers(ref_segments),
        hyp_speakers=speakers(hyp_segments),
        diarization=diarization,
        word_errors=word_errors,
        normalizer=normalizer,
        notes=notes,
    )
