"""`turnscribe serve`: registered in turnscribe.cli as a command; imports the server only when run."""

from __future__ import annotations

import functools
import importlib
import logging
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from .. import DEFAULT_EMBEDDER, DEFAULT_MODEL, Pipeline, build_pipeline
from .. import cli_options as options
from ..decoders.backends import BACKENDS, resolve_devices
from ..decoders.base import DTYPES
from ..prompt import check_language
from ..types import TurnscribeError
from .settings import LOOPBACK_HOSTS, ServerSettings

log = logging.getLogger(__name__)


def _import_factory(spec: str) -> Callable[[], Pipeline]:
    module, sep, name = spec.partition(":")
    if not (sep and module and name):
        raise typer.BadParameter(f"expected module:function, got {spec!r}")
    # As `uvicorn module:app` does: a console script's sys.path starts at its own bin folder, not the current
    # directory, where a user's factory module usually sits.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        factory = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise typer.BadParameter(f"cannot import {spec}: {e}") from e
    return factory  # type: ignore[no-any-return]


def _check_port_free(host: str, port: int) -> None:
    """Refuse an address in use now: uvicorn binds only after the app's startup, which starts loading the model
    (minutes, and on a GPU a second copy of it next to the server already listening there)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no obstacle
        try:
            probe.bind((host, port))
        except OSError as e:
            raise typer.BadParameter(f"cannot listen on {host}:{port}: {e.strerror or e}", param_hint="--port") from e


def serve(
    host: Annotated[str, typer.Option(help="Address to bind; beyond loopback only with --api-key.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535)] = 8000,
    model: Annotated[str, typer.Option(help="Hub id or local folder of the checkpoint.")] = DEFAULT_MODEL,
    backend: options.Backend = "transformers",
    language: Annotated[str, typer.Option(help="Language of requests that name none.")] = "en",
    device: options.Device = "auto",
    batch_size: options.BatchSize = 0,
    fast: options.Fast = False,
    dtype: options.Dtype = "auto",
    embedder: options.Embedder = DEFAULT_EMBEDDER,
    embedder_option: options.EmbedderOptions = None,
    trust_remote_code: options.TrustRemoteCode = False,
    api_key: Annotated[
        list[str] | None,
        typer.Option(envvar="TURNSCRIBE_API_KEYS", help="Accepted Bearer key; repeatable (env: space-separated)."),
    ] = None,
    data_dir: Annotated[Path, typer.Option(help="Uploads and the job database.")] = Path("turnscribe-data"),
    db: Annotated[Path | None, typer.Option(help="Job database (default: DATA_DIR/jobs.sqlite3).")] = None,
    max_upload_mb: Annotated[int, typer.Option(min=1, help="Largest accepted upload.")] = 1024,
    max_audio_seconds: Annotated[float, typer.Option(min=1, help="Longest accepted recording.")] = 4 * 3600,
    workers: Annotated[int, typer.Option(min=1, help="Requests transcribed at once.")] = 4,
    max_queue: Annotated[int, typer.Option(min=0, help="Requests waiting for a worker before 429.")] = 32,
    job_workers: Annotated[int, typer.Option(min=1, help="Jobs run at once.")] = 2,
    max_known_speakers: Annotated[int, typer.Option(min=0, help="Known-speaker clips per request.")] = 32,
    max_queued_jobs: Annotated[int, typer.Option(min=1, help="Queued jobs before 429.")] = 1000,
    request_timeout: Annotated[float, typer.Option(min=1, help="Seconds before a request answers 504.")] = 600,
    upload_timeout: Annotated[float, typer.Option(min=1, help="Seconds an upload may send nothing before 408.")] = 60,
    retention: Annotated[float, typer.Option(min=0, help="Seconds a finished job's audio is kept.")] = 24 * 3600,
    pipeline_factory: Annotated[
        str | None,
        typer.Option(help="module:function returning a turnscribe Pipeline, instead of --model (tests, own backends)."),
    ] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Serve OpenAI's /v1/audio/transcriptions (and durable jobs) over HTTP."""
    try:
        import uvicorn

        from .app import create_app
    except ImportError as e:
        raise typer.BadParameter(
            f"the server needs the [server] extra ({e.name} is missing): pip install 'turnscribe[server]'"
        ) from e

    keys = tuple(k for k in (api_key or []) if k)
    if not keys and host not in LOOPBACK_HOSTS:
        raise typer.BadParameter(
            "no API key configured: set --api-key (or TURNSCRIBE_API_KEYS) to bind beyond loopback", param_hint="--host"
        )
    if backend not in BACKENDS:
        raise typer.BadParameter(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if dtype not in DTYPES:
        raise typer.BadParameter(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}", param_hint="--dtype")
    try:  # a device name that is none, a GPU that is not there, several for vLLM: refused now, not on /ready
        resolve_devices(backend, device)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--device") from e
    try:
        check_language(language)
    except TurnscribeError as e:
        raise typer.BadParameter(str(e), param_hint="--language") from e
    _check_port_free(host, port)
    if not keys:
        typer.secho(
            f"warning: no API key configured; serving without authentication on {host} only", err=True, fg="yellow"
        )
    factory = (
        _import_factory(pipeline_factory)
        if pipeline_factory
        else functools.partial(
            build_pipeline,
            model=model,
            device=device,
            batch_size=batch_size or None,
            fast=fast,
            dtype=dtype,
            embedder=embedder,
            embedder_options=options.embedder_options(embedder_option),
            trust_remote_code=trust_remote_code,
            backend=backend,
        )
    )
    settings = ServerSettings(
        data_dir=data_dir,
        db_path=db,
        api_keys=keys,
        default_language=language,
        max_upload_bytes=max_upload_mb << 20,
        max_audio_seconds=max_audio_seconds,
        workers=workers,
        max_queue=max_queue,
        job_workers=job_workers,
        max_queued_jobs=max_queued_jobs,
        max_known_speakers=max_known_speakers,
        request_timeout_s=request_timeout,
        upload_timeout_s=upload_timeout,
        retention_s=retention,
    )
    uvicorn.run(create_app(settings, factory), host=host, port=port, log_level=log_level)
