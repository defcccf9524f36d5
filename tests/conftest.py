import os
import sys
from pathlib import Path

import pytest

# No test may reach a model hub: a hub id must fail fast, not hang on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# The test models are tiny: one torch thread is as fast, and far faster when another process holds a core
# (resemblyzer's LSTM stalls at every step waiting for its second thread). Subprocesses inherit this.
os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def tiny_native(tmp_path_factory) -> Path:
    from tiny_model import build_checkpoint

    return build_checkpoint(tmp_path_factory.mktemp("tiny-native"), "native")


@pytest.fixture(scope="session")
def tiny_original(tmp_path_factory) -> Path:
    from tiny_model import build_checkpoint

    return build_checkpoint(tmp_path_factory.mktemp("tiny-original"), "original")


@pytest.fixture()
def audio_processes_started(monkeypatch) -> list[int]:
    """The process count of every AudioProcesses started while the test runs."""
    from turnscribe import audio

    started: list[int] = []

    class RecordedProcesses(audio.AudioProcesses):
        def __init__(self, processes: int, **options) -> None:
            started.append(processes)
            super().__init__(processes, **options)

    monkeypatch.setattr(audio, "AudioProcesses", RecordedProcesses)
    return started
