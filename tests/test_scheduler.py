"""The batch scheduler in front of the model: fairness, no window lost or duplicated, batches across requests,
back-pressure, length bucketing; and `run_many`, which transcribes many files through one scheduler."""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_pipeline import FakeEmbedder, tone, write_wav

from turnscribe import Pipeline, audio
from turnscribe.audio import load_audio
from turnscribe.decoders import ScriptedDecoder
from turnscribe.decoders.base import WindowAudio
from turnscribe.scheduler import BatchScheduler, ScheduledDecoder, SchedulerFull, files_at_once_for, run_many
from turnscribe.speakers import ClusteringLinker
from turnscribe.types import SAMPLE_RATE, TurnscribeError, WindowSpan

TIMEOUT = 30.0
_ids = itertools.count()


def window(seconds: float = 28.0, uid: int | None = None) -> WindowAudio:
    """A window whose span index is a unique id, so that outputs show which window they answer."""
    n = int(seconds * SAMPLE_RATE)
    uid = next(_ids) if uid is None else uid
    return WindowAudio(WindowSpan(uid, 0, n), np.full(n, 0.1, np.float32))


class RecordingDecoder:
    """Answers window id N with "wN"; records every batch; `gate` (when set) holds each call until it opens."""

    name = "recording"
    model_id = "recording"

    def __init__(self, batch_size: int = 4, gate: threading.Event | None = None, fail: set[int] | None = None):
        self.batch_size = batch_size
        self.gate = gate
        self.fail = fail or set()
        self.batches: list[list[tuple[int, str, float]]] = []  # (window id, language, seconds)
        self._lock = threading.Lock()

    def decode(self, windows: Sequence[WindowAudio], language: str) -> list[str]:
        with self._lock:
            self.batches.append([(w.span.index, language, len(w.samples) / SAMPLE_RATE) for w in windows])
        if self.gate is not None:
            assert self.gate.wait(TIMEOUT)
        if any(w.span.index in self.fail for w in windows):
            raise RuntimeError("CUDA out of memory")
        return [f"w{w.span.index}" for w in windows]

    def ids(self) -> list[list[int]]:
        return [[uid for uid, _, _ in batch] for batch in self.batches]


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    requests=st.lists(
        st.tuples(
            st.sampled_from(["en", "de"]),
            st.lists(st.floats(min_value=1.0, max_value=30.0), min_size=0, max_size=12),
        ),
        min_size=1,
        max_size=6,
    ),
    batch_size=st.integers(1, 5),
    max_pending=st.integers(1, 8),
)
def test_every_window_is_decoded_exactly_once_and_answered_with_its_own_output(requests, batch_size, max_pending):
    decoder = RecordingDecoder(batch_size)
    submitted = [(language, [window(s) for s in seconds]) for language, seconds in requests]
    with BatchScheduler(decoder, max_pending=max_pending) as scheduler, ThreadPoolExecutor(len(requests)) as pool:
        # Concurrent submitters, each blocking on the bounded queue as needed.
        jobs = [pool.submit(scheduler.submit, windows, language) for language, windows in submitted]
        futures = [job.result(TIMEOUT) for job in jobs]
        answers = [[f.result(TIMEOUT) for f in fs] for fs in futures]
    for (_, windows), outputs in zip(submitted, answers):
        assert outputs == [f"w{w.span.index}" for w in windows]
    decoded = [uid for batch in decoder.ids() for uid in batch]
    expected = [w.span.index for _, windows in submitted for w in windows]
    assert sorted(decoded) == sorted(expected)  # none lost, none twice
    for batch in decoder.batches:
        assert 1 <= len(batch) <= batch_size
        assert len({language for _, language, _ in batch}) == 1  # one prompt per batch


@pytest.mark.parametrize("short_seconds", [28.0, 5.0])
def test_a_long_file_does_not_starve_a_short_one(short_seconds):
    gate = threading.Event()
    decoder = RecordingDecoder(batch_size=4, gate=gate)
    with BatchScheduler(decoder) as scheduler:
        long_file = scheduler.submit([window() for _ in range(40)], "en", request="long")
        wait_until(lambda: decoder.batches, "the first batch to start")
        short_file = scheduler.submit([window(short_seconds) for _ in range(2)], "en", request="short")
        gate.set()
        for f in short_file + long_file:
            f.result(TIMEOUT)
    short_ids = {int(f.result()[1:]) for f in short_file}
    done_in = max(i for i, batch in enumerate(decoder.ids()) if short_ids & set(batch))
    # The first batch was already running; a FIFO queue would reach the short file only in the 11th.
    assert done_in <= 2, decoder.ids()


def test_batches_are_formed_across_requests():
    gate = threading.Event()
    decoder = RecordingDecoder(batch_size=6, gate=gate)
    with BatchScheduler(decoder) as scheduler:
        first = scheduler.submit([window()], "en", request="r0")
        wait_until(lambda: decoder.batches, "the first batch to start")
        per_request = {f"r{i}": scheduler.submit([window(), window()], "en", request=f"r{i}") for i in range(1, 4)}
        gate.set()
        for f in first + [f for fs in per_request.values() for f in fs]:
            f.result(TIMEOUT)
    owner = {int(f.result()[1:]): r for r, fs in per_request.items() for f in fs}
    assert len(decoder.batches) == 2
    assert {owner[uid] for uid in decoder.ids()[1]} == {"r1", "r2", "r3"}


def test_windows_of_similar_length_share_a_batch():
    decoder = RecordingDecoder(batch_size=3)
    scheduler = BatchScheduler(decoder)  # not started: everything is queued before the first batch forms
    lengths = [28.0, 5.0, 27.0, 6.0, 28.0, 5.5]
    futures = scheduler.submit([window(s) for s in lengths], "en")
    with scheduler:
        for f in futures:
            f.result(TIMEOUT)
    assert [sorted(s for _, _, s in batch) for batch in decoder.batches] == [[27.0, 28.0, 28.0], [5.0, 5.5, 6.0]]


def test_a_full_queue_blocks_or_refuses_submitters():
    decoder = RecordingDecoder(batch_size=2)
    scheduler = BatchScheduler(decoder, max_pending=4)
    with pytest.raises(SchedulerFull):
        scheduler.submit([window() for _ in range(5)], "en", timeout=0)
    assert scheduler.pending == 0  # all or nothing
    queued = scheduler.submit([window() for _ in range(4)], "en")
    with pytest.raises(SchedulerFull):
        scheduler.submit([window()], "en", timeout=0.05)
    late: list = []
    blocked = threading.Thread(target=lambda: late.extend(scheduler.submit([window()], "en")))
    blocked.start()
    time.sleep(0.1)
    assert blocked.is_alive() and scheduler.pending == 4  # waits for room
    with scheduler:  # the model drains the queue: the blocked submitter gets in
        blocked.join(TIMEOUT)
        assert not blocked.is_alive()
        assert [f.result(TIMEOUT) for f in queued + late] == [f"w{uid}" for b in decoder.ids() for uid in b]


def test_a_failing_window_fails_only_its_own_future_and_cancelled_ones_are_skipped():
    bad, skipped = window(), window()
    decoder = RecordingDecoder(batch_size=4, fail={bad.span.index})
    scheduler = BatchScheduler(decoder)
    good = scheduler.submit([window(), bad, window()], "en", request="a")
    (cancelled,) = scheduler.submit([skipped], "en", request="b")
    assert cancelled.cancel()
    with scheduler:
        assert [f.exception(TIMEOUT) is not None for f in good] == [False, True, False]
    assert "CUDA out of memory" in str(good[1].exception())
    assert skipped.span.index not in {uid for batch in decoder.ids() for uid in batch}


def test_stop_releases_waiting_windows():
    scheduler = BatchScheduler(RecordingDecoder())
    (future,) = scheduler.submit([window()], "en")
    scheduler.stop()
    assert "shutting down" in str(future.exception(TIMEOUT))


def script(span: WindowSpan) -> str:
    return f"<|spltoken0|><|t:1.0|> window {span.index} <|t:3.0|>"


def test_a_scheduled_pipeline_gives_the_plain_pipelines_transcript_with_progress_per_window():
    plain = Pipeline(ScriptedDecoder(script, batch_size=3), ClusteringLinker(FakeEmbedder()))
    expected = plain.run(tone(150), sampling_rate=SAMPLE_RATE)
    with BatchScheduler(plain.decoder) as scheduler:
        decoder = ScheduledDecoder(scheduler)
        events: list = []
        got = Pipeline(decoder, plain.speakers).run(tone(150), sampling_rate=SAMPLE_RATE, progress=events.append)
    assert got.segments == expected.segments and len(got.segments) == expected.metadata.windows == 6
    assert [e.done for e in events if e.kind == "window"] == [1, 2, 3, 4, 5, 6]
    assert sorted(decoder.outputs) == list(range(6))


def test_run_many_yields_every_file_and_shares_batches_across_files(tmp_path, monkeypatch, audio_processes_started):
    paths = []
    for i, seconds in enumerate([70, 30, 5]):
        paths.append(tmp_path / f"f{i}.wav")
        write_wav(paths[-1], tone(seconds) * (0.5 + 0.2 * i))  # each file at its own level
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"not audio")
    submitted = threading.Semaphore(0)
    original_submit = BatchScheduler.submit

    def counting_submit(self, *args, **kwargs):
        futures = original_submit(self, *args, **kwargs)
        submitted.release()
        return futures

    monkeypatch.setattr(BatchScheduler, "submit", counting_submit)
    seen: list[list[float]] = []

    class LevelRecording(ScriptedDecoder):
        def decode(self, windows, language):
            if not seen:  # hold the first batch until every file has queued its windows
                for _ in paths:
                    assert submitted.acquire(timeout=TIMEOUT)
            seen.append(sorted({round(float(np.abs(w.samples).max()), 2) for w in windows}))
            return super().decode(windows, language)

    pipeline = Pipeline(LevelRecording(script, batch_size=8), ClusteringLinker(FakeEmbedder()))
    results = list(run_many(pipeline, [*paths, broken], files_at_once=4))
    # Files are decoded in worker processes, one per core up to 16 (none with one core).
    cores = min(os.cpu_count() or 1, 16)
    assert audio_processes_started == ([cores] if cores > 1 else [])
    assert sorted(r.index for r in results) == [0, 1, 2, 3]
    by_index = {r.index: r for r in results}
    assert by_index[3].transcript is None and by_index[3].error is not None
    assert any(len(levels) > 1 for levels in seen), seen
    for i, path in enumerate(paths):
        alone = pipeline.run(path, source=str(path))
        assert by_index[i].error is None and by_index[i].source == str(path)
        assert by_index[i].transcript.segments == alone.segments


def test_run_many_reads_audio_ahead_of_the_files_in_flight(tmp_path, monkeypatch):
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"f{i}.wav")
        write_wav(paths[-1], tone(40) * (0.4 + 0.2 * i))
    events: list[tuple[str, str]] = []

    class RecordedProcesses(audio.AudioProcesses):
        def load(self, source, sampling_rate=None):
            events.append(("read", Path(source).name))
            return super().load(source, sampling_rate)

    monkeypatch.setattr(audio, "AudioProcesses", RecordedProcesses)
    pipeline = Pipeline(ScriptedDecoder(script, batch_size=2), ClusteringLinker(FakeEmbedder()))
    results = []
    for result in run_many(pipeline, paths, files_at_once=1, audio_processes=2):
        events.append(("done", Path(result.source).name))
        results.append(result)
    # With one file in flight, the next file's audio is read while the first is transcribed.
    assert set(events[:2]) == {("read", "f0.wav"), ("read", "f1.wav")}
    assert events.index(("read", "f1.wav")) < events.index(("done", "f0.wav"))
    assert [e for e in events if e[0] == "done"] == [("done", f"f{i}.wav") for i in range(3)]
    for result, path in zip(results, paths):
        assert result.error is None
        assert result.transcript.segments == pipeline.run(path).segments


def test_run_many_on_arrays_starts_no_audio_processes(audio_processes_started):
    pipeline = Pipeline(ScriptedDecoder(script, batch_size=4), ClusteringLinker(FakeEmbedder()))
    results = list(run_many(pipeline, [tone(30), tone(5)], sampling_rate=SAMPLE_RATE, audio_processes=2))
    assert sorted(r.index for r in results) == [0, 1] and all(r.error is None for r in results)
    assert audio_processes_started == []  # nothing to decode: no processes forked for it


def test_an_unexpected_error_in_one_file_fails_only_that_file(caplog):
    # Anything a file raises (a bug, a crash in a library) is its result; the other files still run.
    def load_or_crash(audio_input, sampling_rate):
        if len(audio_input) == 7 * SAMPLE_RATE:
            raise RuntimeError("boom")
        return load_audio(audio_input, sampling_rate)

    pipeline = Pipeline(ScriptedDecoder(script, batch_size=4), ClusteringLinker(FakeEmbedder()), load=load_or_crash)
    results = sorted(run_many(pipeline, [tone(5), tone(7), tone(9)], sampling_rate=SAMPLE_RATE), key=lambda r: r.index)
    assert [r.error is None for r in results] == [True, False, True]
    assert isinstance(results[1].error, TurnscribeError) and "RuntimeError: boom" in str(results[1].error)
    assert isinstance(results[1].error.__cause__, RuntimeError)
    assert "boom" in caplog.text  # logged with its traceback


def test_files_at_once_by_default_fills_the_decoders_batches():
    assert files_at_once_for(4) == 4  # the CPU's batches
    assert files_at_once_for(64) == 6  # two batches of windows from 10-minute files (22 windows each)
    assert files_at_once_for(480) == 32  # a GPU's batches: at most 32 files (and as many read ahead) held


def test_run_many_by_default_runs_enough_files_at_once_for_the_batch_size():
    in_flight = threading.Barrier(files_at_once_for(64), timeout=TIMEOUT)  # broken unless all load at once

    def load_together(audio_input, sampling_rate):
        in_flight.wait()
        return load_audio(audio_input, sampling_rate)

    pipeline = Pipeline(ScriptedDecoder(script, batch_size=64), ClusteringLinker(FakeEmbedder()), load=load_together)
    inputs = [tone(20) for _ in range(files_at_once_for(64))]
    results = list(run_many(pipeline, inputs, sampling_rate=SAMPLE_RATE))
    assert sorted(r.index for r in results) == list(range(len(inputs)))
    assert all(r.error is None for r in results)


def test_closing_run_many_early_stops_the_files_in_flight_instead_of_finishing_them():
    # Ctrl-C in the CLI, or a caller that stops reading: the files in flight must not be decoded to the end first.
    decoded = []

    class Slow(ScriptedDecoder):
        def decode(self, windows, language):
            time.sleep(0.05)
            decoded.extend(w.span.index for w in windows)
            return super().decode(windows, language)

    linked = []

    class Recording(ClusteringLinker):
        def assign(self, segments, samples):
            linked.append(len(samples))
            return super().assign(segments, samples)

    pipeline = Pipeline(Slow(script, batch_size=1), Recording(FakeEmbedder()))
    inputs = [tone(20), tone(1300), tone(20)]  # 1 window, 50 windows (2.5 s of decoding), 1 window
    results = run_many(pipeline, inputs, sampling_rate=SAMPLE_RATE, files_at_once=2)
    first = next(results)
    assert first.index == 0 and first.error is None
    start = time.monotonic()
    results.close()
    assert time.monotonic() - start < 2.0  # the long file's windows left are not decoded first
    assert len(decoded) < 25
    assert len(linked) == 1  # only the file that was done: the long one does not go on to the embedder


def test_closing_run_many_early_drops_the_reads_not_begun_also_of_files_in_flight(tmp_path, monkeypatch, caplog):
    # One audio process: f1's read holds up the rest, so f2, in flight, still waits for its audio when the caller
    # closes the run (Ctrl-C): that read, like those ahead, must not be decoded for nobody before the run can end.
    paths = []
    for i in range(5):
        paths.append(tmp_path / f"f{i}.wav")
        write_wav(paths[-1], tone(5) * (0.4 + 0.1 * i))
    gate = threading.Event()
    reads: list[str] = []

    class HeldProcesses(audio.AudioProcesses):
        def load(self, source, sampling_rate=None):
            reads.append(Path(source).name)
            if Path(source).name == "f1.wav":
                assert gate.wait(TIMEOUT)
            return super().load(source, sampling_rate)

    monkeypatch.setattr(audio, "AudioProcesses", HeldProcesses)
    pipeline = Pipeline(ScriptedDecoder(script, batch_size=2), ClusteringLinker(FakeEmbedder()))
    results = run_many(pipeline, paths, files_at_once=3, audio_processes=1)
    assert next(results).index == 0
    threading.Timer(0.2, gate.set).start()  # f1's read ends only after the close has begun
    results.close()
    assert reads == ["f0.wav", "f1.wav"]
    assert "failed" not in caplog.text  # f2 stopped quietly, like the files whose windows were dropped


def test_run_many_reads_with_the_pipelines_own_loader(tmp_path, audio_processes_started):
    # The audio processes run load_audio: a loader of the caller's own (a URL, another track) must not be bypassed
    # for paths, as it was on Linux with more than one core and not elsewhere.
    read: list[str] = []

    def own_loader(audio_input, sampling_rate):
        read.append(str(audio_input))
        return tone(5)

    pipeline = Pipeline(ScriptedDecoder(script, batch_size=4), ClusteringLinker(FakeEmbedder()), load=own_loader)
    sources = [str(tmp_path / "not-a-file.wav"), "s3://bucket/meeting.wav"]
    results = list(run_many(pipeline, sources, audio_processes=2))
    assert all(r.error is None for r in results) and sorted(read) == sorted(sources)
    assert audio_processes_started == []
