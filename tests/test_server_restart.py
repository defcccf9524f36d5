"""Durable jobs survive `kill -9`: the server runs as a subprocess (`turnscribe serve --pipeline-factory`), is
killed hard while jobs run, restarted on the same data folder, and every job finishes once with the right result.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from test_server import KEY, TIMEOUT, job, post, wait_until
from test_server_scripted import DELAY_ENV, scripted_pipeline


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(data: Path, port: int, log: Path) -> subprocess.Popen:
    command = [
        sys.executable,
        "-c",
        "import typer; from turnscribe.server.cli import serve; typer.run(serve)",
        "--port",
        str(port),
        "--data-dir",
        str(data),
        "--api-key",
        KEY,
        "--job-workers",
        "2",
        "--pipeline-factory",
        "test_server_scripted:scripted_pipeline",
        "--log-level",
        "warning",
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent), DELAY_ENV: "0.15"}
    process = subprocess.Popen(command, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert process.poll() is None, log.read_text()
        try:
            return httpx.get(f"{url}/ready", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(ready, what="the server subprocess to be ready", timeout=60)
    return process


@pytest.mark.slow
def test_jobs_survive_kill_9_and_finish_once(tmp_path):
    from test_pipeline import tone, write_wav

    audio = []
    for seconds in (70, 45, 70, 45, 20):
        path = tmp_path / f"tone-{len(audio)}-{seconds}.wav"
        write_wav(path, tone(seconds))
        audio.append(path)
    data, port, log = tmp_path / "data", free_port(), tmp_path / "server.log"
    url = f"http://127.0.0.1:{port}"
    server = start_server(data, port, log)
    try:
        ids = []
        for path in audio:
            response = post(url, path, endpoint="/v1/audio/jobs", response_format="diarized_json")
            assert response.status_code == 202, response.text
            ids.append(response.json()["id"])
        wait_until(lambda: any(job(url, i)["progress"]["windows_done"] >= 1 for i in ids), what="a job mid-way")
        os.kill(server.pid, signal.SIGKILL)
        server.wait(TIMEOUT)
        before = {i: job_status(data, i) for i in ids}
        assert "running" in before.values() and "queued" in before.values(), before

        server = start_server(data, port, log)
        wait_until(
            lambda: all(job(url, i)["status"] == "succeeded" for i in ids), what="every job to finish", timeout=60
        )
        for job_id, path in zip(ids, audio):
            status = job(url, job_id)
            # Jobs cut off by the kill ran again from the start; the others ran once.
            assert status["attempts"] == (2 if before[job_id] == "running" else 1), (before, status)
            result = httpx.get(
                f"{url}/v1/audio/jobs/{job_id}/result", headers={"Authorization": f"Bearer {KEY}"}, timeout=TIMEOUT
            ).json()
            expected = scripted_pipeline().run(path).segments  # the same pipeline, in this process
            assert [(s["start"], s["end"], s["text"], s["speaker"]) for s in result["segments"]] == [
                (s.start, s.end, s.text, s.speaker) for s in expected
            ]
        listed = httpx.get(f"{url}/v1/audio/jobs", headers={"Authorization": f"Bearer {KEY}"}, timeout=TIMEOUT)
        assert sorted(j["id"] for j in listed.json()["data"]) == sorted(ids)  # none lost, none duplicated
    finally:
        server.kill()
        server.wait(TIMEOUT)


def job_status(data: Path, job_id: str) -> str:
    """Read straight from the database while no server runs: what the crash left behind."""
    import sqlite3

    with sqlite3.connect(data / "jobs.sqlite3") as db:
        return str(db.execute("SELECT status FROM jobs WHERE id=?", (job_id,)).fetchone()[0])
