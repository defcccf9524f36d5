"""Decoding many files at once: in the files' own threads against worker processes (`AudioProcesses`, what
`run_many` uses); one long file in one pass against in pieces across the processes; side by side in one run, and
how much a busy Python thread is slowed meanwhile.

The busy thread runs small torch operations in a loop, as the thread that drives a GPU does (each decoding step
launches many small kernels from Python): its rate during each arm, against its rate alone, shows how much the
audio decoding takes from it. PyAV holds the GIL while it decodes and resamples, so in threads the files take
turns on one core and the busy thread waits for the GIL too; worker processes hold no GIL of ours.

    python benchmarks/audio_decode.py [--files 4] [--minutes 15] [--codec libmp3lame] [--update-readme]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from readme_block import machine, publish

from turnscribe.audio import AudioProcesses, load_audio
from turnscribe.bench import RECORDING_RATE, write_recording

START_MARKER, END_MARKER = "<!-- audio_decode:start -->", "<!-- audio_decode:end -->"
EXTENSIONS = {"libmp3lame": ".mp3", "aac": ".m4a", "flac": ".flac"}  # Opus would need 48 kHz


class BusyThread:
    """Counts iterations of a loop of small torch operations while it runs."""

    def __init__(self) -> None:
        self.iterations = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        x = torch.zeros(64)
        while not self._stop.is_set():
            x = torch.tanh(x * 0.5 + 1.0)
            self.iterations += 1

    def __enter__(self) -> BusyThread:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def timed(arm: Callable[[], object], busy: bool) -> tuple[float, float | None]:
    """Wall seconds of `arm`, and the busy thread's iterations per second during it (None without one)."""
    if not busy:
        t0 = time.perf_counter()
        arm()
        return time.perf_counter() - t0, None
    with BusyThread() as thread:
        time.sleep(0.2)  # let it get going
        start_count, t0 = thread.iterations, time.perf_counter()
        arm()
        wall = time.perf_counter() - t0
        rate = (thread.iterations - start_count) / wall
    return wall, rate


def in_threads(load: Callable[[Path], np.ndarray], files: list[Path]) -> None:
    with ThreadPoolExecutor(len(files)) as threads:
        list(threads.map(load, files))


def idle_rate(seconds: float = 3.0) -> float:
    return timed(lambda: time.sleep(seconds), busy=True)[1] or 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=4, help="files decoded at once (default 4, run_many's default)")
    parser.add_argument("--minutes", type=float, default=15.0, help="length of each file")
    parser.add_argument("--codec", choices=EXTENSIONS, default="libmp3lame", help="encoder of the files (default: mp3)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each arm, alternating; the best counts")
    parser.add_argument("--update-readme", action="store_true", help="rewrite the README's audio_decode block")
    args = parser.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory(prefix="audio_decode-") as tmp:
        suffix = EXTENSIONS[args.codec]
        first = Path(tmp) / f"recording-0{suffix}"
        t0 = time.perf_counter()
        write_recording(first, args.minutes * 60, codec=args.codec)
        print(
            f"wrote {args.minutes:g} min of {args.codec} ({first.stat().st_size / 2**20:.0f} MiB) in "
            f"{time.perf_counter() - t0:.1f} s; {args.files} copies decoded at once"
        )
        files = [first] + [shutil.copy(first, Path(tmp) / f"recording-{i}{suffix}") for i in range(1, args.files)]
        file_s = len(load_audio(first)) / 16000

        workers = os.cpu_count() or 1  # run_many's default
        t0 = time.perf_counter()
        processes = AudioProcesses(workers)
        startup = time.perf_counter() - t0
        # name -> (arm, seconds of audio it decodes)
        arms: dict[str, tuple[Callable[[], object], float]] = {
            f"{args.files} files, one after another (one thread)": (
                lambda: [load_audio(f) for f in files],
                args.files * file_s,
            ),
            f"{args.files} files in {args.files} threads (before)": (
                lambda: in_threads(load_audio, files),
                args.files * file_s,
            ),
            f"{args.files} files, {args.files} threads → {workers} processes (now)": (
                lambda: in_threads(processes.load, files),
                args.files * file_s,
            ),
            "1 file in one pass": (lambda: load_audio(first), file_s),
            f"1 file in pieces across {workers} processes (now)": (lambda: processes.load(first), file_s),
        }
        idle = idle_rate()
        best: dict[str, tuple[float, float]] = {}
        with processes:
            for _ in range(args.repeats):
                for name, (arm, _) in arms.items():
                    wall, rate = timed(arm, busy=True)
                    if name not in best or wall < best[name][0]:
                        best[name] = (wall, rate or 0.0)
                    print(f"  {name}: {wall:.2f} s, busy thread at {100 * (rate or 0) / idle:.0f} % of its idle rate")

    names = list(arms)
    lines = [
        "| decoding | wall s | × real time | busy thread's rate meanwhile |",
        "|---|---:|---:|---:|",
        *(
            f"| {n} | {best[n][0]:.2f} | {arms[n][1] / best[n][0]:.0f}× | {100 * best[n][1] / idle:.0f} % |"
            for n in names
        ),
        "",
        f"Processes vs threads: **{best[names[1]][0] / best[names[2]][0]:.2f}×** as fast, and the busy thread keeps "
        f"{100 * best[names[2]][1] / idle:.0f} % of its rate instead of {100 * best[names[1]][1] / idle:.0f} %; "
        f"threads vs one after another: {best[names[0]][0] / best[names[1]][0]:.2f}×; one file in pieces vs one "
        f"pass: **{best[names[3]][0] / best[names[4]][0]:.2f}×**. "
        f"{args.files} files of {args.minutes:g} min ({args.codec}, {RECORDING_RATE} Hz stereo → 16 kHz mono), "
        f"best of {args.repeats} alternating runs, each with a busy thread running; worker start-up "
        f"{startup:.2f} s once (not counted). Busy thread: small torch operations in a Python loop "
        f"({idle:,.0f} per second alone). {machine()}, Python {platform.python_version()}, torch "
        f"{torch.__version__}, {datetime.date.today().isoformat()}; `python benchmarks/audio_decode.py "
        f"--files {args.files} --minutes {args.minutes:g}`.",
    ]
    publish("\n".join(lines), update_readme=args.update_readme, start_marker=START_MARKER, end_marker=END_MARKER)


if __name__ == "__main__":
    main()
