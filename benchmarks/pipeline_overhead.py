"""Pipeline overhead: every turnscribe stage except the model's forward pass, on hours of generated meeting audio.

The ReferenceDecoder stands in for the model (it emits what a perfect model would say for each window), so what is
timed is audio decoding (PyAV, from a FLAC file), windowing, parsing, stitching, speaker embedding (resemblyzer) and
clustering, and writing every output format. Each size runs in a fresh subprocess, so its peak RSS is its own.

    python benchmarks/pipeline_overhead.py [--hours 1 4] [--threads N] [--update-readme]

On a machine shared with other processes pass --threads 1: resemblyzer's LSTM runs thousands of tiny parallel
steps per clip, and each one stalls while a torch thread waits for a core, which made it up to 4x slower here.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import av
import numpy as np

from turnscribe import LINKERS, Pipeline, Transcript
from turnscribe.decoders.reference import ReferenceDecoder, ReferenceTurn
from turnscribe.evaluation.synthetic import VOICES as SYNTHETIC_VOICES
from turnscribe.evaluation.synthetic import synthesise
from turnscribe.formats import extension, format_names, write
from turnscribe.speakers import ClusteringLinker, SlotLinker, load_embedder
from turnscribe.types import SAMPLE_RATE

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
START_MARKER, END_MARKER = "<!-- pipeline_overhead:start -->", "<!-- pipeline_overhead:end -->"

# The synthetic meetings' first four voices: far apart under GE2E (see turnscribe.evaluation.synthetic).
VOICES = SYNTHETIC_VOICES[:4]
SENTENCES = [
    "Good morning everyone, let us start with the budget for next quarter.",
    "I sent the updated numbers to the whole team yesterday evening.",
    "Could you please explain why the testing took two extra weeks?",
    "We found a problem with the database migration on Tuesday.",
    "The customer wants a demo of the new dashboard before Friday.",
    "I think we should hire one more engineer for the mobile app.",
    "Let me check the calendar and get back to you this afternoon.",
    "That sounds reasonable, but the deadline is still very tight.",
]
TURN_S = (1.0, 8.0)
PAUSE_S = (0.2, 1.5)
# Turn boundaries on the model's 0.1 s time grid: the reference decoder then emits them exactly, so DER measures
# speaker linking alone, not rounding.
GRID_S = 0.1
STAGES = ["audio", "decode", "stitch", "speakers", "formats"]
STAGE_TITLES = {
    "audio": "audio decode",
    "decode": "decode + parse",
    "stitch": "stitch",
    "speakers": "speakers (embed + cluster)",
    "formats": "formats (all)",
}


def synthesise_voices() -> dict[str, list[tuple[np.ndarray, str]]]:
    """Each voice's sentences as (samples, text): synthesised once, then tiled and cut into turns."""
    return {f"{voice.name}-{voice.pitch}": [(synthesise(text, voice), text) for text in SENTENCES] for voice in VOICES}


def _grid_samples(rng: np.random.Generator, bounds: tuple[float, float]) -> int:
    return round(round(rng.uniform(*bounds) / GRID_S) * GRID_S * SAMPLE_RATE)


def _turn(clips: list[tuple[np.ndarray, str]], length: int, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """`length` samples of one voice: from a random point of a random sentence on through the next ones, with the
    words that fall in the part used (in proportion to time)."""
    index = int(rng.integers(len(clips)))
    offset = int(rng.integers(len(clips[index][0])))
    pieces: list[np.ndarray] = []
    words: list[str] = []
    need = length
    while need > 0:
        clip, text = clips[index]
        piece = clip[offset : offset + need]
        sentence = text.split()
        words += sentence[
            len(sentence) * offset // len(clip) : math.ceil(len(sentence) * (offset + len(piece)) / len(clip))
        ]
        pieces.append(piece)
        need -= len(piece)
        index, offset = (index + 1) % len(clips), 0
    return np.concatenate(pieces), " ".join(words)


def meeting_blocks(
    voices: dict[str, list[tuple[np.ndarray, str]]], seconds: float, seed: int, turns: list[ReferenceTurn]
) -> Iterator[np.ndarray]:
    """The meeting's audio as consecutive blocks (pauses and turns), appending each turn's ground truth to `turns`.

    Blocks, not one array, so that hours of audio are never held at once.
    """
    rng = np.random.default_rng(seed)
    names = list(voices)
    total = round(seconds * SAMPLE_RATE)
    cursor = 0
    speaker = names[int(rng.integers(len(names)))]
    while True:
        pause, length = _grid_samples(rng, PAUSE_S), _grid_samples(rng, TURN_S)
        if cursor + pause + length > total:
            break
        samples, text = _turn(voices[speaker], length, rng)
        yield np.zeros(pause, np.float32)
        start = cursor + pause
        turns.append(ReferenceTurn(start / SAMPLE_RATE, (start + length) / SAMPLE_RATE, speaker, text))
        yield samples
        cursor = start + length
        # Meetings alternate: the next turn goes to someone else.
        speaker = names[int(rng.choice([i for i, n in enumerate(names) if n != speaker]))]
    yield np.zeros(total - cursor, np.float32)


def write_flac(path: Path, blocks: Iterator[np.ndarray]) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("flac", rate=SAMPLE_RATE, layout="mono")
        for block in blocks:
            if not len(block):
                continue
            pcm = (np.clip(block, -1, 1) * 32767).astype(np.int16).reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
            frame.sample_rate = SAMPLE_RATE
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def diarization_error(turns: Sequence[ReferenceTurn], transcript: Transcript) -> float:
    # Imported only after the measurement: pyannote.metrics loads pandas and scikit-learn, which are no part of
    # the pipeline's memory.
    from pyannote.core import Annotation, Segment, Timeline
    from pyannote.metrics.diarization import DiarizationErrorRate

    reference, hypothesis = Annotation(), Annotation()
    for i, turn in enumerate(turns):
        reference[Segment(turn.start, turn.end), i] = turn.speaker
    for seg in transcript.segments:
        hypothesis[Segment(seg.start, seg.end), seg.id] = seg.speaker
    metric = DiarizationErrorRate(collar=0.0, skip_overlap=False)
    return float(metric(reference, hypothesis, uem=Timeline([Segment(0, transcript.duration)])))


def measure(audio: Path, turns_file: Path, threads: int | None, linker: str) -> dict[str, Any]:
    """Run in the child process: the pipeline and the writers on one file, then the DER of the result."""
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    turns = [ReferenceTurn(*row) for row in json.loads(turns_file.read_text())]
    embedder = load_embedder("resemblyzer", device="cpu")
    speakers = SlotLinker(embedder) if linker == "slots" else ClusteringLinker(embedder)
    pipeline = Pipeline(ReferenceDecoder(turns), speakers)
    baseline_rss = peak_rss_mb()
    t0, cpu0 = time.perf_counter(), time.process_time()
    transcript = pipeline.run(audio, language="en", source=str(audio))
    formats: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as out:
        for fmt in format_names():
            t1 = time.perf_counter()
            write(transcript, fmt, Path(out) / f"meeting{extension(fmt)}", uri="meeting")
            formats[fmt] = time.perf_counter() - t1
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    # Read before scoring, so that the scoring's own memory is not counted.
    peak_rss = peak_rss_mb()
    return {
        "duration": transcript.duration,
        "timings": {**transcript.metadata.timings, "formats": sum(formats.values())},
        "formats": formats,
        "wall": wall,
        "cpu": cpu,
        "baseline_rss_mb": baseline_rss,
        "peak_rss_mb": peak_rss,
        "der": diarization_error(turns, transcript),
        "turns": len(turns),
        "windows": transcript.metadata.windows,
        "segments": len(transcript.segments),
        "speakers": len(transcript.speakers),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def run_size(
    hours: float,
    voices: dict[str, list[tuple[np.ndarray, str]]],
    folder: Path,
    seed: int,
    threads: int | None,
    linker: str,
) -> dict[str, Any]:
    audio, turns_file = folder / f"meeting-{hours:g}h.flac", folder / f"meeting-{hours:g}h.json"
    turns: list[ReferenceTurn] = []
    t0 = time.perf_counter()
    write_flac(audio, meeting_blocks(voices, hours * 3600, seed, turns))
    turns_file.write_text(json.dumps([[t.start, t.end, t.speaker, t.text] for t in turns]))
    print(
        f"{hours:g} h: generated {len(turns)} turns, {audio.stat().st_size / 2**20:.0f} MiB FLAC "
        f"in {time.perf_counter() - t0:.1f} s; running the pipeline in a fresh process ...",
        flush=True,
    )
    command = [sys.executable, __file__, "--measure", str(audio), str(turns_file), "--linker", linker]
    if threads is not None:
        command += ["--threads", str(threads)]
    child = subprocess.run(command, check=True, stdout=subprocess.PIPE)
    result: dict[str, Any] = json.loads(child.stdout.decode().strip().splitlines()[-1])
    audio.unlink()
    return {"hours": hours, **result}


def per_hour(result: dict[str, Any], stage: str) -> float:
    return float(result["timings"][stage]) / (result["duration"] / 3600)


def total_per_hour(result: dict[str, Any]) -> float:
    return sum(per_hour(result, s) for s in STAGES)


def cpu_per_hour(result: dict[str, Any]) -> float:
    """CPU seconds of the pipeline process: unlike wall time, not inflated by other processes on the machine."""
    return float(result["cpu"]) / (result["duration"] / 3600)


def table(results: list[dict[str, Any]]) -> str:
    head = [
        "audio",
        *(f"{STAGE_TITLES[s]} s/h" for s in STAGES),
        "total s/h",
        "CPU s/h",
        "× real time",
        "peak RSS MB",
        "speakers",
        "DER",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for r in results:
        cells = [
            f"{r['hours']:g} h",
            *(f"{per_hour(r, s):.2f}" for s in STAGES),
            f"{total_per_hour(r):.1f}",
            f"{cpu_per_hour(r):.1f}",
            f"{3600 / total_per_hour(r):.0f}×",
            f"{r['peak_rss_mb']:.0f}",
            f"{r['speakers']} of {len(VOICES)}",
            f"{r['der']:.2%}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ratios(results: list[dict[str, Any]]) -> list[str]:
    """Each size against the smallest: s/h ratios of 1.00 mean the stage scales linearly."""
    base = results[0]
    lines = []
    for r in results[1:]:
        stages = ", ".join(f"{s} {per_hour(r, s) / per_hour(base, s):.2f}" for s in STAGES)
        lines.append(
            f"{r['hours']:g} h vs {base['hours']:g} h: s/h ratio total {total_per_hour(r) / total_per_hour(base):.2f}, "
            f"CPU {cpu_per_hour(r) / cpu_per_hour(base):.2f} "
            f"({stages}); peak RSS ×{r['peak_rss_mb'] / base['peak_rss_mb']:.2f} "
            f"(+{r['peak_rss_mb'] - base['peak_rss_mb']:.0f} MB)"
        )
    return lines


def machine(results: list[dict[str, Any]]) -> str:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    cpu = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    mem = re.search(r"^MemTotal:\s*(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
    ram = f"{int(mem.group(1)) / 2**20:.0f} GiB RAM" if mem else "RAM unknown"
    return (
        f"{cpu.group(1).strip() if cpu else platform.processor() or 'unknown CPU'}, "
        f"{len(os.sched_getaffinity(0))} cores, torch threads: {results[0]['threads']}, {ram}, "
        f"Python {platform.python_version()}, torch {results[0]['torch']}, {datetime.date.today().isoformat()}"
    )


def update_readme(block: str) -> None:
    text = README.read_text(encoding="utf-8") if README.exists() else ""
    start, end = text.find(START_MARKER), text.find(END_MARKER)
    if start < 0 or end < start:
        print(f"{README} has no {START_MARKER} ... {END_MARKER} block: not updated")
        return
    README.write_text(text[: start + len(START_MARKER)] + "\n" + block + "\n" + text[end:], encoding="utf-8")
    print(f"updated {README}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hours", type=float, nargs="+", default=[1.0, 4.0], help="audio lengths to run (hours)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the turn layout")
    parser.add_argument(
        "--threads", type=int, help="torch intra-op threads (default: torch's own choice, one per core)"
    )
    parser.add_argument("--linker", choices=LINKERS, default="slots", help="speaker linker (default: the default's)")
    parser.add_argument("--update-readme", action="store_true", help="rewrite the README's pipeline_overhead block")
    parser.add_argument("--measure", nargs=2, type=Path, help=argparse.SUPPRESS)  # the child process's entry point
    args = parser.parse_args()
    if args.measure:
        audio, turns_file = args.measure
        print(json.dumps(measure(audio, turns_file, args.threads, args.linker)))
        return

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pipeline_overhead-") as tmp:
        voices = synthesise_voices()
        results = [run_size(h, voices, Path(tmp), args.seed, args.threads, args.linker) for h in sorted(args.hours)]
    for r in results:
        formats = ", ".join(f"{k} {v / (r['duration'] / 3600):.2f}" for k, v in r["formats"].items())
        print(
            f"{r['hours']:g} h: {r['turns']} turns, {r['windows']} windows, {r['segments']} segments, "
            f"pipeline + formats wall {r['wall']:.1f} s, CPU {r['cpu']:.1f} s; "
            f"RSS after loading {r['baseline_rss_mb']:.0f} MB; formats s/h: {formats}"
        )
    command = "--hours " + " ".join(f"{h:g}" for h in sorted(args.hours)) + f" --linker {args.linker}"
    if args.threads is not None:
        command += f" --threads {args.threads}"
    block = "\n".join(
        [
            table(results),
            "",
            *[f"{line}  " for line in ratios(results)],
            f"Seconds per hour of audio for each stage except the model's forward pass (ReferenceDecoder as the "
            f"model, resemblyzer embedder, `{args.linker}` linker); CPU s/h: the pipeline process's CPU time for "
            f"all of them; DER at collar 0. {machine(results)}; "
            f"`python benchmarks/pipeline_overhead.py {command}`.",
        ]
    )
    print()
    print(block)
    print(f"\nbenchmark wall time {time.perf_counter() - t0:.0f} s (load average {os.getloadavg()[0]:.2f})")
    if args.update_readme:
        update_readme(block)


if __name__ == "__main__":
    # webrtcvad (imported by resemblyzer) warns about pkg_resources on every start.
    warnings.filterwarnings("ignore", category=UserWarning, module="webrtcvad")
    main()
