"""Durable transcription jobs: SQLite (WAL) records, claimed atomically by worker threads.

A job goes queued → running → succeeded | failed | cancelled. A worker claims it by that status change in one
UPDATE, and records its result (or error) only while the job is still `running` under the same claim, in the same
statement that ends it: a job has at most one result. If the process dies, jobs left `running` are queued again at
the next start and run from the beginning; that repeats work, never a result. A job that was running at
`MAX_CRASHES` deaths of the process is failed instead, since it may be what kills it. A lock file keeps a second
server process off the same database, where it would re-queue jobs the first one is still running.
"""

from __future__ import annotations

import fcntl
import json
import logging
import sqlite3
import threading
import time
import uuid
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

from ..pipeline import RunControl, RunStopped
from ..types import Repair, Segment, Transcript, TranscriptMetadata, TurnscribeError
from .engine import NO_SPEAKER_COUNTS, Engine, SpeakerCounts, as_api_error
from .enrollment import read_known_speakers
from .errors import ErrorBody
from .settings import ServerSettings

log = logging.getLogger(__name__)

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
FINISHED: tuple[JobStatus, ...] = ("succeeded", "failed", "cancelled")
# A job found running at this many starts is failed, not queued again: a job that kills the server (runs it out of
# memory, crashes a library) would otherwise kill it at every start. A clean stop queues running jobs without a count.
MAX_CRASHES = 3

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    model TEXT NOT NULL,
    language TEXT NOT NULL,
    response_format TEXT NOT NULL,
    filename TEXT NOT NULL,
    audio_path TEXT,
    duration REAL,
    windows_done INTEGER NOT NULL DEFAULT 0,
    windows_total INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    crashes INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    result TEXT,
    known_speakers TEXT,
    speaker_counts TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, created_at);
"""
# Columns added after the first release: a database made by an older server gets them at start.
_ADDED_COLUMNS = {"known_speakers": "TEXT", "crashes": "INTEGER NOT NULL DEFAULT 0", "speaker_counts": "TEXT"}


class DatabaseInUse(TurnscribeError):
    pass


@dataclass(frozen=True)
class Job:
    id: str
    status: JobStatus
    created_at: float
    started_at: float | None
    finished_at: float | None
    model: str
    language: str
    response_format: str
    filename: str
    audio_path: str | None
    duration: float | None
    windows_done: int
    windows_total: int | None
    attempts: int
    error: str | None
    result: str | None
    known_speakers: str | None  # JSON: name → reference data URL, as sent; removed with the audio
    crashes: int  # times the server died while running it
    speaker_counts: str | None = None  # JSON: the request's SpeakerCounts, if it gave any

    def to_api(self) -> dict[str, Any]:
        def seconds(t: float | None) -> int | None:
            return None if t is None else int(t)

        return {
            "id": self.id,
            "object": "transcription.job",
            "status": self.status,
            "model": self.model,
            "language": self.language,
            "response_format": self.response_format,
            "filename": self.filename,
            "created_at": seconds(self.created_at),
            "started_at": seconds(self.started_at),
            "finished_at": seconds(self.finished_at),
            "duration": self.duration,
            "progress": {"windows_done": self.windows_done, "windows_total": self.windows_total},
            "attempts": self.attempts,
            "error": json.loads(self.error) if self.error else None,
            "known_speaker_names": list(self.known_speaker_references()),
            **asdict(self.counts()),
        }

    def counts(self) -> SpeakerCounts:
        return SpeakerCounts(**json.loads(self.speaker_counts)) if self.speaker_counts else NO_SPEAKER_COUNTS

    def known_speaker_references(self) -> dict[str, str]:
        return json.loads(self.known_speakers) if self.known_speakers else {}

    def transcript(self) -> Transcript:
        if self.result is None:
            raise ValueError(f"job {self.id} has no result")
        return transcript_from_dict(json.loads(self.result))


def transcript_from_dict(data: dict[str, Any]) -> Transcript:
    """The inverse of Transcript.to_dict, for results stored as JSON and rendered later in any format."""
    meta = dict(data["metadata"])
    meta["repairs"] = [Repair(**r) for r in meta["repairs"]]
    return Transcript(
        segments=[Segment(**s) for s in data["segments"]],
        speakers=list(data["speakers"]),
        language=data["language"],
        duration=data["duration"],
        metadata=TranscriptMetadata(**meta),
    )


class JobStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(path.with_name(path.name + ".lock"), "a")  # noqa: SIM115 -- held for our lifetime
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise DatabaseInUse(f"{path} is in use by another turnscribe server") from None
        # One connection shared by the threads, each call under the lock; autocommit (isolation_level=None).
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode survives a crash of the process (kill -9); only power loss can drop the last commits.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            present = {row["name"] for row in self._db.execute("PRAGMA table_info(jobs)")}
            for column, kind in _ADDED_COLUMNS.items():
                if column not in present:
                    self._db.execute(f"ALTER TABLE jobs ADD COLUMN {column} {kind}")

    def close(self) -> None:
        with self._lock:
            self._db.close()
        self._lock_file.close()

    def _one(self, sql: str, *args: object) -> Job | None:
        with self._lock:
            row = self._db.execute(sql, args).fetchone()
        return None if row is None else Job(**dict(row))

    def _exec(self, sql: str, *args: object) -> int:
        with self._lock:
            return self._db.execute(sql, args).rowcount

    def recover(self) -> tuple[int, int]:
        """Jobs that were running when the process died start again from the beginning, unless this was their
        MAX_CRASHES-th time: those fail. Returns (queued again, failed)."""
        error = ErrorBody(
            message=f"The server stopped {MAX_CRASHES} times while running this job (killed, for example for memory, "
            "or crashed); it is not run again. See the server's log.",
            type="server_error",
            code="job_crashed",
        )
        with self._lock:
            failed = self._db.execute(
                "UPDATE jobs SET status='failed', finished_at=?, error=?, crashes=crashes+1 "
                "WHERE status='running' AND crashes+1 >= ?",
                (time.time(), json.dumps(error.model_dump()), MAX_CRASHES),
            ).rowcount
            queued = self._db.execute(
                "UPDATE jobs SET status='queued', windows_done=0, crashes=crashes+1 WHERE status='running'"
            ).rowcount
        return queued, failed

    def create(
        self,
        *,
        model: str,
        language: str,
        response_format: str,
        filename: str,
        audio_path: Path,
        duration: float | None,
        job_id: str | None = None,
        known_speakers: dict[str, str] | None = None,
        speaker_counts: SpeakerCounts = NO_SPEAKER_COUNTS,
    ) -> Job:
        job_id = job_id or f"job_{uuid.uuid4().hex}"
        self._exec(
            "INSERT INTO jobs (id, status, created_at, model, language, response_format, filename, audio_path, "
            "duration, known_speakers, speaker_counts) VALUES (?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            job_id,
            time.time(),
            model,
            language,
            response_format,
            filename,
            str(audio_path),
            duration,
            json.dumps(known_speakers) if known_speakers else None,
            json.dumps(asdict(speaker_counts)) if speaker_counts.given else None,
        )
        job = self.get(job_id)
        assert job is not None
        return job

    def get(self, job_id: str) -> Job | None:
        return self._one("SELECT * FROM jobs WHERE id=?", job_id)

    def recent(self, *, status: str | None, limit: int) -> list[Job]:
        """The newest jobs, without their results: a listing shows none, and a 4-hour transcript is megabytes."""
        columns = ", ".join("NULL AS result" if f.name == "result" else f.name for f in fields(Job))
        sql = (
            f"SELECT {columns} FROM jobs" + (" WHERE status=?" if status else "") + " ORDER BY created_at DESC LIMIT ?"
        )
        with self._lock:
            rows = self._db.execute(sql, (status, limit) if status else (limit,)).fetchall()
        return [Job(**dict(r)) for r in rows]

    def count(self, status: JobStatus) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM jobs WHERE status=?", (status,)).fetchone()[0])

    def claim(self) -> Job | None:
        return self._one(
            "UPDATE jobs SET status='running', started_at=?, attempts=attempts+1, windows_done=0 "
            "WHERE id=(SELECT id FROM jobs WHERE status='queued' ORDER BY created_at, rowid LIMIT 1) "
            "AND status='queued' RETURNING *",
            time.time(),
        )

    def progress(self, job_id: str, done: int, total: int) -> None:
        self._exec(
            "UPDATE jobs SET windows_done=?, windows_total=? WHERE id=? AND status='running'", done, total, job_id
        )

    def finish(
        self,
        job: Job,
        status: JobStatus,
        *,
        result: str | None = None,
        error: str | None = None,
        duration: float | None = None,
    ) -> bool:
        """End a claimed job; False if it is no longer this claim's to end (cancelled, deleted).

        `duration`, the decoded length, replaces the container's estimate made at upload (which a header can
        understate, or not give at all)."""
        return bool(
            self._exec(
                "UPDATE jobs SET status=?, finished_at=?, result=?, error=?, duration=COALESCE(?, duration) "
                "WHERE id=? AND status='running' AND attempts=?",
                status,
                time.time(),
                result,
                error,
                duration,
                job.id,
                job.attempts,
            )
        )

    def requeue(self, job: Job) -> None:
        self._exec(
            "UPDATE jobs SET status='queued', windows_done=0 WHERE id=? AND status='running' AND attempts=?",
            job.id,
            job.attempts,
        )

    def cancel(self, job_id: str) -> Job | None:
        self._exec(
            "UPDATE jobs SET status='cancelled', finished_at=? WHERE id=? AND status IN ('queued', 'running')",
            time.time(),
            job_id,
        )
        return self.get(job_id)

    def delete(self, job_id: str) -> Job | None:
        return self._one("DELETE FROM jobs WHERE id=? RETURNING *", job_id)

    def expired_audio(self, finished_before: float) -> list[Job]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM jobs WHERE audio_path IS NOT NULL AND status IN ('succeeded', 'failed', 'cancelled') "
                "AND finished_at < ?",
                (finished_before,),
            ).fetchall()
        return [Job(**dict(r)) for r in rows]

    def forget_audio(self, job_id: str) -> None:
        # Reference clips are voices too: they go with the recording.
        self._exec("UPDATE jobs SET audio_path=NULL, known_speakers=NULL WHERE id=?", job_id)


def remove_file(path: str | Path | None) -> None:
    if path:
        Path(path).unlink(missing_ok=True)


class JobRunner:
    """Worker threads that claim and run jobs, and a janitor that removes audio once retention has passed."""

    def __init__(self, store: JobStore, engine: Engine, settings: ServerSettings) -> None:
        self.store = store
        self.engine = engine
        self.settings = settings
        self._controls: dict[str, RunControl] = {}
        self._controls_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._threads = [
            threading.Thread(target=self._work, name=f"turnscribe-job-{i}", daemon=True)
            for i in range(settings.job_workers)
        ] + [threading.Thread(target=self._janitor, name="turnscribe-janitor", daemon=True)]

    def start(self) -> None:
        requeued, failed = self.store.recover()
        if requeued:
            log.warning("%d job(s) were running when the server stopped; running them again", requeued)
        if failed:
            log.error("%d job(s) failed: the server died %d times while running each of them", failed, MAX_CRASHES)
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self._wake.set()
        with self._controls_lock:
            for control in self._controls.values():
                control.stop("shutdown")
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def notify(self) -> None:
        self._wake.set()

    def cancel(self, job_id: str) -> Job | None:
        job = self.store.cancel(job_id)
        self._stop_run(job_id)
        return job

    def delete(self, job_id: str) -> Job | None:
        job = self.store.delete(job_id)
        if job is not None:
            self._stop_run(job_id)
            remove_file(job.audio_path)
        return job

    def _stop_run(self, job_id: str) -> None:
        with self._controls_lock:
            control = self._controls.get(job_id)
        if control:
            control.stop("cancelled")

    def _work(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            job = self.store.claim()
            if job is None:
                self._wake.wait(1.0)  # also polls, in case a notify fell between claim() and wait()
                continue
            self._run(job)

    def _run(self, job: Job) -> None:
        control = RunControl()
        with self._controls_lock:
            self._controls[job.id] = control
        try:
            references = job.known_speaker_references()
            transcript = self.engine.transcribe(
                Path(job.audio_path or ""),
                known_speakers=read_known_speakers(list(references), list(references.values()), limit=len(references)),
                speaker_counts=job.counts(),
                language=job.language,
                source=job.filename,
                control=control,
                on_progress=lambda done, total: self.store.progress(job.id, done, total),
            )
        except RunStopped as stopped:
            if stopped.reason == "shutdown":
                self.store.requeue(job)  # not the job's fault: the next start runs it
        except Exception as error:
            if self._stopping.is_set():
                # Failed while the server stops: likely by the stop (the audio processes shut down under the run),
                # so the job runs again at the next start rather than failing for good.
                log.warning("job %s failed while the server stopped (%s); queued again", job.id, error)
                self.store.requeue(job)
                return
            body = as_api_error(error).body.model_dump()
            self.store.finish(job, "failed", error=json.dumps(body))
        else:
            result = json.dumps(transcript.to_dict(), ensure_ascii=False)
            self.store.finish(job, "succeeded", result=result, duration=transcript.duration)
        finally:
            with self._controls_lock:
                self._controls.pop(job.id, None)

    def _janitor(self) -> None:
        while not self._stopping.wait(self.settings.janitor_interval_s):
            self.sweep()

    def sweep(self) -> None:
        for job in self.store.expired_audio(time.time() - self.settings.retention_s):
            remove_file(job.audio_path)
            self.store.forget_audio(job.id)
