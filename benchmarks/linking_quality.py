"""Linking quality: DER and cpWER of the whole pipeline on synthetic meetings, per speaker linker, against the floor.

The ReferenceDecoder stands in for the model (perfect, or with decoder noise of a known kind), so what varies is
speaker linking. Each linker runs with the resemblyzer embedder and, as its floor, with the oracle embedder that
knows the true speaker of every sample: the gap between the two is what the embeddings cost, and the floor is
what decoder noise and stitching cost even with perfect speaker identities.

By default the conditions vary one factor at a time around a centre (4 speakers, 10 % overlap, clean audio, a
perfect decoder); --full runs every combination.

    python benchmarks/linking_quality.py [--linker baseline] [--minutes 3] [--seeds 0] [--full] [--update-readme]
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from readme_block import machine, publish

from turnscribe import Pipeline
from turnscribe.decoders.reference import Imperfections, ReferenceDecoder
from turnscribe.evaluation import evaluate
from turnscribe.evaluation.oracle import OracleEmbedder, tag_speakers
from turnscribe.evaluation.synthetic import MeetingConfig, generate_meeting
from turnscribe.speakers import ClusteringLinker, Embedder, SlotLinker, SpeakerLinker, load_embedder
from turnscribe.types import SAMPLE_RATE

START_MARKER, END_MARKER = "<!-- linking_quality:start -->", "<!-- linking_quality:end -->"

# A linker is built from an embedder; add new ones here to compare them with the card's baseline.
LINKERS: dict[str, Callable[[Embedder], SpeakerLinker]] = {
    "baseline": ClusteringLinker,
    "slots": SlotLinker,
}

DECODER_NOISE = {
    "perfect": Imperfections(),
    "mild": Imperfections(
        word_error_rate=0.05,
        boundary_jitter_s=0.2,
        swap_slots=0.5,
        slot_errors=0.02,
        drop_short_s=1.0,
        drop_short_p=0.2,
    ),
    "harsh": Imperfections(
        word_error_rate=0.15,
        boundary_jitter_s=0.5,
        swap_slots=1.0,
        slot_errors=0.08,
        drop_short_s=1.5,
        drop_short_p=0.5,
    ),
}
SPEAKERS = (2, 4, 6, 8)
OVERLAPS = (0.0, 0.1, 0.2)
SNRS: tuple[float | None, ...] = (None, 20.0, 5.0)
CENTRE = (4, 0.1, None, "perfect")


@dataclass(frozen=True)
class Condition:
    speakers: int
    overlap: float
    snr_db: float | None
    decoder: str


@dataclass(frozen=True)
class Score:
    der: float  # collar 0.25 s, overlap scored
    cpwer: float
    speakers: int  # found


def conditions(full: bool) -> list[Condition]:
    if full:
        grid = itertools.product(SPEAKERS, OVERLAPS, SNRS, DECODER_NOISE)
        return [Condition(*c) for c in grid]
    s0, o0, n0, d0 = CENTRE
    varied = [
        *((s, o0, n0, d0) for s in SPEAKERS),
        *((s0, o, n0, d0) for o in OVERLAPS if o != o0),
        *((s0, o0, n, d0) for n in SNRS if n != n0),
        *((s0, o0, n0, d) for d in DECODER_NOISE if d != d0),
    ]
    return [Condition(*c) for c in varied]


def run(condition: Condition, minutes: float, seed: int, linkers: list[str], resemblyzer: Embedder) -> dict[str, Score]:
    meeting = generate_meeting(
        MeetingConfig(
            speakers=condition.speakers,
            duration_s=60 * minutes,
            overlap_share=condition.overlap,
            snr_db=condition.snr_db,
            seed=seed,
        )
    )
    # Both embedders hear the same, tagged audio: the tags are far below anything resemblyzer can hear.
    audio, _ = tag_speakers(meeting.audio, meeting.turns)
    decoder = ReferenceDecoder(meeting.turns, imperfections=DECODER_NOISE[condition.decoder])
    scores = {}
    for name in linkers:
        for label, embedder in ((name, resemblyzer), (f"{name} floor", OracleEmbedder())):
            transcript = Pipeline(decoder, LINKERS[name](embedder)).run(audio, sampling_rate=SAMPLE_RATE)
            result = evaluate(meeting.turns, transcript, collars=(0.25,))
            scores[label] = Score(result.der(0.25), result.wer("cpWER") or 0.0, len(transcript.speakers))
    return scores


def table(rows: list[tuple[Condition, dict[str, Score]]], labels: list[str]) -> str:
    head = ["speakers", "overlap", "SNR", "decoder"]
    head += [f"{label} {m}" for m in ("DER", "cpWER", "found") for label in labels]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c, scores in rows:
        cells = [str(c.speakers), f"{c.overlap:.0%}", "clean" if c.snr_db is None else f"{c.snr_db:g} dB", c.decoder]
        cells += [f"{100 * scores[label].der:.1f}" for label in labels]
        cells += [f"{100 * scores[label].cpwer:.1f}" for label in labels]
        cells += [str(scores[label].speakers) for label in labels]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--linker", action="append", choices=sorted(LINKERS), help="repeatable; default: all")
    parser.add_argument("--minutes", type=float, default=3.0, help="length of each meeting")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one meeting per seed and condition")
    parser.add_argument("--full", action="store_true", help="every combination instead of one factor at a time")
    parser.add_argument("--update-readme", action="store_true", help=f"write the table between {START_MARKER} …")
    args = parser.parse_args()
    # meeteval warns about word order and self-overlap in noisy hypotheses; the scores already count them.
    logging.getLogger().setLevel(logging.ERROR)
    linkers = args.linker or sorted(LINKERS)
    labels = [label for name in linkers for label in (name, f"{name} floor")]
    resemblyzer = load_embedder("resemblyzer")

    t0 = time.perf_counter()
    rows = []
    for condition in conditions(args.full):
        runs = [run(condition, args.minutes, seed, linkers, resemblyzer) for seed in args.seeds]
        # Scores averaged over seeds (one meeting each).
        mean = {
            label: Score(
                sum(r[label].der for r in runs) / len(runs),
                sum(r[label].cpwer for r in runs) / len(runs),
                round(sum(r[label].speakers for r in runs) / len(runs)),
            )
            for label in labels
        }
        rows.append((condition, mean))
        print(table(rows[-1:], labels).splitlines()[-1], flush=True)
    wall = time.perf_counter() - t0

    text = (
        f"{table(rows, labels)}\n\n"
        f"DER in % at collar 0.25 s with overlap scored; cpWER in %; found: speakers in the output. "
        f"{args.minutes:g}-minute meetings, seed(s) {', '.join(map(str, args.seeds))}; "
        f"'floor' = the same linker with the oracle embedder. {wall:.0f} s on {machine()}, "
        f"{datetime.date.today().isoformat()}. `python benchmarks/linking_quality.py`"
    )
    publish(text, update_readme=args.update_readme, start_marker=START_MARKER, end_marker=END_MARKER)


if __name__ == "__main__":
    main()
