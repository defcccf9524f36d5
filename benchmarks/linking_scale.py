"""Linking at scale: time and peak memory of SlotLinker's linking stage (`SlotLinker.link`) for 1, 4 and 10 hours.

The embedder is excluded on purpose: its cost is linear in the speech embedded (one clip per slot, about what
the baseline embeds per segment) and is measured by benchmarks/pipeline_overhead.py. What is timed here is
everything after the embeddings: building the slot graph from the stitched segments, the overlap bookkeeping
that decides which speech each slot pools, stray segments, threshold calibration, constrained clustering and
the per-segment recheck. Inputs have the
structure of a real meeting (turnscribe.evaluation.slot_structure: 8 speakers, 2-4 slots per 28 s window,
segments decoded by two windows) with 256-d embeddings. Peak memory: tracemalloc (numpy's arrays included) in a
second, separate run, since tracing slows the timed one.

    python benchmarks/linking_scale.py [--hours 1 4 10] [--update-readme]
"""

from __future__ import annotations

import argparse
import datetime
import platform
import time
import tracemalloc
from dataclasses import dataclass

import numpy as np
from readme_block import machine, publish

from turnscribe.evaluation.slot_structure import SlotMeeting, slot_meeting
from turnscribe.speakers.slots import SlotLinker, SlotSpeech, clean_spans, pool_slots, slot_graph
from turnscribe.types import SAMPLE_RATE

START_MARKER, END_MARKER = "<!-- linking_scale:start -->", "<!-- linking_scale:end -->"
NOISE = 0.027  # per dimension: one speaker's slots about 0.15 apart in cosine distance


@dataclass(frozen=True)
class Result:
    hours: float
    windows: int
    slots: int
    segments: int
    seconds: float
    peak_mb: float
    found: int


class NoEmbedder:
    """The linker's embedder is not called here (embeddings are given); only its fallback threshold is read."""

    name, default_threshold = "none", 0.3

    def embed(self, clips: object) -> np.ndarray:
        raise AssertionError("linking_scale gives the embeddings")


def link(meeting: SlotMeeting) -> int:
    """SlotLinker's whole post-embedding path on synthetic per-segment embeddings; returns the speakers found."""
    segments = meeting.segments
    graph = slot_graph(segments)
    clean_spans(segments, round(meeting.duration_s * SAMPLE_RATE))
    rng = np.random.default_rng(1)
    vectors = np.stack([meeting.embedding(s.window, s.slot, NOISE, rng) for s in segments]).astype(np.float64)
    seconds = rng.uniform(0.5, 12.0, size=len(segments))
    speech = SlotSpeech(vectors, seconds, *pool_slots(len(graph.slots), graph.segment_slot, vectors, seconds))
    return len(set(SlotLinker(NoEmbedder()).link(segments, graph, speech).labels))


def measure(hours: float) -> Result:
    meeting = slot_meeting(hours)
    t0 = time.perf_counter()
    found = link(meeting)
    seconds = time.perf_counter() - t0
    tracemalloc.start()
    link(meeting)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    slots = len(meeting.speaker_of_slot)
    windows = 1 + max(w for w, _ in meeting.speaker_of_slot)
    return Result(hours, windows, slots, len(meeting.segments), seconds, peak / 2**20, found)


def table(results: list[Result]) -> str:
    lines = [
        "| audio | windows | slots | segments | linking s | peak MB (tracemalloc) | speakers found |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r.hours:g} h | {r.windows} | {r.slots} | {r.segments} | {r.seconds:.2f} | {r.peak_mb:.0f} "
        f"| {r.found} of 8 |"
        for r in results
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hours", type=float, nargs="+", default=[1.0, 4.0, 10.0])
    parser.add_argument("--update-readme", action="store_true", help=f"write the table between {START_MARKER} …")
    args = parser.parse_args()
    results = []
    for hours in args.hours:
        results.append(measure(hours))
        print(table(results[-1:]).splitlines()[-1], flush=True)
    text = (
        f"{table(results)}\n\n"
        "Linking stage only (`SlotLinker.link`: slot graph, overlap bookkeeping, stray segments, calibration, "
        "constrained clustering, per-segment recheck), embeddings excluded: 256-d synthetic, 8 speakers. "
        f"{machine()}, Python {platform.python_version()}, {datetime.date.today().isoformat()}. "
        "`python benchmarks/linking_scale.py`"
    )
    publish(text, update_readme=args.update_readme, start_marker=START_MARKER, end_marker=END_MARKER)


if __name__ == "__main__":
    main()
