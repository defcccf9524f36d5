"""The thread that drives the GPU, beside file threads busy in turnscribe's Python, at two thread switch intervals.

At every decoding step the scheduler's thread runs Python that launches the step's kernels, then waits for the GPU
with the GIL released. Meanwhile the threads of the files in flight run turnscribe's Python stages (here: the
whole linking stage of a 1-hour meeting, over and over, as in benchmarks/linking_scale.py). When the GPU is done,
the scheduler's thread must get the GIL back from them, and CPython makes a thread that holds it let go only
after the switch interval (5 ms by default): up to 5 ms lost per step, 180 steps per batch. This measures whether
that happens with turnscribe's own work, and whether a shorter interval (0.5 ms) would help.

The GPU is stood in for by a sleep, so this runs anywhere: 180 steps (a 28 s window's tokens) of STEP_PYTHON_S of
Python then STEP_GPU_S of waiting. Printed: the steps' time alone and beside 1, 2 and 4 busy file threads, at
Python's default interval and at a shorter one.

    python benchmarks/gil_switching.py [--update-readme]
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import threading
import time

from linking_scale import link
from readme_block import machine, publish

from turnscribe.evaluation.slot_structure import slot_meeting

START_MARKER, END_MARKER = "<!-- gil_switching:start -->", "<!-- gil_switching:end -->"
STEPS = 180
STEP_PYTHON_S = 0.0005  # generate()'s Python per step, launching the step's kernels
STEP_GPU_S = 0.001  # the GPU running them, the GIL released while the thread waits
INTERVALS = {"Python's default": 0.005, "shorter": 0.0005}


def decoding_steps() -> float:
    start = time.perf_counter()
    for _ in range(STEPS):
        until = time.perf_counter() + STEP_PYTHON_S
        while time.perf_counter() < until:
            pass
        time.sleep(STEP_GPU_S)
    return time.perf_counter() - start


def beside_file_threads(count: int, meeting: object) -> float:
    """The steps' seconds while `count` threads link meetings."""
    stop = threading.Event()

    def file_thread() -> None:
        while not stop.is_set():
            link(meeting)  # type: ignore[arg-type]

    threads = [threading.Thread(target=file_thread) for _ in range(count)]
    for t in threads:
        t.start()
    time.sleep(0.2)  # every thread inside its first link
    seconds = decoding_steps()
    stop.set()
    for t in threads:
        t.join()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--update-readme", action="store_true", help=f"write the table between {START_MARKER} …")
    args = parser.parse_args()
    meeting = slot_meeting(1.0)
    default = sys.getswitchinterval()
    rows = []
    try:
        for name, interval in INTERVALS.items():
            sys.setswitchinterval(interval)
            alone = min(decoding_steps() for _ in range(3))
            cells = []
            for count in args.threads:
                seconds = beside_file_threads(count, meeting)
                cells.append(f"{seconds * 1000:.0f} ms ({seconds / alone:.1f}×)")
                print(f"{name} ({interval * 1000:g} ms), {count} file threads: {cells[-1]}", flush=True)
            rows.append(f"| {name}, {interval * 1000:g} ms | {alone * 1000:.0f} ms | " + " | ".join(cells) + " |")
    finally:
        sys.setswitchinterval(default)
    head = "| switch interval | 180 steps alone | " + " | ".join(f"beside {n} busy file threads" for n in args.threads)
    text = "\n".join([head + " |", "|---|---:|" + "---:|" * len(args.threads), *rows]) + (
        f"\n\n{STEPS} decoding steps of {STEP_PYTHON_S * 1000:g} ms of Python and {STEP_GPU_S * 1000:g} ms waiting "
        "on a stand-in GPU (GIL released); each file thread links a 1-hour meeting over and over. "
        f"{machine()}, Python {platform.python_version()}, "
        f"{datetime.date.today().isoformat()}. `python benchmarks/gil_switching.py`"
    )
    publish(text, update_readme=args.update_readme, start_marker=START_MARKER, end_marker=END_MARKER)


if __name__ == "__main__":
    main()
