"""The HTTP API: OpenAI's `POST /v1/audio/transcriptions`, durable jobs, models, health and metrics.

`create_app(settings, pipeline_factory)` builds it; the pipeline is made in the background at startup (so /health
answers while a model loads) and every route that needs it answers 503 until /ready does.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import re
import shutil
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, File, Form, Query, Request, Response, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from fastapi.sse import EventSourceResponse, format_sse_event
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import __version__
from ..formats import render
from ..pipeline import Pipeline, RunControl, RunStopped, SpeakerCountsUnsupported, StopReason
from ..prompt import LANGUAGES, check_language
from ..types import Transcript, text_separator
from .disconnect import DISCARD_TIMEOUT_S, body_on_its_way, client_left_first, discarding_send
from .engine import (
    NO_SPEAKER_COUNTS,
    Engine,
    KnownSpeakersUnsupported,
    SpeakerCounts,
    StreamSegment,
    as_api_error,
)
from .enrollment import read_known_speakers
from .errors import APIError, KeyChecker, bearer, error_responses, install_error_handlers
from .jobs import Job, JobRunner, JobStatus, JobStore, remove_file
from .metrics import Metrics
from .settings import ServerSettings

log = logging.getLogger(__name__)

ResponseFormat = Literal["json", "text", "srt", "vtt", "verbose_json", "diarized_json", "rttm", "seglst"]
STREAMABLE = ("json", "text", "diarized_json")
STATIC = Path(__file__).parent / "static"  # the web page: a client of this API
_FORM_SLACK = 1 << 20  # bytes of multipart framing and text fields allowed on top of the file itself


@dataclass(frozen=True)
class TranscriptionForm:
    file: UploadFile
    model: str
    language: str
    response_format: ResponseFormat
    known_speaker_names: tuple[str, ...] = ()
    known_speaker_references: tuple[str, ...] = ()  # data URLs, as sent
    speaker_counts: SpeakerCounts = NO_SPEAKER_COUNTS

    @property
    def source(self) -> str:
        return Path(self.file.filename or "audio").name or "audio"


def _check_chunking(value: str | None, vad_type: str | None) -> None:
    """'auto', a server_vad object as JSON, or its fields as `chunking_strategy[...]` (how the OpenAI SDK sends it)."""
    if value is None or value == "auto":
        return
    try:
        parsed = json.loads(value)
    except ValueError:
        parsed = None
    if not (isinstance(parsed, dict) and parsed.get("type") == "server_vad") and vad_type is None:
        raise APIError(
            400, "chunking_strategy must be 'auto' or an object with type 'server_vad'", param="chunking_strategy"
        )


async def transcription_form(
    file: Annotated[UploadFile, File(description="The audio or video file, any format FFmpeg reads.")],
    model: Annotated[str, Form(min_length=1, description="The served model id (GET /v1/models) or an alias.")],
    language: Annotated[
        str | None,
        Form(description="ISO-639-1 code; default: the server's --language.", json_schema_extra={"enum": [*LANGUAGES]}),
    ] = None,
    prompt: Annotated[str | None, Form(description="Accepted and ignored: the diarize prompt is fixed.")] = None,
    response_format: Annotated[ResponseFormat, Form()] = "json",
    temperature: Annotated[float, Form(ge=0, le=1, description="Accepted and ignored: decoding is greedy.")] = 0,
    timestamp_granularities: Annotated[
        list[Literal["segment", "word"]] | None,
        Form(alias="timestamp_granularities[]", description="'segment' only: the model gives no word times."),
    ] = None,
    chunking_strategy: Annotated[
        str | None, Form(description="Accepted and ignored: 'auto' or a server_vad object; windows are fixed.")
    ] = None,
    chunking_strategy_type: Annotated[Literal["server_vad"] | None, Form(alias="chunking_strategy[type]")] = None,
    chunking_prefix_padding_ms: Annotated[int | None, Form(alias="chunking_strategy[prefix_padding_ms]", ge=0)] = None,
    chunking_silence_duration_ms: Annotated[
        int | None, Form(alias="chunking_strategy[silence_duration_ms]", ge=0)
    ] = None,
    chunking_threshold: Annotated[float | None, Form(alias="chunking_strategy[threshold]", ge=0, le=1)] = None,
    known_speaker_names: Annotated[
        list[str] | None,
        Form(alias="known_speaker_names[]", description="Names for known_speaker_references, in the same order."),
    ] = None,
    known_speaker_references: Annotated[
        list[str] | None,
        Form(
            alias="known_speaker_references[]",
            description="Data URLs of 2-10 s clips; speakers matching one are labelled with its name.",
        ),
    ] = None,
    num_speakers: Annotated[
        int | None, Form(ge=1, description="turnscribe: the number of speakers, if known (pyannote's hint).")
    ] = None,
    min_speakers: Annotated[int | None, Form(ge=1, description="turnscribe: at least this many speakers.")] = None,
    max_speakers: Annotated[int | None, Form(ge=1, description="turnscribe: at most this many speakers.")] = None,
) -> TranscriptionForm:
    _check_chunking(chunking_strategy, chunking_strategy_type)
    if timestamp_granularities and "word" in timestamp_granularities:
        raise APIError(
            400,
            "word timestamps are not available: the model gives segment times only",
            param="timestamp_granularities[]",
            code="invalid_value",
        )
    names, references = tuple(known_speaker_names or ()), tuple(known_speaker_references or ())
    counts = SpeakerCounts(num_speakers, min_speakers, max_speakers)
    try:
        counts.check()
    except ValueError as e:
        raise APIError(400, str(e), param="num_speakers", code="invalid_value") from None
    return TranscriptionForm(file, model, language or "", response_format, names, references, counts)


def _usage(transcript: Transcript) -> dict[str, Any]:
    return {"type": "duration", "seconds": math.ceil(transcript.duration)}


def _verbose_json(transcript: Transcript) -> dict[str, Any]:
    # OpenAI's verbose segment fields that this model has no value for carry neutral placeholders.
    return {
        "task": "transcribe",
        "language": LANGUAGES[transcript.language].lower(),
        "duration": transcript.duration,
        "text": transcript.text,
        "segments": [
            {
                "id": seg.id,
                "seek": 0,
                "start": seg.start,
                "end": seg.end,
                "text": seg.text,
                "tokens": [],
                "temperature": 0.0,
                "avg_logprob": 0.0,
                "compression_ratio": 0.0,
                "no_speech_prob": 0.0,
                "speaker": seg.speaker,
            }
            for seg in transcript.segments
        ],
        "usage": _usage(transcript),
    }


def render_response(transcript: Transcript, fmt: str, source: str) -> Response:
    if fmt == "json":
        return JSONResponse({"text": transcript.text, "usage": _usage(transcript)})
    if fmt == "verbose_json":
        return JSONResponse(_verbose_json(transcript))
    if fmt == "text":
        return PlainTextResponse(transcript.text + "\n")
    if fmt in ("diarized_json", "seglst"):
        return Response(render(transcript, fmt, uri=Path(source).stem), media_type="application/json")
    return PlainTextResponse(render(transcript, fmt, uri=Path(source).stem))


def _segment_event(seg: StreamSegment, fmt: str, language: str) -> dict[str, Any]:
    if fmt == "diarized_json":
        return {"type": "transcript.text.segment", **seg.__dict__}
    # segment_id: OpenAI's diarizing model names the segment a delta belongs to, so clients can group by speaker.
    return {
        "type": "transcript.text.delta",
        "delta": (text_separator(language) if seg.id != "seg_0" else "") + seg.text,
        "segment_id": seg.id,
    }


def _done_event(transcript: Transcript) -> dict[str, Any]:
    # OpenAI's done event carries the text; the final segments (file-wide speaker labels) are turnscribe's addition.
    # No usage: the event's usage is OpenAI's token usage, which this model's duration-based usage is not.
    return {
        "type": "transcript.text.done",
        "text": transcript.text,
        "duration": transcript.duration,
        "speakers": list(transcript.speakers),
        "segments": [
            {"type": "transcript.text.segment", **s.to_dict(), "id": f"seg_{s.id}"} for s in transcript.segments
        ],
    }


def _sse(data: dict[str, Any]) -> bytes:
    return format_sse_event(data_str=json.dumps(data, ensure_ascii=False))


class RequestGuard:
    """Refuses what must be refused before the body is read: a /v1 request without a valid key (401), and a body
    over the limit (413, at once from Content-Length, or as soon as a chunked body passes it), each answer followed
    by `discarding_send`'s bounded read of the rest so that it reaches the client; and answers 408 for an upload
    that stalls: a client that stops sending mid-body would otherwise hold a connection for ever."""

    def __init__(
        self, app: ASGIApp, keys: KeyChecker, max_file_bytes: int, form_slack: int, idle_timeout_s: float
    ) -> None:
        self.app = app
        self.keys = keys
        self.max_file_bytes = max_file_bytes  # the limit users are told of
        self.max_bytes = max_file_bytes + form_slack  # what the body may hold: the file, its framing, the fields
        self.idle_timeout_s = idle_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = APIError(
            413,
            f"The upload is larger than this server's limit of {self.max_file_bytes} bytes.",
            param="file",
            code="file_too_large",
            headers=_CLOSE,
        )
        # A client that stalls while its refused body is read is let go after the idle timeout, as one that stalls
        # mid-upload.
        discarding = discarding_send(send, receive, min(DISCARD_TIMEOUT_S, self.idle_timeout_s))
        headers = Headers(scope=scope)
        refusal = None
        if _under_v1(scope["path"]) and not self.keys.accepts(headers.get("authorization")):
            refusal = self.keys.refusal()
        length = headers.get("content-length")
        if refusal is None and length is not None and length.isdigit() and int(length) > self.max_bytes:
            refusal = too_large
        if refusal is not None:
            response = refusal.response()
            response.headers.update(_CLOSE)
            return await response(scope, receive, discarding if body_on_its_way(scope) else send)
        seen = 0
        body_done = refused_mid_body = False

        async def guarded() -> Message:
            nonlocal seen, body_done, refused_mid_body
            if body_done:  # after the body, receive() waits for a disconnect: no timeout there
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.idle_timeout_s)
            except TimeoutError:
                raise APIError(
                    408,
                    f"The upload stalled: nothing arrived for {self.idle_timeout_s:g} s.",
                    param="file",
                    code="upload_timeout",
                    headers=_CLOSE,
                ) from None
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                refused_mid_body = message.get("more_body", False)
                raise too_large
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        async def answering(message: Message) -> None:
            await (discarding if refused_mid_body else send)(message)

        await self.app(scope, guarded, answering)


class HeadAsGet:
    """Answers HEAD as GET, which FastAPI's routes do not: uptime checks and `curl -I` use it, and RFC 9110 asks it
    of every general-purpose server. The server sends no body for HEAD (its own scope still says HEAD)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            return await self.app(scope, receive, send)
        as_get = {**scope, "method": "GET"}

        async def sending(message: Message) -> None:
            # The route matched is set in the copy: the request metrics (outside) read it once the answer starts.
            if message["type"] == "http.response.start" and "route" in as_get:
                scope["route"] = as_get["route"]
            await send(message)

        await self.app(as_get, receive, sending)


# Sent with an answer given before the whole body was read (discarding_send stops at a bound): the rest of it would
# otherwise have to be read (and thrown away) before the connection could carry another request.
_CLOSE = {"Connection": "close"}


def _under_v1(path: str) -> bool:
    return path == "/v1" or path.startswith("/v1/")


class _Services:
    """What the lifespan starts; routes wait for `ready`."""

    def __init__(self) -> None:
        self.engine: Engine | None = None
        self.store: JobStore | None = None
        self.runner: JobRunner | None = None
        self.load_error: str | None = None
        self.starting = threading.Lock()  # the services start, or the server stops: one, then the other
        self.started_at = int(time.time())

    def ready(self) -> tuple[Engine, JobStore, JobRunner]:
        if self.engine is None or self.store is None or self.runner is None:
            detail = f"the model failed to load: {self.load_error}" if self.load_error else "the model is loading"
            raise APIError(
                503,
                f"Not ready: {detail}" + ("" if detail.endswith(".") else "."),  # a load error may end its sentence
                type="server_error",
                code="not_ready",
                headers={"Retry-After": "5"},
            )
        return self.engine, self.store, self.runner


def create_app(settings: ServerSettings, pipeline_factory: Callable[[], Pipeline]) -> FastAPI:
    metrics = Metrics()
    services = _Services()

    def load(store: JobStore, stopping: threading.Event) -> None:
        try:
            pipeline = pipeline_factory()
        except Exception as e:  # shown by /ready; the server stays up to say so
            log.exception("loading the pipeline failed")
            services.load_error = str(e) or type(e).__name__
            return
        with services.starting:
            if stopping.is_set():  # the server stopped while the model loaded: it did not wait, start nothing
                return
            engine = Engine(pipeline, settings, metrics)
            engine.start()
            runner = JobRunner(store, engine, settings)
            runner.start()
            services.engine, services.runner = engine, runner

    def serve_until(stopping: threading.Event, store: JobStore) -> None:
        """Load, wait for the server to stop, then stop what was started, all in this one thread.

        The thread lives as long as the server because the kernel kills forked workers (the audio processes that
        engine.start() forks arm PR_SET_PDEATHSIG, and so may whatever the pipeline factory forks) as soon as the
        thread that forked them ends, not the process.
        """
        load(store, stopping)
        stopping.wait()
        if services.runner:
            services.runner.stop()
        if services.engine:
            services.engine.stop()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The store first: its lock refuses a second server before it could remove the first one's uploads.
        store = JobStore(settings.database)
        shutil.rmtree(settings.uploads / "requests", ignore_errors=True)  # left by a crash mid-request
        (settings.uploads / "requests").mkdir(parents=True, exist_ok=True)
        services.store = store
        metrics.queue_depth.labels("jobs").set_function(lambda: store.count("queued"))
        stopping = threading.Event()
        # In a thread, so that /health answers while the model loads.
        worker = threading.Thread(target=serve_until, args=(stopping, store), name="turnscribe-services", daemon=True)
        worker.start()
        yield
        with services.starting:
            stopping.set()
            started = services.engine is not None
        # A model still loading (a download from the hub can take many minutes) is not waited for: Ctrl-C stops
        # the server at once. Started services are, so that running jobs are queued again.
        if started:
            worker.join()
        store.close()

    app = FastAPI(
        title="turnscribe",
        version=__version__,
        summary="Speaker-attributed transcription with an OpenAI-compatible API",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.add_middleware(
        RequestGuard,
        keys=KeyChecker(settings.api_keys),
        max_file_bytes=settings.max_upload_bytes,
        form_slack=_FORM_SLACK,
        idle_timeout_s=settings.upload_timeout_s,
    )
    app.add_middleware(HeadAsGet)

    @app.middleware("http")
    async def count_requests(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = getattr(request.scope.get("route"), "path", "unmatched")
        metrics.requests.labels(request.method, route, str(response.status_code)).inc()
        metrics.request_seconds.labels(route).observe(time.perf_counter() - started)
        return response

    page = (
        (STATIC / "index.html")
        .read_text()
        .replace("__LANGUAGES__", json.dumps(LANGUAGES))
        # The page's menu starts at --language, the language of a request that names none.
        .replace("__DEFAULT_LANGUAGE__", check_language(settings.default_language))
    )
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def web_page() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health", summary="The process is up")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", summary="The model is loaded and requests are served", responses=error_responses(503))
    def ready() -> dict[str, str]:
        engine, _, _ = services.ready()
        return {"status": "ready", "model": engine.model_id}

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(bearer)])  # RequestGuard checks the key: see bearer
    common = error_responses(400, 401, 503)

    def model_ids(engine: Engine) -> list[str]:
        return list(dict.fromkeys([engine.model_id, *settings.model_aliases]))

    def model_object(model_id: str) -> dict[str, Any]:
        return {"id": model_id, "object": "model", "created": services.started_at, "owned_by": "turnscribe"}

    def check_model(engine: Engine, model: str) -> None:
        if model not in model_ids(engine):
            raise APIError(
                404,
                f"The model '{model}' does not exist; this server serves {', '.join(model_ids(engine))}.",
                param="model",
                code="model_not_found",
            )

    def check_request(engine: Engine, form: TranscriptionForm) -> str:
        check_model(engine, form.model)
        try:
            if form.known_speaker_names or form.known_speaker_references:
                engine.enrolling_linker()  # 400 before the upload is read, if it cannot
            engine.pipeline.speakers_for(**asdict(form.speaker_counts))  # 400 before the upload, if it cannot
            return check_language(form.language or settings.default_language)
        except (ValueError, KnownSpeakersUnsupported, SpeakerCountsUnsupported) as e:
            raise as_api_error(e) from None

    async def known_speakers_of(form: TranscriptionForm) -> dict[str, np.ndarray]:
        if not (form.known_speaker_names or form.known_speaker_references):
            return {}
        return await run_in_threadpool(
            read_known_speakers,
            list(form.known_speaker_names),
            list(form.known_speaker_references),
            limit=settings.max_known_speakers,
        )

    async def save_upload(form: TranscriptionForm, path: Path, engine: Engine) -> float | None:
        """Write the upload to `path` and probe it; on any failure nothing is left behind."""
        if form.file.size is not None and form.file.size > settings.max_upload_bytes:
            raise APIError(
                413,
                f"The upload is larger than this server's limit of {settings.max_upload_bytes} bytes.",
                param="file",
                code="file_too_large",
            )

        def write_and_probe() -> float | None:
            with path.open("wb") as out:
                shutil.copyfileobj(form.file.file, out, 1 << 20)
            return engine.probe(path, form.source)

        try:
            return await run_in_threadpool(write_and_probe)
        except Exception as e:
            remove_file(path)
            raise as_api_error(e) from None

    def upload_path(folder: Path, stem: str, form: TranscriptionForm) -> Path:
        # The extension is a hint for FFmpeg's probing; anything odd in it is dropped.
        suffix = Path(form.source).suffix
        return folder / (stem + (suffix if re.fullmatch(r"\.[A-Za-z0-9]{1,8}", suffix) else ""))

    @v1.get("/models", summary="List the served model and its aliases", responses=common)
    def list_models() -> dict[str, Any]:
        engine, _, _ = services.ready()
        return {"object": "list", "data": [model_object(m) for m in model_ids(engine)]}

    @v1.get("/models/{model:path}", summary="Describe one model", responses=error_responses(400, 401, 404, 503))
    def get_model(model: str) -> dict[str, Any]:
        engine, _, _ = services.ready()
        check_model(engine, model)
        return model_object(model)

    @v1.post(
        "/audio/transcriptions",
        summary="Transcribe with speaker labels (OpenAI's create transcription)",
        response_model=None,
        responses={
            200: {
                "description": "The transcript in `response_format`, or server-sent events with `stream=true`",
                "content": {
                    "application/json": {"schema": {"type": "object"}},
                    "text/plain": {"schema": {"type": "string"}},
                    "text/event-stream": {"schema": {"type": "string"}},
                },
            },
            **error_responses(400, 401, 404, 408, 413, 429, 500, 503, 504),
        },
    )
    async def create_transcription(
        request: Request,
        form: Annotated[TranscriptionForm, Depends(transcription_form)],
        stream: Annotated[bool, Form(description="Server-sent events as windows finish.")] = False,
    ) -> Response:
        engine, _, _ = services.ready()
        language = check_request(engine, form)
        if stream and form.response_format not in STREAMABLE:
            raise APIError(400, f"stream=true needs response_format {', '.join(STREAMABLE)}", param="stream")
        known = await known_speakers_of(form)
        path = upload_path(settings.uploads / "requests", uuid.uuid4().hex, form)
        await save_upload(form, path, engine)
        control = RunControl(deadline=time.monotonic() + settings.request_timeout_s)
        run = functools.partial(
            engine.transcribe,
            path,
            language=language,
            source=form.source,
            control=control,
            known_speakers=known,
            speaker_counts=form.speaker_counts,
        )
        if stream:
            return _stream(engine, run, path, form, language, control)  # the stream removes the upload when it ends
        try:
            future = engine.submit(run)
            transcript = await _wait_for_run(asyncio.wrap_future(future), request, control)
            return render_response(transcript, form.response_format, form.source)
        finally:
            remove_file(path)

    async def _wait_for_run(run: Awaitable[Transcript], request: Request, control: RunControl) -> Transcript:
        """The run's transcript; or, if the client goes away or the deadline passes first, stop the run."""
        result = asyncio.ensure_future(run)
        left = await client_left_first(result, request.receive, settings.request_timeout_s)
        if result.done():
            try:
                return result.result()
            except Exception as e:
                raise as_api_error(e) from None
        result.cancel()  # a run still queued never starts; one running ends at its next window (control.stop)
        reason: StopReason = "cancelled" if left else "timeout"
        control.stop(reason)
        if reason == "cancelled":
            # Nobody reads this answer; 499 (nginx's "client closed request") keeps the metrics honest.
            raise APIError(499, "The client closed the request.", type="server_error", code="client_closed")
        raise as_api_error(RunStopped("timeout"))

    def _stream(
        engine: Engine,
        run: Callable[..., Transcript],
        path: Path,
        form: TranscriptionForm,
        language: str,
        control: RunControl,
    ) -> Response:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[StreamSegment | BaseException | Transcript] = asyncio.Queue()

        def put(item: StreamSegment | BaseException | Transcript) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        def work() -> None:
            try:
                put(run(on_segment=put))
            except BaseException as e:
                put(e)

        try:
            engine.submit(work)  # a full queue answers 429 before the stream starts
        except BaseException:
            remove_file(path)
            raise

        async def events() -> AsyncIterator[bytes]:
            try:
                while True:
                    remaining = (control.deadline or 0) - time.monotonic()
                    try:
                        item = await asyncio.wait_for(queue.get(), max(remaining, 0.0) + 1.0)
                    except TimeoutError:
                        item = RunStopped("timeout")
                    if isinstance(item, StreamSegment):
                        yield _sse(_segment_event(item, form.response_format, language))
                        continue
                    if isinstance(item, Transcript):
                        yield _sse(_done_event(item))
                    else:  # mid-stream the status is sent: the error goes in an event, as OpenAI's streams do
                        yield _sse({"type": "error", "error": as_api_error(item).body.model_dump()})
                    return
            finally:
                control.stop("cancelled")  # a client that went away stops the work; harmless after the end
                remove_file(path)

        # No caching, and no buffering by a reverse proxy (nginx), so that each event reaches the client as it is sent.
        return EventSourceResponse(events(), headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    def job_or_404(store: JobStore, job_id: str) -> Job:
        job = store.get(job_id)
        if job is None:
            raise APIError(404, f"No job with id '{job_id}'.", param="job_id", code="job_not_found")
        return job

    @v1.post(
        "/audio/jobs",
        summary="Create a durable transcription job (same fields as /v1/audio/transcriptions, no stream)",
        status_code=202,
        responses=error_responses(400, 401, 404, 408, 413, 429, 503),
    )
    async def create_job(form: Annotated[TranscriptionForm, Depends(transcription_form)]) -> dict[str, Any]:
        engine, store, runner = services.ready()
        language = check_request(engine, form)
        known = await known_speakers_of(form)  # a bad reference is the request's 400, not the job's failure
        if store.count("queued") >= settings.max_queued_jobs:
            raise APIError(
                429,
                "Too many queued jobs. Retry later.",
                type="rate_limit_error",
                code="queue_full",
                headers={"Retry-After": str(settings.retry_after_s)},
            )
        job_id = f"job_{uuid.uuid4().hex}"
        path = upload_path(settings.uploads, job_id, form)
        duration = await save_upload(form, path, engine)
        job = store.create(
            job_id=job_id,
            model=form.model,
            language=language,
            response_format=form.response_format,
            filename=form.source,
            audio_path=path,
            duration=duration,
            known_speakers=dict(zip(known, form.known_speaker_references)),  # the names as checked (stripped)
            speaker_counts=form.speaker_counts,
        )
        runner.notify()
        return job.to_api()

    @v1.get("/audio/jobs", summary="List jobs, newest first", responses=common)
    def list_jobs(
        status: Annotated[JobStatus | None, Query()] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> dict[str, Any]:
        _, store, _ = services.ready()
        return {"object": "list", "data": [j.to_api() for j in store.recent(status=status, limit=limit)]}

    @v1.get("/audio/jobs/{job_id}", summary="Job status and progress", responses=error_responses(400, 401, 404, 503))
    def get_job(job_id: str) -> dict[str, Any]:
        _, store, _ = services.ready()
        return job_or_404(store, job_id).to_api()

    @v1.get(
        "/audio/jobs/{job_id}/result",
        summary="The finished job's transcript, in the job's response_format or the one asked for",
        response_model=None,
        responses={
            200: {
                "description": "The transcript",
                "content": {
                    "application/json": {"schema": {"type": "object"}},
                    "text/plain": {"schema": {"type": "string"}},
                },
            },
            **error_responses(400, 401, 404, 409, 503),
        },
    )
    def get_job_result(job_id: str, response_format: Annotated[ResponseFormat | None, Query()] = None) -> Response:
        _, store, _ = services.ready()
        job = job_or_404(store, job_id)
        if job.status != "succeeded":
            raise APIError(
                409,
                f"Job {job_id} is {job.status}; a result exists only once it has succeeded.",
                param="job_id",
                code="job_not_succeeded",
            )
        return render_response(job.transcript(), response_format or job.response_format, job.filename)

    @v1.post(
        "/audio/jobs/{job_id}/cancel",
        summary="Cancel a queued or running job",
        responses=error_responses(400, 401, 404, 503),
    )
    def cancel_job(job_id: str) -> dict[str, Any]:
        _, store, runner = services.ready()
        job_or_404(store, job_id)
        runner.cancel(job_id)
        return job_or_404(store, job_id).to_api()

    @v1.delete(
        "/audio/jobs/{job_id}",
        summary="Delete a job, its result and its audio (cancels it if unfinished)",
        responses=error_responses(400, 401, 404, 503),
    )
    def delete_job(job_id: str) -> dict[str, Any]:
        _, store, runner = services.ready()
        job_or_404(store, job_id)
        runner.delete(job_id)
        return {"id": job_id, "object": "transcription.job.deleted", "deleted": True}

    app.include_router(v1)
    return app
