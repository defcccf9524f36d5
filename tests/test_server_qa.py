"""Server behaviours found in QA: starting next to a running server (same data folder, same port), stopping
while the model loads, a job's duration, known speakers' data URLs as shell tools write them."""

from __future__ import annotations

import asyncio
import base64
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import typer
from test_audio_hostile import mp3_claiming_frames
from test_pipeline import FakeEmbedder, tone, write_wav
from test_server import TIMEOUT, HeldDecoder, job, linker, post, running, settings_for, wait_until
from test_server_scripted import SlotLinker as ScriptedSlotLinker
from test_server_scripted import script
from typer.testing import CliRunner

from turnscribe import Pipeline
from turnscribe.decoders import ScriptedDecoder
from turnscribe.pipeline import SpeakerCountsUnsupported
from turnscribe.server import create_app
from turnscribe.server.cli import serve
from turnscribe.server.engine import as_api_error
from turnscribe.server.enrollment import read_known_speakers
from turnscribe.server.errors import APIError
from turnscribe.server.jobs import DatabaseInUse, JobStore
from turnscribe.speakers import ClusteringLinker
from turnscribe.types import SAMPLE_RATE


def test_a_second_server_on_the_same_data_folder_leaves_the_first_ones_requests_alone(tmp_path):
    recording = tmp_path / "tone.wav"
    write_wav(recording, tone(3))
    held = HeldDecoder()
    held.hold_from = 0
    settings = settings_for(tmp_path / "data", workers=1)

    def pipeline() -> Pipeline:
        return Pipeline(held, ClusteringLinker(FakeEmbedder()))

    requests = settings.uploads / "requests"
    with running(settings, pipeline) as url, ThreadPoolExecutor(2) as pool:
        first = pool.submit(post, url, recording, response_format="text")
        wait_until(lambda: held.batches, what="the first request to reach the decoder")
        second = pool.submit(post, url, recording, response_format="text")  # waits for the worker, on disk
        wait_until(lambda: len(list(requests.iterdir())) == 2, what="the second upload to be saved")

        async def start_second_server() -> None:
            app = create_app(settings, pipeline)
            async with app.router.lifespan_context(app):
                pass

        with pytest.raises(DatabaseInUse):
            asyncio.run(start_second_server())
        held.gate.set()
        for response in (first.result(TIMEOUT), second.result(TIMEOUT)):
            assert response.status_code == 200, response.text


def test_a_finished_job_says_how_long_its_recording_really_is(tmp_path):
    # A header can understate the length (or, as in a browser's WebM recording, not give it at all): the probe's
    # estimate is all a queued job has, the decoded length is what a finished one reports.
    recording = mp3_claiming_frames(tmp_path / "claim.mp3", 30, 10)
    with running(settings_for(tmp_path / "data"), lambda: Pipeline(ScriptedDecoder(script), linker())) as url:
        created = post(url, recording, endpoint="/v1/audio/jobs")
        assert created.status_code == 202 and created.json()["duration"] < 1
        job_id = created.json()["id"]
        wait_until(lambda: job(url, job_id)["status"] == "succeeded", what="the job to finish")
        assert job(url, job_id)["duration"] == pytest.approx(30, abs=0.1)


def test_a_known_speakers_reference_may_break_its_base64_into_lines(tmp_path):
    clip = tmp_path / "alice.wav"
    write_wav(clip, tone(3))
    # As `curl -F "known_speaker_references[]=data:audio/wav;base64,$(base64 alice.wav)"` sends it.
    wrapped = base64.encodebytes(clip.read_bytes()).decode()
    assert "\n" in wrapped
    samples = read_known_speakers(["Alice"], [f"data:audio/wav;base64,{wrapped}"], limit=1)["Alice"]
    assert len(samples) == 3 * SAMPLE_RATE
    with pytest.raises(APIError, match="not valid base64"):
        read_known_speakers(["Alice"], [f"data:audio/wav;base64,{wrapped[:-5]}!!!!\n"], limit=1)


def test_a_port_in_use_is_refused_before_the_model_loads(monkeypatch, tmp_path):
    # uvicorn binds only after the app's startup, which starts loading the model: minutes, and on a GPU a second
    # copy of the model next to the server already on that port.
    started = []
    monkeypatch.setattr("turnscribe.server.app.create_app", lambda settings, factory: started.append("app"))
    monkeypatch.setattr("uvicorn.run", lambda app, **options: started.append("uvicorn"))
    app = typer.Typer()
    app.command()(serve)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = CliRunner().invoke(app, ["--port", port, "--data-dir", str(tmp_path)])
    assert result.exit_code == 2 and f"127.0.0.1:{port}" in result.output and "in use" in result.output
    assert started == []


def test_a_server_stopped_while_its_model_loads_does_not_wait_for_the_load(tmp_path):
    loading, loaded = threading.Event(), threading.Event()

    def slow_factory() -> Pipeline:  # a model downloading from the hub
        loading.set()
        loaded.wait(TIMEOUT)
        return Pipeline(ScriptedDecoder(script), linker())

    settings = settings_for(tmp_path)
    app = create_app(settings, slow_factory)

    async def start_then_stop() -> None:
        async with app.router.lifespan_context(app):
            await asyncio.to_thread(loading.wait, TIMEOUT)

    stopping = threading.Thread(target=asyncio.run, args=(start_then_stop(),))
    stopping.start()
    stopping.join(TIMEOUT / 2)
    try:
        assert not stopping.is_alive(), "the server waited for the model to load before it stopped"
        JobStore(settings.database).close()  # the stopped server let go of its database
    finally:
        loaded.set()


def test_a_job_running_at_every_crash_is_failed_at_the_third_not_run_forever(tmp_path):
    """A job that kills the server (out of memory, a crashing library) must not kill it at every start; a clean
    stop's requeue is not a crash."""
    from turnscribe.server.jobs import MAX_CRASHES

    database = tmp_path / "jobs.sqlite3"

    def add(store: JobStore, name: str) -> str:
        return store.create(
            model="m", language="en", response_format="json", filename=name, audio_path=tmp_path / name, duration=1.0
        ).id

    store = JobStore(database)
    poison, bystander = add(store, "poison.wav"), add(store, "bystander.wav")
    clean = store.claim()
    assert clean is not None and clean.id == poison
    store.requeue(clean)  # a clean stop puts it back: not counted
    assert store.recover() == (0, 0)
    for crash in range(1, MAX_CRASHES + 1):
        claimed = store.claim()
        assert claimed is not None and claimed.id == poison  # the oldest queued job, as after every restart
        store.close()  # the process dies with the job running
        store = JobStore(database)
        expected = (1, 0) if crash < MAX_CRASHES else (0, 1)
        assert store.recover() == expected, crash
    failed = store.get(poison)
    assert failed is not None and failed.status == "failed" and failed.finished_at is not None
    error = failed.to_api()["error"]
    assert (
        error["code"] == "job_crashed"
        and error["type"] == "server_error"
        and f"{MAX_CRASHES} times" in error["message"]
    )
    assert failed.attempts == MAX_CRASHES + 1 and failed.crashes == MAX_CRASHES
    nxt = store.claim()
    assert nxt is not None and nxt.id == bystander  # the queue moves on
    store.close()


def test_a_database_from_before_crash_counts_gets_the_column(tmp_path):
    import sqlite3

    database = tmp_path / "jobs.sqlite3"
    JobStore(database).close()
    with sqlite3.connect(database) as db:
        db.execute("ALTER TABLE jobs DROP COLUMN crashes")
        db.execute(
            "INSERT INTO jobs (id, status, created_at, model, language, response_format, filename) "
            "VALUES ('old', 'running', 0, 'm', 'en', 'json', 'a.wav')"
        )
    store = JobStore(database)
    assert store.recover() == (1, 0)
    old = store.get("old")
    assert old is not None and old.status == "queued" and old.crashes == 1
    store.close()


def test_ready_says_why_the_model_failed_to_load_in_one_sentence(tmp_path):
    from fastapi.testclient import TestClient

    def failing() -> Pipeline:
        raise TypeError("Unknown embedder 'resnet'; choose from redimnet2, resemblyzer.")

    with TestClient(create_app(settings_for(tmp_path), failing)) as client:
        wait_until(lambda: "failed" in client.get("/ready").text, what="the load to fail")
        answer = client.get("/ready")
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "5"
    message = answer.json()["error"]["message"]
    assert (
        message == "Not ready: the model failed to load: Unknown embedder 'resnet'; choose from redimnet2, resemblyzer."
    )


def test_a_job_that_fails_while_the_server_stops_runs_again_at_the_next_start(tmp_path):
    """Stopping closes the audio processes under a run that outlived the workers' join: its error
    ('cannot schedule new futures after shutdown') is the stop's doing, not the job's."""
    from turnscribe.server.jobs import JobRunner

    started, stop_now = threading.Event(), threading.Event()

    class StoppingEngine:
        def transcribe(self, *args, **kwargs):
            started.set()
            stop_now.wait(TIMEOUT)
            raise RuntimeError("cannot schedule new futures after shutdown")

    settings = settings_for(tmp_path)
    store = JobStore(settings.database)
    job_id = store.create(
        model="m", language="en", response_format="json", filename="a.wav", audio_path=tmp_path / "a.wav", duration=1
    ).id
    runner = JobRunner(store, StoppingEngine(), settings)  # type: ignore[arg-type]
    runner.start()
    assert started.wait(TIMEOUT)
    stopper = threading.Thread(target=runner.stop, kwargs={"timeout": TIMEOUT})
    stopper.start()
    wait_until(runner._stopping.is_set, what="the runner to be stopping")
    stop_now.set()
    stopper.join(TIMEOUT)
    job_now = store.get(job_id)
    assert job_now is not None and job_now.status == "queued" and job_now.error is None
    assert store.recover() == (0, 0)  # queued by the stop, not left running: no crash counted
    store.close()


def test_a_job_listing_leaves_the_results_in_the_database(tmp_path):
    # GET /v1/audio/jobs shows no results, but read each one (megabytes for a 4-hour transcript) for up to 1000 jobs.
    store = JobStore(tmp_path / "jobs.sqlite3")
    store.create(model="m", language="en", response_format="json", filename="a.wav", audio_path=tmp_path, duration=1)
    claimed = store.claim()
    assert claimed is not None and store.finish(claimed, "succeeded", result='{"segments": []}')
    (listed,) = store.recent(status="succeeded", limit=10)
    assert listed.result is None and listed.status == "succeeded" and listed.filename == "a.wav"
    assert listed.to_api() == store.get(claimed.id).to_api()  # type: ignore[union-attr]
    assert store.get(claimed.id).result == '{"segments": []}'  # type: ignore[union-attr]
    store.close()


def test_speaker_counts_need_a_linker_that_takes_them():
    # A --pipeline-factory may bring a linker of its own, which knows no counts: a 400 that says so, not a crash.
    class OwnLinker(ScriptedSlotLinker):
        pass

    pipeline = Pipeline(ScriptedDecoder(script), OwnLinker())
    assert pipeline.speakers_for(None, None, None) is pipeline.speakers
    with pytest.raises(SpeakerCountsUnsupported, match="slots or baseline linker; this pipeline has OwnLinker"):
        pipeline.speakers_for(2, None, None)
    error = as_api_error(SpeakerCountsUnsupported("no counts"))
    assert (error.status_code, error.body.code) == (400, "speaker_counts_unsupported")
