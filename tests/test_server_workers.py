"""The server's audio worker processes outlive its startup: they are killed (PR_SET_PDEATHSIG) when the thread that
forked them ends, so that thread must live as long as the server."""

from __future__ import annotations

import threading

from test_pipeline import tone, write_wav
from test_server import HeldDecoder, linker, post, running, settings_for

from turnscribe import Pipeline
from turnscribe.audio import AudioProcesses
from turnscribe.server import engine


def test_audio_workers_started_at_startup_decode_later_requests(monkeypatch, tmp_path):
    started: list[tuple[AudioProcesses, threading.Thread]] = []

    class RecordedProcesses(AudioProcesses):
        def __init__(self, processes: int, **options) -> None:
            super().__init__(processes, **options)
            started.append((self, threading.current_thread()))

    monkeypatch.setattr(engine, "AudioProcesses", RecordedProcesses)
    monkeypatch.setattr(engine, "audio_process_count", lambda: 2)  # whatever this machine's core count
    with running(settings_for(tmp_path), lambda: Pipeline(HeldDecoder(), linker())) as url:
        [(processes, forked_by)] = started
        forked_by.join(0.5)  # returns at once if the thread that forked the workers ended, which killed them
        pool = processes._pool  # the executor and its workers are private: what this test is about
        assert pool is not None
        workers = dict(pool._processes)
        assert len(workers) == 2 and all(worker.is_alive() for worker in workers.values())

        write_wav(tmp_path / "tone.wav", tone(3))
        response = post(url, tmp_path / "tone.wav", response_format="text")
        assert response.status_code == 200, response.text
        # Decoded by the same workers: a broken pool would have been replaced and the file retried alone.
        assert processes._pool is pool and dict(pool._processes) == workers
        assert all(worker.is_alive() for worker in workers.values())
