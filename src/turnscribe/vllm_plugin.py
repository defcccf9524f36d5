"""A vLLM endpoint plugin: `vllm serve` answers ``response_format=diarized_json`` for this model, no vLLM file edited.

vLLM's own ``/v1/audio/transcriptions`` cannot: vLLM 0.33's request model lists ``diarized_json``, but its handler
refuses it (400) for a model without ``supports_diarized_transcription``, which its Cohere ASR model does not set;
that model's prompt ends in ``<|nodiarize|>`` whatever the request's ``prompt`` says, and it strips special tokens.

Mechanism: vLLM's endpoint-plugin API (``vllm.plugins.endpoint_plugins.interface``, checked against vLLM 0.33.0's
source). turnscribe's ``pyproject.toml`` registers
``turnscribe_diarized = "turnscribe.vllm_plugin:DiarizedTranscriptionPlugin"`` in the ``vllm.endpoint_plugins``
group; that class is a zero-argument factory of an object with ``name``, ``required_tasks``, ``attach_router(app)``
(phase A, in ``build_app``, after the core routers and before the engine exists) and
``async init_state(engine_client, state, args)`` (phase B, in ``init_app_state``, with the ``EngineClient``).
``vllm.plugins.load_endpoint_plugins`` loads endpoint plugins only when ``VLLM_PLUGINS`` names them (a
comma-separated allowlist that also narrows the other plugin groups) and the server's tasks include one of
``required_tasks``, so the launch is ``VLLM_PLUGINS=turnscribe_diarized vllm serve DIR ...``.
(``vllm.general_plugins`` is the wrong group for this: it runs in every engine process and has no access to the
HTTP app.)

What the plugin does: it registers ``POST /v1/audio/transcriptions`` ahead of vLLM's handler for that path.
A request with ``response_format=diarized_json`` runs the turnscribe pipeline (28 s windows, the diarize prompt as
token ids, greedy with repetition penalty 1.2 and special tokens kept, parse, stitch, speaker linking) on the
server's engine through ``AsyncVllmDecoder``; every other request goes to vLLM's own handler with its body
replayed unchanged, so vLLM behaves as before for everything else.

Risks, stated for operators who allowlist it: the plugin shadows a core route. vLLM 0.33's
``attach_endpoint_plugins`` drops a core route that a plugin route *after* it replaces (same path and method);
the plugin puts its route *before* vLLM's, so vLLM keeps both and ours matches first (older releases matched the
first route, so the same order works there). A diarized request bypasses vLLM's request logging and load-aware
counters for that route. It reads the whole upload into memory, up to ``TURNSCRIBE_MAX_UPLOAD_MB`` (1024 by
default, as ``turnscribe serve``; larger bodies get 413 from Content-Length, or as soon as a chunked body passes
it, then reads what it may of the rest: see ``discarding_send``): vLLM's own ``VLLM_MAX_AUDIO_CLIP_FILESIZE_MB``
(25 by default) would cut long recordings, the plugin's point. A client that disconnects stops its run once the
window it waits for is done: its other windows in flight are cancelled, which vLLM aborts, and nothing after them
is sent to the engine. Only FastAPI/Starlette, ``EndpointPlugin`` and the ``EngineClient``'s
``renderer.get_tokenizer()`` and ``generate`` are used, none of vLLM's serving internals.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.datastructures import FormData, State, UploadFile
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import Message, Receive, Scope, Send

from . import DEFAULT_EMBEDDER, Pipeline, build_pipeline
from .audio import AudioError, AudioProcesses, audio_process_count
from .decoders.vllm import AsyncVllmDecoder
from .formats import render
from .pipeline import RunControl, SpeakerCountsUnsupported
from .prompt import LanguageError, PromptTokenError, check_language
from .server.disconnect import body_on_its_way, client_left_first, discarding_send
from .server.engine import KnownSpeakersUnsupported, as_api_error, enrolled
from .server.enrollment import PARAM_NAMES, PARAM_REFERENCES, read_known_speakers
from .server.errors import APIError
from .server.settings import ServerSettings
from .speakers.clustering import check_counts
from .types import Transcript

log = logging.getLogger(__name__)

ENTRY_POINT = "turnscribe_diarized"
TRANSCRIPTIONS_PATH = "/v1/audio/transcriptions"
DIARIZED_JSON = "diarized_json"
STATE_KEY = "turnscribe_diarize"
EMBEDDER_ENV = "TURNSCRIBE_EMBEDDER"
MAX_UPLOAD_ENV = "TURNSCRIBE_MAX_UPLOAD_MB"
DEFAULT_MAX_UPLOAD_MB = 1024
REQUEST_THREADS = 256  # diarized requests run at once (vLLM's max_num_seqs is 256 by default); more wait their turn


class RequestError(Exception):
    """A request the plugin refuses, answered in OpenAI's error shape."""

    def __init__(self, status: int, message: str, *, code: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.param = status, code, param

    def response(self) -> JSONResponse:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        error = {"message": str(self), "type": kind, "param": self.param, "code": self.code}
        return JSONResponse({"error": error}, status_code=self.status)


SPEAKER_COUNTS = ("num_speakers", "min_speakers", "max_speakers")  # pyannote's hints, as `turnscribe serve` takes


@dataclass(frozen=True)
class DiarizeRequest:
    audio: bytes
    filename: str
    language: str
    speaker_counts: dict[str, int | None] = field(default_factory=dict)
    known_speakers: dict[str, np.ndarray] = field(default_factory=dict)  # name → reference samples


def wants_diarized(form: FormData) -> bool:
    return form.get("response_format") == DIARIZED_JSON


async def read_diarize_request(form: FormData, served_models: Sequence[str]) -> DiarizeRequest:
    """The form fields that matter for the diarize task. ``prompt`` and ``temperature`` are ignored on purpose:
    the prompt is always the diarize prompt built from ``language``, and decoding is greedy, as the card says."""
    model = form.get("model")
    if isinstance(model, str) and model and model not in served_models:
        raise RequestError(
            404,
            f"The model {model!r} does not exist; served: {', '.join(served_models)}",
            code="model_not_found",
            param="model",
        )
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise RequestError(
            400, "Expected the audio as a file upload in the 'file' field", code="invalid_value", param="file"
        )
    language = form.get("language")
    try:
        code = check_language(language if isinstance(language, str) and language else "en")
    except LanguageError as e:
        raise RequestError(400, str(e), code="unsupported_language", param="language") from e
    counts, known = read_speaker_counts(form), await asyncio.to_thread(read_references, form)
    return DiarizeRequest(await upload.read(), upload.filename or "audio", code, counts, known)


def read_references(form: FormData) -> dict[str, np.ndarray]:
    """OpenAI's known_speaker_names[] / known_speaker_references[], read as `turnscribe serve` reads them."""
    names, references = form.getlist(f"{PARAM_NAMES}[]"), form.getlist(f"{PARAM_REFERENCES}[]")
    if not (names or references):
        return {}
    if not all(isinstance(v, str) for v in (*names, *references)):
        raise RequestError(400, "known speakers are form text fields", code="invalid_value", param=PARAM_NAMES)
    return read_known_speakers(names, references, limit=ServerSettings.max_known_speakers)  # type: ignore[arg-type]


def read_speaker_counts(form: FormData) -> dict[str, int | None]:
    counts: dict[str, int | None] = {}
    for name in SPEAKER_COUNTS:
        value = form.get(name)
        if not isinstance(value, str) or not value.strip():
            counts[name] = None
            continue
        try:
            number = float(value)  # "2.0" too, as `turnscribe serve` (pydantic) takes it
        except ValueError:
            number = math.nan
        if not number.is_integer():
            message = f"{name} must be a whole number, not {value!r}"
            raise RequestError(400, message, code="invalid_value", param=name)
        counts[name] = int(number)
    try:
        check_counts(**counts)
    except ValueError as e:
        raise RequestError(400, str(e), code="invalid_value", param="num_speakers") from None
    return counts


def served_model_names(args: Any) -> list[str]:
    """The names `vllm serve` answers to: --served-model-name, else the model argument."""
    names = getattr(args, "served_model_name", None) or [args.model]
    return [names] if isinstance(names, str) else list(names)


class DiarizeService:
    """The turnscribe pipeline on the server's engine; transcriptions run in worker threads, decoding on the loop.

    Uploads are decoded in `AudioProcesses` (one per core): in the transcription threads PyAV would hold the GIL
    and stall vLLM's API server, whose event loop also streams every other request's output.
    """

    def __init__(self, pipeline: Pipeline, served_models: Sequence[str], audio_processes: int | None = None) -> None:
        self.pipeline = pipeline
        self.served_models = list(served_models)
        if (processes := audio_process_count(audio_processes)) > 0:
            self.pipeline.load = AudioProcesses(processes).load
        # A request's thread mostly waits for its windows. In asyncio's default executor (min(32, cores + 4)
        # threads) they capped how many requests the engine could batch together, and starved vLLM's own uses of it.
        self.threads = ThreadPoolExecutor(REQUEST_THREADS, thread_name_prefix="turnscribe-request")

    @classmethod
    async def start(cls, engine_client: Any, args: Any) -> DiarizeService:
        names = served_model_names(args)
        decoder = await AsyncVllmDecoder.for_engine(engine_client, model_id=names[0])
        embedder = os.environ.get(EMBEDDER_ENV, DEFAULT_EMBEDDER)
        pipeline = await asyncio.to_thread(build_pipeline, decoder=decoder, embedder=embedder)
        return cls(pipeline, names)

    async def transcribe(self, request: DiarizeRequest, control: RunControl | None = None) -> Transcript:
        """The transcript; raises RunStopped at the next finished window once `control` is stopped."""
        progress = (lambda _: control.check()) if control is not None else None

        def run() -> Transcript:
            pipeline = self.pipeline
            if request.known_speakers:  # enrolled for this request (embedded here, off the event loop)
                linker = enrolled(pipeline.speakers, request.known_speakers)
                pipeline = Pipeline(
                    pipeline.decoder,
                    linker,
                    window_s=pipeline.window_s,
                    overlap_s=pipeline.overlap_s,
                    load=pipeline.load,
                )
            return pipeline.run(
                request.audio,
                language=request.language,
                source=request.filename,
                progress=progress,
                **request.speaker_counts,
            )

        return await asyncio.get_running_loop().run_in_executor(self.threads, run)


ServiceFactory = Callable[[Any, Any], Awaitable[DiarizeService]]


def max_upload_bytes() -> int:
    value = os.environ.get(MAX_UPLOAD_ENV, str(DEFAULT_MAX_UPLOAD_MB))
    try:
        megabytes = float(value)
    except ValueError:
        megabytes = math.nan
    if not 0 < megabytes < math.inf:
        raise ValueError(f"${MAX_UPLOAD_ENV} must be a number of megabytes above 0, not {value!r}")
    return int(megabytes * 2**20)


class UploadTooLarge(RequestError):
    def __init__(self, limit: int, *, body_unread: bool) -> None:
        message = f"The upload exceeds the limit of {limit} bytes ({MAX_UPLOAD_ENV})"
        super().__init__(413, message, code="file_too_large", param="file")
        self.body_unread = body_unread  # the client is still sending it


class AnsweredMidUpload(Response):
    """An answer given while the client is still sending its body: see `discarding_send`."""

    def __init__(self, answer: Response) -> None:
        super().__init__()
        self.answer = answer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.answer(scope, receive, discarding_send(send, receive))


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused with 413 once it passes `limit` bytes (declared or streamed)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise UploadTooLarge(limit, body_unread=body_on_its_way(request.scope))
    chunks, size, more = [], 0, True
    while more:
        message = await request.receive()
        if message["type"] == "http.disconnect":  # gone mid-upload: not a server error with a traceback in vLLM's log
            raise client_closed()
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        more = message.get("more_body", False)
        if size > limit:
            raise UploadTooLarge(limit, body_unread=more)
    return b"".join(chunks)


def client_closed() -> RequestError:
    return RequestError(499, "The client closed the request", code="client_closed")  # nginx's status for it


def replaying(body: bytes, receive: Receive) -> Receive:
    """A receive channel that hands out `body` first, then the client's own messages (a disconnect)."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def unless_client_leaves(service: DiarizeService, request: DiarizeRequest, receive: Receive) -> Transcript:
    """The transcript, or 499 (nginx's "client closed request") as soon as the client goes away; the run then
    stops at its next finished window, its others aborted, instead of keeping the engine busy for nobody."""
    control = RunControl()
    run = asyncio.ensure_future(service.transcribe(request, control))
    if not await client_left_first(run, receive):
        return run.result()
    control.stop("cancelled")
    run.add_done_callback(lambda finished: finished.cancelled() or finished.exception())  # nobody awaits it
    raise client_closed()


class ReplayedRequest(Response):
    """Hands the request, body included, to another route: vLLM's own handler for what turnscribe does not serve."""

    def __init__(self, route: BaseRoute, body: bytes) -> None:
        super().__init__()
        self.route = route
        self.request_body = body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.route.handle(scope, replaying(self.request_body, receive), send)


class DiarizedTranscriptionPlugin:
    """The ``vllm.endpoint_plugins`` entry point: see the module docstring."""

    name = ENTRY_POINT
    required_tasks: tuple[str, ...] | None = ("transcription",)

    def __init__(self, service_factory: ServiceFactory = DiarizeService.start) -> None:
        self.service_factory = service_factory
        self.fallback: BaseRoute | None = None

    def attach_router(self, app: FastAPI) -> None:
        """Phase A: our route goes right before vLLM's (kept as the fallback), so it matches first on any vLLM."""
        # A bad limit stops `vllm serve` now, not every transcription request later (vLLM's own formats included).
        max_upload_bytes()
        routes = app.router.routes
        self.fallback = next(
            (
                r
                for r in routes
                if isinstance(r, APIRoute) and r.path == TRANSCRIPTIONS_PATH and "POST" in (r.methods or ())
            ),
            None,
        )
        app.add_api_route(TRANSCRIPTIONS_PATH, self.create_transcription, methods=["POST"], include_in_schema=False)
        ours = routes.pop()
        routes.insert(routes.index(self.fallback) if self.fallback is not None else 0, ours)

    async def init_state(self, engine_client: Any, state: State, args: Any) -> None:
        """Phase B: start the pipeline on the engine, if this model has the diarize prompt's tokens."""
        setattr(state, STATE_KEY, None)
        if engine_client is None:  # vLLM's CPU-only render server: nothing to decode with
            return
        try:
            setattr(state, STATE_KEY, await self.service_factory(engine_client, args))
        except PromptTokenError as e:
            log.warning("turnscribe: diarized_json stays off for this model: %s", e)

    async def create_transcription(self, raw_request: Request) -> Response:
        try:
            body = await read_body(raw_request, max_upload_bytes())  # kept: it may be replayed to vLLM's route
        except UploadTooLarge as e:
            return AnsweredMidUpload(e.response()) if e.body_unread else e.response()
        except RequestError as e:
            return e.response()
        service: DiarizeService | None = getattr(raw_request.app.state, STATE_KEY, None)
        form = await Request(raw_request.scope, replaying(body, raw_request.receive)).form()
        try:
            if service is None or not wants_diarized(form):
                if self.fallback is None:
                    raise RequestError(404, "This server has no transcription handler", code="not_found")
                return ReplayedRequest(self.fallback, body)
            request = await read_diarize_request(form, service.served_models)
            transcript = await unless_client_leaves(service, request, raw_request.receive)
        except RequestError as e:
            return e.response()
        except AudioError as e:
            return RequestError(400, str(e), code="invalid_audio", param="file").response()
        except (APIError, SpeakerCountsUnsupported, KnownSpeakersUnsupported) as e:  # answered as `turnscribe serve`
            return as_api_error(e).response()
        except Exception as e:  # every window failing, or the embedder (e.g. out of GPU memory beside vLLM)
            log.exception("turnscribe: transcription failed")
            return RequestError(500, str(e) or type(e).__name__, code="transcription_failed").response()
        finally:
            await form.close()
        return Response(render(transcript, DIARIZED_JSON), media_type="application/json")
