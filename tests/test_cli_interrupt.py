"""Ctrl-C during a batch: the CLI stops promptly and quietly, as a terminal delivers it (to the process group)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from test_pipeline import tone, write_wav

FILES = 16  # the CPU runs 4 at once: when the first is done, most have not started


@pytest.mark.slow
def test_ctrl_c_stops_a_batch_promptly_without_tracebacks(tiny_native, tmp_path):
    first = tmp_path / "f0.wav"
    write_wav(first, tone(60))
    paths = [first] + [shutil.copy(first, tmp_path / f"f{i}.wav") for i in range(1, FILES)]
    command = [sys.executable, "-m", "turnscribe", "transcribe", *map(str, paths), "--model", str(tiny_native)]
    proc = subprocess.Popen(
        [*command, "--device", "cpu", "-o", str(tmp_path / "out")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "300"},
        start_new_session=True,  # its own process group, which the test signals as a terminal would
    )
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # mid-batch: a file is done, others are decoding, audio workers reading ahead
            if line.startswith("done"):
                break
        else:
            pytest.fail("the batch ended without a file done")
        os.killpg(proc.pid, signal.SIGINT)
        started = time.monotonic()
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert time.monotonic() - started < 30
    assert proc.returncode == 130, stderr[-3000:]
    # No traceback: neither from the files stopped in flight nor from the audio worker processes.
    assert "Traceback" not in stderr and "ERROR" not in stderr, stderr[-3000:]
    assert f"of {FILES} files finished; the others were not written" in stderr
    assert len(list((tmp_path / "out").glob("*.json"))) < FILES
