"""What a server instance is configured with; the CLI fills it from options, tests build it directly."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
# Names OpenAI clients already send; accepted so that they work unchanged.
DEFAULT_MODEL_ALIASES = ("gpt-4o-transcribe-diarize",)


@dataclass(frozen=True)
class ServerSettings:
    data_dir: Path
    db_path: Path | None = None  # None: <data_dir>/jobs.sqlite3
    api_keys: tuple[str, ...] = ()
    model_aliases: tuple[str, ...] = DEFAULT_MODEL_ALIASES
    default_language: str = "en"
    max_upload_bytes: int = 1 << 30
    max_audio_seconds: float = 4 * 3600
    workers: int = 4  # transcription requests run at once (their windows share decoder batches)
    max_queue: int = 32  # requests waiting for a worker before 429
    job_workers: int = 2
    max_queued_jobs: int = 1000
    max_known_speakers: int = 32  # reference clips per request (each one is decoded and embedded)
    request_timeout_s: float = 600.0
    upload_timeout_s: float = 60.0  # an upload that sends nothing for this long is answered 408
    retention_s: float = 24 * 3600
    retry_after_s: int = 5
    janitor_interval_s: float = 60.0

    @property
    def database(self) -> Path:
        return self.db_path or self.data_dir / "jobs.sqlite3"

    @property
    def uploads(self) -> Path:
        return self.data_dir / "uploads"
