"""The vLLM endpoint plugin, without vLLM: a FastAPI app with a stand-in for vLLM's transcription route.

The stand-in route has vLLM 0.33's shape (a form model; diarized_json refused for this model), so these
tests show what the plugin changes: diarized_json is answered by turnscribe on the engine client, everything else
reaches the original handler with the request unchanged.
"""

import asyncio
import importlib
import io
import json
import logging
import wave
from argparse import Namespace
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Literal

import httpx
import numpy as np
import pytest
from fastapi import FastAPI, Form, UploadFile
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from pydantic import BaseModel, ConfigDict
from test_server_scripted import SlotLinker
from tiny_model import build_tokenizer
from vllm_fakes import FakeEngine

from turnscribe import Pipeline
from turnscribe.audio import AudioProcesses, load_audio
from turnscribe.decoders import ScriptedDecoder
from turnscribe.decoders.vllm import AsyncVllmDecoder
from turnscribe.prompt import PromptTokenError, diarize_prompt_tokens
from turnscribe.types import SAMPLE_RATE
from turnscribe.vllm_plugin import (
    ENTRY_POINT,
    MAX_UPLOAD_ENV,
    STATE_KEY,
    TRANSCRIPTIONS_PATH,
    DiarizedTranscriptionPlugin,
    DiarizeService,
    served_model_names,
)
from turnscribe.windows import DEFAULT_OVERLAP_S, DEFAULT_WINDOW_S, plan_windows

SCRIPT = "<|spltoken0|><|t:1.0|> Hello there. <|t:3.0|><|spltoken1|><|t:5.0|> General Kenobi. <|t:8.0|><|endoftext|>"
ARGS = Namespace(model="/models/diarize", served_model_name=["syvai/cohere-transcribe-diarize"])


class VllmTranscriptionForm(BaseModel):
    """vLLM 0.33's TranscriptionRequest, cut to what matters here (its response formats, diarized_json included)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    file: UploadFile
    model: str | None = None
    language: str | None = None
    response_format: Literal["json", "text", "srt", "verbose_json", "vtt", "diarized_json"] = "json"


def vllm_like_app() -> FastAPI:
    app = FastAPI()

    @app.post(TRANSCRIPTIONS_PATH)
    async def create_transcriptions(request: Annotated[VllmTranscriptionForm, Form()]):
        audio = await request.file.read()
        if request.response_format == "diarized_json":  # vLLM 0.33 for a model without supports_diarized_transcription
            return JSONResponse({"error": {"message": "Currently do not support diarized_json"}}, status_code=400)
        return {"handled_by": "vllm", "format": request.response_format, "bytes": len(audio), "model": request.model}

    @app.get("/health")
    async def health():
        return {"ok": True}

    return app


def wav_bytes(seconds: float) -> bytes:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    pcm = (0.3 * np.sin(2 * np.pi * 220 * t) * 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(pcm.tobytes())
    return buffer.getvalue()


def scripted_service(engine: FakeEngine):
    """The plugin's service as `DiarizeService.start` builds it, with a linker that needs no embedder."""

    async def start(engine_client, args):
        decoder = await AsyncVllmDecoder.for_engine(
            engine_client, model_id=served_model_names(args)[0], batch_size=2, sampling_params=SimpleNamespace
        )
        return DiarizeService(Pipeline(decoder, SlotLinker()), served_model_names(args))

    return start


@pytest.fixture()
def engine():
    return FakeEngine(lambda prompt: SCRIPT)


@pytest.fixture()
def served(engine):
    """(client, plugin, app) for a vLLM-like app with the plugin attached and its state initialised."""
    app = vllm_like_app()
    plugin = DiarizedTranscriptionPlugin(service_factory=scripted_service(engine))
    plugin.attach_router(app)
    with TestClient(app) as client:
        client.portal.call(plugin.init_state, engine, app.state, ARGS)
        yield client, plugin, app


def post(client, audio: bytes, **fields):
    return client.post(TRANSCRIPTIONS_PATH, files={"file": ("meeting.wav", audio, "audio/wav")}, data=fields)


def test_plugin_route_comes_first_and_vllms_stays_as_the_fallback():
    app = vllm_like_app()
    plugin = DiarizedTranscriptionPlugin()
    core = next(r for r in app.router.routes if isinstance(r, APIRoute) and r.path == TRANSCRIPTIONS_PATH)
    plugin.attach_router(app)
    matching = [r for r in app.router.routes if isinstance(r, APIRoute) and r.path == TRANSCRIPTIONS_PATH]
    assert [r.endpoint for r in matching] == [plugin.create_transcription, core.endpoint]
    assert plugin.fallback is core
    assert TestClient(app).get("/health").json() == {"ok": True}


def test_diarized_json_is_answered_by_turnscribe_on_the_engine(served, engine):
    client, _, _ = served
    response = post(
        client, wav_bytes(40), model="syvai/cohere-transcribe-diarize", language="de", response_format="diarized_json"
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["task"] == "transcribe" and body["language"] == "de" and body["duration"] == pytest.approx(40.0)
    # Two windows (0-28 s, 26-40 s), each scripted with two speakers; the overlap holds no speech.
    assert [(s["start"], s["end"], s["speaker"], s["text"]) for s in body["segments"]] == [
        (1.0, 3.0, "SPEAKER_00", "Hello there."),
        (5.0, 8.0, "SPEAKER_01", "General Kenobi."),
        (27.0, 29.0, "SPEAKER_00", "Hello there."),
        (31.0, 34.0, "SPEAKER_01", "General Kenobi."),
    ]
    assert body["speakers"] == ["SPEAKER_00", "SPEAKER_01"] and body["usage"] == {"type": "duration", "seconds": 40}
    # The engine got the diarize prompt for the request's language and the card's decoding, one request per window.
    german = build_tokenizer().convert_tokens_to_ids(diarize_prompt_tokens("de"))
    assert [p["prompt_token_ids"] for p, _, _ in engine.requests] == [german, german]
    assert [len(p["multi_modal_data"]["audio"][0]) for p, _, _ in engine.requests] == [
        28 * SAMPLE_RATE,
        14 * SAMPLE_RATE,
    ]
    assert all(not params.skip_special_tokens and params.repetition_penalty == 1.2 for _, params, _ in engine.requests)


def test_other_formats_reach_vllms_handler_with_the_body_unchanged(served, engine):
    client, _, _ = served
    audio = wav_bytes(3)
    response = post(client, audio, model="syvai/cohere-transcribe-diarize", response_format="verbose_json")
    assert response.status_code == 200
    assert response.json() == {
        "handled_by": "vllm",
        "format": "verbose_json",
        "bytes": len(audio),
        "model": "syvai/cohere-transcribe-diarize",
    }
    assert post(client, audio).json()["format"] == "json"  # no response_format: vLLM's default
    assert client.post(TRANSCRIPTIONS_PATH, json={"file": "x"}).status_code == 422  # not a form: vLLM's own error
    assert engine.requests == []


def test_requests_turnscribe_refuses_get_openai_errors(served):
    client, _, _ = served
    unknown = post(client, wav_bytes(2), model="whisper-1", response_format="diarized_json")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
    klingon = post(client, wav_bytes(2), language="tlh", response_format="diarized_json")
    assert klingon.status_code == 400 and klingon.json()["error"]["param"] == "language"
    noise = post(client, b"this is not audio at all", response_format="diarized_json")
    assert noise.status_code == 400 and noise.json()["error"]["code"] == "invalid_audio"
    missing = client.post(TRANSCRIPTIONS_PATH, data={"response_format": "diarized_json"})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "file"


def test_uploads_over_the_limit_get_413_declared_or_chunked(served, engine, monkeypatch):
    client, _, _ = served
    monkeypatch.setenv(MAX_UPLOAD_ENV, str(200_000 / 2**20))  # 200 kB: 3 s of WAV fit, 10 s do not
    assert post(client, wav_bytes(3), response_format="diarized_json").status_code == 200
    declared = post(client, wav_bytes(10), response_format="diarized_json")
    assert declared.status_code == 413 and declared.json()["error"]["code"] == "file_too_large"
    chunks = iter([wav_bytes(10)[i : i + 65536] for i in range(0, len(wav_bytes(10)), 65536)])
    chunked = client.post(TRANSCRIPTIONS_PATH, content=chunks, headers={"content-type": "audio/wav"})
    assert chunked.status_code == 413
    # Over the limit is refused for vLLM's formats too: the body is read before the form is parsed.
    assert post(client, wav_bytes(10), response_format="json").status_code == 413
    assert len(engine.requests) == 1  # the 3 s upload's one window


def test_concurrent_requests_share_the_engine_without_blocking_its_loop(served, engine):
    client, _, _ = served
    audio = wav_bytes(30)
    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda _: post(client, audio, response_format="diarized_json"), range(4)))
    assert [r.status_code for r in responses] == [200] * 4
    assert all(len(r.json()["segments"]) == 4 for r in responses)
    assert len(engine.requests) == 8


def test_without_an_engine_or_a_diarize_model_vllm_answers_as_before(caplog):
    for engine_client, factory in [(None, None), ("engine", PromptTokenError("no <|diarize|> token"))]:

        async def failing(engine_client, args, error=factory):
            raise error

        app = vllm_like_app()
        plugin = DiarizedTranscriptionPlugin(service_factory=failing)
        plugin.attach_router(app)
        with TestClient(app) as client, caplog.at_level(logging.WARNING):
            client.portal.call(plugin.init_state, engine_client, app.state, ARGS)
            assert getattr(app.state, STATE_KEY) is None
            # vLLM's handler refuses diarized_json, as it would without the plugin.
            assert post(client, wav_bytes(2), response_format="diarized_json").status_code == 400
    assert "diarized_json stays off" in caplog.text


def test_served_model_names_follow_vllm_serve_arguments():
    assert served_model_names(Namespace(model="/m", served_model_name=None)) == ["/m"]
    assert served_model_names(Namespace(model="/m", served_model_name=["a", "b"])) == ["a", "b"]
    assert served_model_names(Namespace(model="/m", served_model_name="a")) == ["a"]


def test_the_entry_point_names_a_factory_of_an_endpoint_plugin():
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python >= 3.11")
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    target = pyproject["project"]["entry-points"]["vllm.endpoint_plugins"][ENTRY_POINT]
    module, _, attr = target.partition(":")
    plugin = getattr(importlib.import_module(module), attr)()
    # EndpointPlugin's protocol, as vLLM's docs define it.
    assert plugin.name == ENTRY_POINT and plugin.required_tasks == ("transcription",)
    assert callable(plugin.attach_router) and asyncio.iscoroutinefunction(plugin.init_state)


def test_diarized_json_matches_the_model_cards_response(served):
    client, _, _ = served
    body = post(client, wav_bytes(10), response_format="diarized_json").json()
    assert {"task", "language", "duration", "text", "segments", "speakers", "usage"} <= set(body)
    assert body["text"] == "Hello there. General Kenobi."
    assert json.loads(json.dumps(body)) == body


class GatedEngine(FakeEngine):
    """Holds every request until the test opens the gate; `asked` is set by the first one."""

    def __init__(self) -> None:
        super().__init__(lambda prompt: SCRIPT)
        self.asked, self.gate = asyncio.Event(), asyncio.Event()

    async def generate(self, prompt, sampling_params, request_id):  # noqa: ANN201
        self.asked.set()
        await self.gate.wait()
        async for output in super().generate(prompt, sampling_params, request_id):
            yield output


def upload_scope(app, headers: list[tuple[bytes, bytes]]) -> dict:
    """The ASGI scope of a POST to the transcriptions route, for tests that drive the app message by message."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": TRANSCRIPTIONS_PATH,
        "raw_path": TRANSCRIPTIONS_PATH.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("test", 1),
        "server": ("test", 80),
        "app": app,
    }


def test_a_client_that_disconnects_stops_its_run_after_the_windows_in_flight():
    engine = GatedEngine()
    app = vllm_like_app()
    plugin = DiarizedTranscriptionPlugin(service_factory=scripted_service(engine))
    plugin.attach_router(app)
    upload = httpx.Request(
        "POST",
        f"http://test{TRANSCRIPTIONS_PATH}",
        files={"file": ("meeting.wav", wav_bytes(150), "audio/wav")},
        data={"response_format": "diarized_json"},
    )
    body = upload.read()
    windows = len(plan_windows(150 * SAMPLE_RATE, DEFAULT_WINDOW_S, DEFAULT_OVERLAP_S))
    scope = upload_scope(app, [(k.lower().encode(), v.encode()) for k, v in upload.headers.items()])
    sent: list[dict] = []

    async def main() -> None:
        await plugin.init_state(engine, app.state, ARGS)
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive():
            if messages:
                return messages.pop()
            await engine.asked.wait()  # the run has reached the engine: now the client hangs up
            return {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)

        try:
            await asyncio.wait_for(app(scope, receive, send), 10)
        finally:
            engine.gate.set()  # the windows in flight finish; the run must then stop
        for _ in range(50):
            await asyncio.sleep(0.02)
        assert engine.in_flight == 0

    asyncio.run(main())
    assert sent[0]["status"] == 499
    assert windows >= 6 and len(engine.requests) == 2  # the look-ahead of 2 windows, not all of them


def test_uploads_are_decoded_in_audio_processes():
    # In the server's threads PyAV would hold the GIL, stalling vLLM's event loop; 0 keeps decoding in the thread.
    service = DiarizeService(Pipeline(ScriptedDecoder(lambda span: ""), SlotLinker()), ["m"], audio_processes=2)
    processes = service.pipeline.load.__self__
    assert isinstance(processes, AudioProcesses) and processes.processes == 2
    upload = wav_bytes(2.0)
    np.testing.assert_array_equal(service.pipeline.load(upload, None), load_audio(upload))
    processes.close()
    alone = DiarizeService(Pipeline(ScriptedDecoder(lambda span: ""), SlotLinker()), ["m"], audio_processes=0)
    assert alone.pipeline.load is load_audio
