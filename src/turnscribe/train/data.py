"""Training data in the model's grammar, prepared with lhotse and written as shuffled Lhotse Shar shards.

Three sources, as the model card's recipe and users need them:

* AMI SDM (``lhotse.recipes.prepare_ami`` on a local copy): each meeting cut into 28 s windows every 14 s,
  windows with more than 4 speakers left out.
* Synthetic K-speaker mixtures of any single-speaker corpus (LibriSpeech through
  ``lhotse.recipes.prepare_librispeech``, or any CutSet): K = 1…4 weighted 0.2/0.3/0.3/0.2, utterances of
  K different speakers one after another with conversational gaps and, optionally, some overlap.
* A user corpus: audio files and, for each, a reference with words (SegLST or STM, what ``turnscribe eval``
  reads), windowed like AMI.

Every window becomes a 16 kHz cut (training averages its channels, as transcription does) whose ``custom`` holds
``target`` (the token string a perfect model emits for it, made by ``decoders.reference.reference_output``: slots
local to the window in order of first appearance, times in 0.1 s steps) and ``language``.
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import random
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from ..decoders.reference import MIN_VISIBLE_S, ReferenceTurn, reference_output
from ..parse import parse_window
from ..prompt import SPEAKER_TOKENS, check_language
from ..types import SAMPLE_RATE, TurnscribeError, WindowSpan
from ..windows import MAX_WINDOW_S

log = logging.getLogger(__name__)

SHARD_FIELDS = {"recording": "flac"}
SUMMARY_FILE = "summary.json"
_EDGE_TOLERANCE_S = 0.01
LAST_TIME_S = 29.9  # the last timestamp token, <|t:29.9|>: speech that runs on to 30.0 s ends there in a target
AmiText = Literal["kaldi", "punctuated"]


class DataPreparationError(TurnscribeError):
    pass


@dataclass(frozen=True)
class WindowConfig:
    window_s: float = 28.0
    hop_s: float = 14.0
    max_speakers: int = 4
    min_duration_s: float = 1.0  # a recording's last window may be shorter; shorter than this it is left out

    def __post_init__(self) -> None:
        if not 0 < self.window_s <= MAX_WINDOW_S or self.hop_s <= 0:
            raise DataPreparationError(
                f"windows must be in (0, {MAX_WINDOW_S:g}] s (one decoder pass) with a positive hop, "
                f"got {self.window_s:g} s every {self.hop_s:g} s"
            )
        _check_speakers(self.max_speakers)


@dataclass(frozen=True)
class MixtureConfig:
    count: int
    speaker_weights: tuple[float, ...] = (0.2, 0.3, 0.3, 0.2)  # P(K = 1), P(K = 2), …
    max_duration_s: float = 28.0
    gap_median_s: float = 0.4  # pauses between turns: log-normal around this, as in conversation
    gap_sigma: float = 0.6
    max_gap_s: float = 2.0
    overlap_probability: float = 0.0  # chance that a turn starts before the previous one has ended
    max_overlap_s: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.max_duration_s <= MAX_WINDOW_S:
            raise DataPreparationError(
                f"mixtures must be in (0, {MAX_WINDOW_S:g}] s (one decoder pass), got {self.max_duration_s:g} s"
            )
        _check_speakers(len(self.speaker_weights))


def _check_speakers(count: int) -> None:
    # A ninth speaker would need <|spltoken8|>, which is no token.
    if not 1 <= count <= len(SPEAKER_TOKENS):
        raise DataPreparationError(f"a window holds 1 to {len(SPEAKER_TOKENS)} speakers (one token each), got {count}")


@dataclass
class SplitSummary:
    windows: int = 0
    seconds: float = 0.0
    speakers: dict[int, int] = field(default_factory=dict)  # speakers per window → windows
    dropped: dict[str, int] = field(default_factory=dict)  # reason → windows left out


@dataclass(frozen=True)
class WindowTarget:
    target: str
    speakers: int


# --- targets -------------------------------------------------------------------------------------------------


def _join_words(words: Iterable[str]) -> str:
    # AMI's punctuated words come with their own spacing (" word", ","): normalise to single spaces, none before
    # punctuation.
    text = " ".join(w.strip() for w in words if w.strip())
    return re.sub(r" ([.,?!;:])", r"\1", text)


def window_turns(cut: Any) -> list[ReferenceTurn] | None:
    """The speech of a window cut as turns in window time; None if a turn is cut by the window's edge and its
    words carry no times (which of them fall inside cannot be told)."""
    duration = cut.duration
    turns = []
    for sup in cut.supervisions:
        text = (sup.text or "").strip()
        if not text or sup.speaker is None:
            continue
        if sup.start >= -_EDGE_TOLERANCE_S and sup.end <= duration + _EDGE_TOLERANCE_S:
            turns.append(ReferenceTurn(max(sup.start, 0.0), _window_end(sup.end, duration), str(sup.speaker), text))
            continue
        if min(sup.end, duration) - max(sup.start, 0.0) < MIN_VISIBLE_S:
            continue  # reference_output leaves such slivers out anyway
        words = (sup.alignment or {}).get("word")
        if not words:
            return None
        # lhotse keeps word alignments in recording time when it cuts windows: shift by the window's offset.
        inside = [w for w in words if 0.0 <= w.start + w.duration / 2 - cut.start <= duration]
        if inside:
            start = max(inside[0].start - cut.start, 0.0)
            end = _window_end(inside[-1].end - cut.start, duration)
            turns.append(ReferenceTurn(start, end, str(sup.speaker), _join_words(w.symbol for w in inside)))
    return turns


def _window_end(end: float, duration: float) -> float:
    return min(end, duration, LAST_TIME_S)


def window_target(cut: Any, max_speakers: int) -> WindowTarget | str:
    """The target token string of a window cut, or the reason it is left out."""
    turns = window_turns(cut)
    if turns is None:
        return "turn_cut_at_edge"
    span = WindowSpan(0, 0, round(cut.duration * SAMPLE_RATE))
    target = reference_output(span, turns)
    speakers = len({s.slot for s in parse_window(target, span.duration).segments})
    if speakers == 0:
        return "no_speech"
    if speakers > max_speakers:
        return "too_many_speakers"
    return WindowTarget(target, speakers)


def _with_target(cut: Any, target: WindowTarget, language: str) -> Any:
    cut.custom = {**(cut.custom or {}), "target": target.target, "language": language, "speakers": target.speakers}
    return cut


# --- sources -------------------------------------------------------------------------------------------------


def ami_cuts(
    corpus_dir: Path,
    *,
    annotations_dir: Path | None = None,
    partition: str = "full-corpus",
    text: AmiText = "kaldi",
) -> dict[str, Any]:
    """AMI single-distant-microphone meetings as lhotse cuts (one per meeting), by split (train, dev, test).

    `text="kaldi"` is lhotse's default (upper case, no punctuation, as the card's sample output reads);
    `"punctuated"` keeps AMI's case and punctuation. lhotse's recipe wants every split of the partition to
    have at least one meeting.
    """
    from lhotse import CutSet
    from lhotse.recipes import prepare_ami

    if text not in get_args(AmiText):  # anything else was a third, undocumented mix of the two
        raise DataPreparationError(f"AMI text is kaldi or punctuated, got {text!r}")
    try:
        manifests = prepare_ami(
            corpus_dir,
            annotations_dir=annotations_dir,
            mic="sdm",
            partition=partition,
            normalize_text="kaldi" if text == "kaldi" else "none",
            keep_punctuation=text == "punctuated",
        )
    except (AssertionError, ValueError, FileNotFoundError) as e:
        raise DataPreparationError(
            f"lhotse's AMI recipe failed on {corpus_dir} ({e or type(e).__name__}); it reads "
            "<MEETING>/audio/<MEETING>.Array1-01.wav and ami_public_manual_1.6.2/ (or its .zip), and needs "
            f"meetings of every split of the {partition!r} partition"
        ) from e
    return {
        split: CutSet.from_manifests(recordings=part["recordings"], supervisions=part["supervisions"])
        for split, part in manifests.items()
    }


def corpus_cuts(audio_files: Sequence[Path], references: Sequence[Path]) -> Any:
    """Recordings with their reference turns (SegLST or STM: anything `turnscribe eval` reads that has words),
    matched by session id = audio file stem."""
    from lhotse import CutSet, Recording, SupervisionSegment

    from ..evaluation.metrics import load_segments

    turns: dict[str, list[dict[str, Any]]] = {}
    for reference in references:
        segments = load_segments(reference)
        if not all("words" in s for s in segments):
            raise DataPreparationError(f"{reference} has no words (RTTM carries none): give SegLST or STM")
        for seg in segments:
            turns.setdefault(str(seg["session_id"]), []).append(seg)
    cuts = []
    for audio in audio_files:
        session = audio.stem  # as `turnscribe transcribe` names its output sessions
        if session not in turns:
            known = ", ".join(sorted(turns)[:5])
            raise DataPreparationError(f"No reference turns for {audio.name} (session {session!r}; known: {known})")
        recording = Recording.from_file(audio, recording_id=session)
        supervisions = [
            SupervisionSegment(
                id=f"{session}-{i:05d}",
                recording_id=session,
                start=float(seg["start_time"]),
                duration=float(seg["end_time"]) - float(seg["start_time"]),
                speaker=str(seg["speaker"]),
                text=str(seg["words"]),
            )
            for i, seg in enumerate(sorted(turns[session], key=lambda s: float(s["start_time"])))
            if float(seg["end_time"]) > float(seg["start_time"])
        ]
        cuts.append(recording.to_cut().with_id(session))
        cuts[-1].supervisions = supervisions
    return CutSet.from_cuts(cuts)


def librispeech_cuts(corpus_dir: Path, parts: Sequence[str] | str = "auto") -> Any:
    """Single-speaker utterances of the LibriSpeech parts found under `corpus_dir` (lhotse's recipe)."""
    from lhotse import CutSet
    from lhotse.recipes import prepare_librispeech

    try:
        manifests = prepare_librispeech(corpus_dir, dataset_parts=parts)
    except (AssertionError, ValueError) as e:
        raise DataPreparationError(
            f"lhotse's LibriSpeech recipe failed on {corpus_dir} ({e or type(e).__name__}); it reads "
            "<PART>/<SPEAKER>/<CHAPTER>/*.flac and *.trans.txt, e.g. train-clean-100/19/198/19-198-0001.flac"
        ) from e
    sets = [
        CutSet.from_manifests(recordings=m["recordings"], supervisions=m["supervisions"]) for m in manifests.values()
    ]
    if not sets or not sum(len(s) for s in sets):
        raise DataPreparationError(f"No LibriSpeech utterances under {corpus_dir}")
    return CutSet.from_cuts(c for s in sets for c in s)


# --- windows and mixtures ------------------------------------------------------------------------------------


def windows(recordings: Any, config: WindowConfig, language: str, summary: SplitSummary) -> list[Any]:
    """Every recording cut into windows that carry their target; the reasons for the ones left out are counted."""
    kept = []
    dropped: Counter[str] = Counter()
    for cut in recordings:
        if cut.sampling_rate != SAMPLE_RATE:
            cut = cut.resample(SAMPLE_RATE)
        for window in cut.cut_into_windows(duration=config.window_s, hop=config.hop_s):
            if window.duration < config.min_duration_s:
                dropped["too_short"] += 1
                continue
            result = window_target(window, config.max_speakers)
            if isinstance(result, str):
                dropped[result] += 1
                continue
            kept.append(_with_target(window.with_id(f"{cut.id}-{window.start:08.2f}"), result, language))
    summary.dropped = dict(Counter(summary.dropped) + dropped)
    return kept


def mixtures(
    utterances: Any, config: MixtureConfig, language: str, *, id_prefix: str = "mix", offset: int = 0
) -> Iterator[Any]:
    """`config.count` synthetic conversations, each ≤ max_duration_s, as in-memory mono cuts with targets.

    Each draws K from the weights, K different speakers, and utterances that fit: first one turn of each
    speaker in random order, then further turns (never the same speaker twice in a row) while they fit.
    Mixture i depends only on (seed, offset + i).
    """
    by_speaker: dict[str, list[Any]] = {}
    for cut in utterances:
        if cut.supervisions and cut.duration <= config.max_duration_s:
            by_speaker.setdefault(str(cut.supervisions[0].speaker), []).append(cut)
    speakers = sorted(by_speaker)
    if not speakers:
        raise DataPreparationError("No single-speaker utterances short enough for a mixture")
    weights = np.array(config.speaker_weights[: len(speakers)], dtype=float)
    produced = 0
    attempt = 0
    while produced < config.count:
        rng = np.random.default_rng([config.seed, offset + produced, attempt])
        k = int(rng.choice(len(weights), p=weights / weights.sum())) + 1
        chosen = [speakers[i] for i in rng.choice(len(speakers), size=k, replace=False)]
        mixture = _mixture(by_speaker, chosen, config, rng)
        if mixture is None:
            attempt += 1  # the drawn speakers' utterances did not fit: draw again
            if attempt > 100:
                raise DataPreparationError("Could not fit K utterances into a mixture: utterances too long")
            continue
        mixture = mixture.with_id(f"{id_prefix}-{offset + produced:07d}")
        result = window_target(mixture, max_speakers=len(weights))
        if isinstance(result, WindowTarget):
            yield _with_target(mixture, result, language)
            produced += 1
        attempt = 0


def _mixture(by_speaker: dict[str, list[Any]], chosen: list[str], config: MixtureConfig, rng: Any) -> Any:
    """One turn of each chosen speaker first (each allowed its share of what is left), then more turns while
    they fit; None when a chosen speaker has no utterance that fits."""
    budget = config.max_duration_s - 0.2  # room for a little trailing silence
    placed: list[tuple[float, Any]] = []
    ends: dict[str, float] = {}  # each speaker's last turn end
    queue = list(chosen)
    previous: str | None = None
    while len(placed) < 64:
        if queue:
            speaker = queue[0]
        else:
            others = [s for s in chosen if s != previous] or chosen
            speaker = others[int(rng.integers(len(others)))]
        if not placed:
            start = float(rng.uniform(0.0, 0.5))  # leading silence
        else:
            last_start, last = placed[-1]
            if speaker != previous and rng.random() < config.overlap_probability:
                overlap = float(rng.uniform(0.2, max(0.2, min(config.max_overlap_s, 0.4 * last.duration))))
                start = max(last_start + 0.5, last_start + last.duration - overlap)
            else:
                gap = min(float(rng.lognormal(np.log(config.gap_median_s), config.gap_sigma)), config.max_gap_s)
                start = last_start + last.duration + gap
        # Overlap is between speakers: after a short turn of another speaker, one cannot talk over oneself.
        start = max(start, ends.get(speaker, 0.0))
        limit = (budget - start) / max(len(queue), 1)
        used = {cut.id for _, cut in placed}
        fits = [c for c in by_speaker[speaker] if c.id not in used and c.duration <= limit]
        if not fits:
            if queue:
                return None
            break
        placed.append((round(start, 3), fits[int(rng.integers(len(fits)))]))
        ends[speaker] = math.ceil(1000 * (placed[-1][0] + placed[-1][1].duration)) / 1000  # starts are in 1 ms
        if queue:
            queue.pop(0)
        previous = speaker
    return _mix(placed, config.max_duration_s, rng)


def _mix(placed: list[tuple[float, Any]], max_duration_s: float, rng: Any) -> Any:
    first_start, first = placed[0]
    mixed = first.pad(duration=first_start + first.duration, direction="left") if first_start > 0 else first
    for start, cut in placed[1:]:
        mixed = mixed.mix(cut, offset_other_by=start, allow_padding=True)
    end = max(start + cut.duration for start, cut in placed)
    mixed = mixed.pad(duration=min(end + float(rng.uniform(0.1, 0.5)), max_duration_s))
    return mixed.to_mono()


# --- shards --------------------------------------------------------------------------------------------------


def write_shards(cuts: Iterable[Any], out_dir: Path, summary: SplitSummary, shard_size: int = 1000) -> SplitSummary:
    """Write window cuts (with their audio) as Lhotse Shar shards: cuts.NNNNNN.jsonl.gz + recording.NNNNNN.tar."""
    from lhotse import CutSet

    out_dir.mkdir(parents=True, exist_ok=True)
    speakers: Counter[int] = Counter()

    def counted() -> Iterator[Any]:
        for cut in cuts:
            summary.windows += 1
            summary.seconds += cut.duration
            speakers[cut.custom["speakers"]] += 1
            yield cut

    CutSet(counted()).to_shar(out_dir, fields=SHARD_FIELDS, shard_size=shard_size)
    summary.speakers = dict(sorted(speakers.items()))
    return summary


def write_summary(out_dir: Path, source: str, splits: dict[str, SplitSummary], settings: dict[str, Any]) -> Path:
    file = out_dir / SUMMARY_FILE
    data = {"source": source, "settings": settings, "splits": {name: asdict(s) for name, s in splits.items()}}
    file.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return file


def count_windows(shard_dir: Path) -> int:
    files = sorted(shard_dir.glob("cuts.*.jsonl.gz"))
    if not files:
        raise DataPreparationError(f"{shard_dir} holds no Lhotse Shar shards (cuts.*.jsonl.gz)")
    total = 0
    for file in files:
        with gzip.open(file, "rt") as f:
            total += sum(1 for line in f if line.strip())
    return total


def _shuffled(items: list[Any], seed: int) -> list[Any]:
    random.Random(seed).shuffle(items)
    return items


def prepare_windows(
    out_dir: Path,
    splits: dict[str, Any],
    config: WindowConfig,
    *,
    language: str,
    source: str,
    seed: int = 0,
    shard_size: int = 1000,
    max_windows: dict[str, int] | None = None,
) -> dict[str, SplitSummary]:
    """Window each split's recordings, shuffle the windows, and write each split as shards in out_dir/<split>."""
    language = check_language(language)
    summaries = {}
    for name, recordings in splits.items():
        summary = SplitSummary()
        kept = _shuffled(windows(recordings, config, language, summary), seed)
        limit = (max_windows or {}).get(name)
        if limit is not None and len(kept) > limit:
            summary.dropped["over_limit"] = len(kept) - limit
            kept = kept[:limit]
        summaries[name] = write_shards(kept, out_dir / name, summary, shard_size)
    write_summary(out_dir, source, summaries, {**asdict(config), "language": language, "seed": seed})
    return summaries


def prepare_mixtures(
    out_dir: Path,
    utterances: Any,
    config: MixtureConfig,
    *,
    dev_count: int,
    language: str,
    source: str,
    shard_size: int = 1000,
) -> dict[str, SplitSummary]:
    """Train and dev mixtures (dev drawn after train, from the same utterances) as shards in out_dir/<split>."""
    language = check_language(language)
    utterances = utterances.to_eager() if hasattr(utterances, "to_eager") else utterances
    summaries = {
        "train": write_shards(mixtures(utterances, config, language), out_dir / "train", SplitSummary(), shard_size)
    }
    if dev_count:
        dev_config = MixtureConfig(**{**asdict(config), "count": dev_count})
        dev = mixtures(utterances, dev_config, language, id_prefix="mix-dev", offset=config.count)
        summaries["dev"] = write_shards(dev, out_dir / "dev", SplitSummary(), shard_size)
    write_summary(out_dir, source, summaries, {**asdict(config), "dev_count": dev_count, "language": language})
    return summaries
