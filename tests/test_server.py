"""The HTTP server through real clients (the official openai SDK, httpx) against uvicorn on loopback.

Servers run in a thread of the test process with an injected pipeline: the tiny cohere_asr model forced to
scripted output, or a ScriptedDecoder whose windows can be held back to observe streaming, batching,
cancelling, queueing and timeouts. Every network call has a timeout, so a hung server fails a test instead of
hanging it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import torch
import typer
import uvicorn
from test_audio_hostile import mp3_claiming_frames
from test_pipeline import FakeEmbedder, tone, write_wav
from test_server_scripted import script
from tiny_model import ScriptedLogits, build_tokenizer
from typer.testing import CliRunner

from turnscribe import Pipeline
from turnscribe.decoders import ScriptedDecoder
from turnscribe.decoders.base import WindowAudio
from turnscribe.decoders.transformers import TransformersDecoder
from turnscribe.pipeline import RunStopped
from turnscribe.server import ServerSettings, create_app
from turnscribe.server.cli import serve
from turnscribe.server.disconnect import discard_body
from turnscribe.server.engine import as_api_error
from turnscribe.speakers import ClusteringLinker
from turnscribe.types import SAMPLE_RATE, TurnscribeError
from turnscribe.windows import DEFAULT_OVERLAP_S, DEFAULT_WINDOW_S, plan_windows

KEY = "test-key"
TIMEOUT = 30.0
ERROR_KEYS = {"message", "type", "param", "code"}


def linker() -> ClusteringLinker:
    return ClusteringLinker(FakeEmbedder())


def library_result(path: Path) -> list[tuple[float, float, str, str]]:
    transcript = Pipeline(ScriptedDecoder(script), linker()).run(path)
    return [(s.start, s.end, s.text, s.speaker) for s in transcript.segments]


class HeldDecoder(ScriptedDecoder):
    """Records each batch's window indexes; waits `delay`, and holds windows >= `hold_from` until `gate` opens."""

    def __init__(self) -> None:
        super().__init__(script, batch_size=4)
        self.batches: list[list[int]] = []
        self.delay = 0.0
        self.hold_from: int | None = None
        self.gate = threading.Event()

    def reset(self) -> None:
        self.batches.clear()
        self.delay, self.hold_from, self.batch_size = 0.0, None, 4
        self.gate.clear()

    def decode(self, windows: Sequence[WindowAudio], language: str) -> list[str]:
        self.batches.append([w.span.index for w in windows])
        time.sleep(self.delay)
        if self.hold_from is not None and max(w.span.index for w in windows) >= self.hold_from:
            self.gate.wait(TIMEOUT)
        return super().decode(windows, language)


@contextmanager
def running(settings: ServerSettings, factory: Callable[[], Pipeline]) -> Iterator[str]:
    """A uvicorn server on a free loopback port, in a thread; yields its base URL once /ready answers."""
    app = create_app(settings, factory)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        wait_until(lambda: _ready(url), what="server ready")
        yield url
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/ready", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def wait_until(condition: Callable[[], object], *, what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def settings_for(tmp: Path, **overrides: object) -> ServerSettings:
    return replace(ServerSettings(data_dir=tmp, api_keys=(KEY, "second-key")), **overrides)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def audio(tmp_path_factory) -> Callable[[float], Path]:
    folder = tmp_path_factory.mktemp("audio")

    def make(seconds: float) -> Path:
        path = folder / f"tone-{seconds:g}.wav"
        if not path.exists():
            write_wav(path, tone(seconds))
        return path

    return make


@pytest.fixture(scope="module")
def tiny_server(tiny_native, tmp_path_factory) -> Iterator[str]:
    tokenizer = build_tokenizer()

    def force(windows: Sequence[WindowAudio]) -> list[ScriptedLogits]:
        ids = [tokenizer(script(w.span), add_special_tokens=False).input_ids for w in windows]
        return [ScriptedLogits(ids, 9, tokenizer.eos_token_id)]

    def factory() -> Pipeline:
        decoder = TransformersDecoder(tiny_native, device="cpu", batch_size=4, logits_processor_factory=force)
        return Pipeline(decoder, linker())

    with running(settings_for(tmp_path_factory.mktemp("tiny-server")), factory) as url:
        yield url


@pytest.fixture(scope="module")
def held() -> HeldDecoder:
    return HeldDecoder()


@pytest.fixture(scope="module")
def scripted_server(held, tmp_path_factory) -> Iterator[tuple[str, Path]]:
    data = tmp_path_factory.mktemp("scripted-server")
    settings = settings_for(
        data, max_upload_bytes=4 << 20, max_audio_seconds=100, retention_s=0.0, janitor_interval_s=0.05
    )
    with running(settings, lambda: Pipeline(held, linker())) as url:
        yield url, data


@pytest.fixture
def scripted(scripted_server, held) -> Iterator[str]:
    held.reset()
    yield scripted_server[0]
    held.gate.set()  # never leave a window held for the next test


def sdk(url: str, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=TIMEOUT)


def post(
    url: str,
    path: Path | None,
    *,
    key: str = KEY,
    filename: str | None = None,
    content: bytes | None = None,
    endpoint: str = "/v1/audio/transcriptions",
    **fields: object,
) -> httpx.Response:
    data: dict[str, object] = {"model": "gpt-4o-transcribe-diarize", **fields}
    files = {}
    if path is not None or content is not None:
        body = content if content is not None else path.read_bytes()  # type: ignore[union-attr]
        files["file"] = (filename or (path.name if path else "audio.wav"), body)
    return httpx.post(
        f"{url}{endpoint}", data=data, files=files, headers={"Authorization": f"Bearer {key}"}, timeout=TIMEOUT
    )


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == ERROR_KEYS, body
    assert "Traceback" not in response.text
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]


def data_url(path: Path) -> str:
    return "data:audio/wav;base64," + base64.b64encode(path.read_bytes()).decode()


# --- the official SDK against the tiny model ---------------------------------------------------------------


def test_sdk_diarized_json_matches_the_library(tiny_server, audio):
    path = audio(70)
    with path.open("rb") as f:
        result = sdk(tiny_server).audio.transcriptions.create(
            model="gpt-4o-transcribe-diarize",
            file=f,
            response_format="diarized_json",
            language="en",
            chunking_strategy="auto",
        )
    assert [(s.start, s.end, s.text, s.speaker) for s in result.segments] == library_result(path)
    assert [s.type for s in result.segments] == ["transcript.text.segment"] * 6
    assert result.duration == pytest.approx(70.0) and result.task == "transcribe"
    assert result.text.startswith("window 0 one window 0 two window 1 one")
    assert result.usage.type == "duration" and result.usage.seconds == 70


def test_sdk_every_response_format(tiny_server, audio):
    client = sdk(tiny_server)
    path = audio(20)

    def create(fmt: str, **extra: object) -> object:
        with path.open("rb") as f:
            return client.audio.transcriptions.create(
                model="gpt-4o-transcribe-diarize", file=f, response_format=fmt, **extra
            )

    assert create("json").text == "window 0 one window 0 two"
    assert create("text").strip() == "window 0 one window 0 two"
    assert "SPEAKER_00: window 0 one" in create("srt")
    assert create("vtt").startswith("WEBVTT") and "<v SPEAKER_01>window 0 two" in create("vtt")
    verbose = create("verbose_json", timestamp_granularities=["segment"])
    assert verbose.language == "english" and [s.text for s in verbose.segments] == ["window 0 one", "window 0 two"]
    rttm = post(tiny_server, path, response_format="rttm")
    assert rttm.status_code == 200 and len(rttm.text.strip().splitlines()) == 2
    assert rttm.text.startswith("SPEAKER tone-20 1 1.000 2.000")
    seglst = post(tiny_server, path, response_format="seglst")
    assert [s["words"] for s in seglst.json()] == ["window 0 one", "window 0 two"]


def test_sdk_streams_segments_then_done(tiny_server, audio):
    path = audio(70)
    expected = library_result(path)
    with path.open("rb") as f:
        stream = sdk(tiny_server).audio.transcriptions.create(
            model="gpt-4o-transcribe-diarize", file=f, response_format="diarized_json", stream=True
        )
        events = list(stream)
    assert [e.type for e in events] == ["transcript.text.segment"] * 6 + ["transcript.text.done"]
    assert [(e.start, e.end, e.text) for e in events[:-1]] == [s[:3] for s in expected]
    done = events[-1]
    assert done.text == " ".join(s[2] for s in expected)
    # The final, file-wide speaker labels come with the done event.
    assert [(s["text"], s["speaker"]) for s in done.segments] == [(s[2], s[3]) for s in expected]

    with path.open("rb") as f:
        deltas = list(
            sdk(tiny_server).audio.transcriptions.create(
                model="gpt-4o-transcribe-diarize", file=f, response_format="json", stream=True
            )
        )
    assert "".join(e.delta for e in deltas[:-1]) == deltas[-1].text == done.text
    # Each delta names its segment, as OpenAI's diarizing model does; the done event has no (token) usage.
    assert [e.segment_id for e in deltas[:-1]] == [f"seg_{i}" for i in range(6)]
    assert deltas[-1].usage is None


def test_models_health_ready_metrics(tiny_server, audio):
    assert [m.id for m in sdk(tiny_server).models.list()][-1] == "gpt-4o-transcribe-diarize"
    assert sdk(tiny_server).models.retrieve("gpt-4o-transcribe-diarize").owned_by == "turnscribe"
    assert httpx.get(f"{tiny_server}/health", timeout=TIMEOUT).json() == {"status": "ok"}
    assert httpx.get(f"{tiny_server}/ready", timeout=TIMEOUT).json()["status"] == "ready"
    post(tiny_server, audio(20), response_format="text").raise_for_status()
    metrics = httpx.get(f"{tiny_server}/metrics", timeout=TIMEOUT).text
    for name in (
        "turnscribe_http_requests_total",
        "turnscribe_queue_depth",
        "turnscribe_audio_seconds_total",
        "turnscribe_real_time_factor_bucket",
        "turnscribe_decoder_batch_windows_bucket",
    ):
        assert name in metrics
    assert 'route="/v1/audio/transcriptions",status="200"' in metrics


def test_api_keys(tiny_server, audio):
    with pytest.raises(openai.AuthenticationError):
        sdk(tiny_server, key="wrong").models.list()
    assert_error(httpx.get(f"{tiny_server}/v1/models", timeout=TIMEOUT), 401, "invalid_api_key")
    assert sdk(tiny_server, key="second-key").models.list().data
    assert_error(post(tiny_server, audio(3), key="wrong"), 401, "invalid_api_key")


# --- bad input ---------------------------------------------------------------------------------------------


def test_bad_input_gets_the_documented_4xx_and_the_server_keeps_serving(scripted, audio, scripted_server, tmp_path):
    url, data = scripted_server
    wav = audio(20).read_bytes()
    # 120 s whose header claims 10 frames: the duration probe passes it, the decode stops at the server's limit.
    understated = mp3_claiming_frames(tmp_path / "claim.mp3", 120, 10).read_bytes()
    rng = np.random.default_rng(0)
    big_reference = "data:audio/wav;base64," + base64.b64encode(rng.bytes(800_000)).decode()  # over 1 MB
    cases = [
        (dict(content=rng.bytes(5000), filename="noise.wav"), 400, "invalid_audio"),
        (dict(content=b"just some notes\n", filename="notes.txt"), 400, "invalid_audio"),
        (dict(content=b"", filename="empty.wav"), 400, "invalid_audio"),
        (dict(content=wav[:44] + b"\x00" * 10, filename="cut.wav"), 400, "invalid_audio"),
        (dict(content=wav, language="xx"), 400, "unsupported_language"),
        (dict(content=wav, response_format="xml"), 400, "invalid_value"),
        (dict(content=wav, temperature="5"), 400, "invalid_value"),
        (dict(content=wav, temperature="warm"), 400, "invalid_value"),
        (dict(content=wav, **{"timestamp_granularities[]": "word"}), 400, "invalid_value"),
        (dict(content=wav, chunking_strategy="sometimes"), 400, None),
        (dict(content=wav, **{"chunking_strategy[type]": "client_vad"}), 400, "invalid_value"),
        (dict(content=wav, model="whisper-9"), 404, "model_not_found"),
        # This server runs the card's baseline linker, which has no enrollment: said so, not silently ignored.
        (dict(content=wav, **{"known_speaker_names[]": "agent"}), 400, "known_speakers_unsupported"),
        (dict(content=wav, **{"known_speaker_names[]": "a", "known_speaker_references[]": "hello"}), 400, None),
        (
            dict(content=wav, **{"known_speaker_names[]": "a", "known_speaker_references[]": big_reference}),
            400,
            "invalid_value",
        ),
        (dict(content=wav, stream="true", response_format="srt"), 400, None),
        (dict(content=audio(120).read_bytes()), 413, "audio_too_long"),
        (dict(content=understated, filename="claim.mp3"), 413, "audio_too_long"),
        (dict(content=b"\x00" * (4 << 20) + b"\x00" * 100_000), 413, "file_too_large"),  # over the file limit
        (dict(content=b"\x00" * (6 << 20)), 413, "file_too_large"),  # refused from Content-Length alone
        (dict(), 400, "invalid_value"),  # no file
    ]
    for fields, status, code in cases:
        content = fields.pop("content", None)
        filename = fields.pop("filename", "a.wav")
        error = assert_error(post(url, None, content=content, filename=filename, **fields), status, code)
        assert error["message"] and str(data) not in error["message"]  # no server paths leak
    # The limit stated is the configured file limit, not the body limit (the file plus the form's other fields).
    too_large = post(url, None, content=b"\x00" * (6 << 20), filename="a.wav").json()["error"]["message"]
    as_text = httpx.post(  # curl -F file=meeting.mp3, the @ forgotten
        f"{url}/v1/audio/transcriptions",
        data={"model": "gpt-4o-transcribe-diarize", "file": "meeting.mp3"},
        files={"unused": ("x", b"")},  # keeps the body multipart
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=TIMEOUT,
    )
    assert "as a file part of the form" in assert_error(as_text, 400, "invalid_value")["message"]
    big = post(url, None, content=wav, **{"known_speaker_names[]": "a", "known_speaker_references[]": big_reference})
    assert "known_speaker_references[] as 2-10 s of compressed" in big.json()["error"]["message"]
    assert f"limit of {4 << 20} bytes" in too_large
    assert post(url, audio(20), response_format="text").text.strip() == "window 0 one window 0 two"
    assert not any((data / "uploads" / "requests").iterdir())  # nothing left behind


def raw_post(url: str, body: Iterator[bytes] | None, *, length: int | None = None, key: str = KEY) -> tuple[int, dict]:
    """A POST from a bare socket that sends the whole body before reading the answer, as httpx and requests do;
    with `length` and no body, it waits for "100 Continue" as curl does for a large upload."""
    host, port = url.removeprefix("http://").split(":")
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    head = (
        f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: multipart/form-data; boundary=x\r\n{framing}\r\n"
    )
    with socket.create_connection((host, int(port)), timeout=TIMEOUT) as conn:
        conn.sendall((head + ("Expect: 100-continue\r\n" if body is None else "") + "\r\n").encode())
        for part in body or ():
            conn.sendall(part if length is not None else b"%x\r\n%b\r\n" % (len(part), part))
        if body is not None and length is None:
            conn.sendall(b"0\r\n\r\n")
        answer = conn.makefile("rb")
        status = int(answer.readline().split()[1])
        headers = dict(line.decode().lower().split(": ", 1) for line in iter(answer.readline, b"\r\n"))
        return status, json.loads(answer.read(int(headers["content-length"])))


def test_an_early_refusal_reaches_a_client_still_sending_its_body(scripted):
    # 401 and 413 are answered before the body is read. Closing the connection with upload bytes unread makes the
    # kernel reset it, and the answer was lost with it: the client saw "connection reset" (or an empty body).
    part = b'--x\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
    body = [part] + [b"\0" * (1 << 20)] * 32
    for key, status in ((KEY, 413), ("wrong-key", 401)):
        assert raw_post(scripted, iter(body), length=sum(map(len, body)), key=key)[0] == status
    status, error = raw_post(scripted, iter(body))  # chunked: refused once it passes the limit
    assert (status, error["error"]["code"]) == (413, "file_too_large")
    # One that waits for "100 Continue" is answered at once and never sends its gigabyte.
    status, error = raw_post(scripted, None, length=1 << 30)
    assert (status, error["error"]["code"]) == (413, "file_too_large")


def test_reading_through_a_refused_upload_stops_at_its_bounds():
    messages = 0

    async def endless() -> dict:  # a client that would send for ever
        nonlocal messages
        messages += 1
        return {"type": "http.request", "body": b"\0" * 1000, "more_body": True}

    async def stalled() -> dict:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    asyncio.run(discard_body(endless, limit_bytes=10_000))
    assert messages == 11  # 11,000 bytes read: past the bound, then answered
    started = time.monotonic()
    asyncio.run(discard_body(stalled, timeout_s=0.05))
    assert time.monotonic() - started < 5


def test_unknown_routes_and_methods_are_openai_errors(scripted):
    assert_error(httpx.get(f"{scripted}/v1/nothing", headers={"Authorization": f"Bearer {KEY}"}, timeout=TIMEOUT), 404)
    not_allowed = httpx.get(
        f"{scripted}/v1/audio/transcriptions", headers={"Authorization": f"Bearer {KEY}"}, timeout=TIMEOUT
    )
    assert_error(not_allowed, 405)
    assert not_allowed.headers["Allow"] == "POST"
    # HEAD is GET without the body (uptime checks, curl -I); on a POST-only route it is refused as GET is.
    for path, key, status in (("/health", None, 200), ("/v1/models", KEY, 200), ("/v1/models", None, 401)):
        head = httpx.head(f"{scripted}{path}", headers={"Authorization": f"Bearer {key}"} if key else {})
        assert (head.status_code, head.content) == (status, b"") and int(head.headers["content-length"]) > 0
    # Counted under the route they matched, as GET is (they were all route="unmatched").
    assert 'method="HEAD",route="/health",status="200"' in httpx.get(f"{scripted}/metrics").text
    head = httpx.head(f"{scripted}/v1/audio/transcriptions", headers={"Authorization": f"Bearer {KEY}"})
    assert (head.status_code, head.headers["Allow"]) == (405, "POST")
    # A 405 lists every method the route answers (RFC 9110): HEAD as well where GET is.
    assert httpx.post(f"{scripted}/health").headers["Allow"] == "GET, HEAD"
    # Without the key every /v1 path is a 401, found or not: the key is checked before anything else.
    assert_error(httpx.get(f"{scripted}/v1/nothing", timeout=TIMEOUT), 401, "invalid_api_key")


# --- streaming, batching, queueing, timeouts ---------------------------------------------------------------


def test_first_segment_arrives_before_later_windows_are_decoded(scripted, held, audio):
    held.hold_from = 1  # window 1 waits until the client has seen window 0's words
    held.batch_size = 1  # one window per pipeline step, so window 0 finishes on its own
    files = {"file": ("tone.wav", audio(70).read_bytes())}
    data = {"model": "gpt-4o-transcribe-diarize", "response_format": "diarized_json", "stream": "true"}
    events = []
    with httpx.stream(
        "POST",
        f"{scripted}/v1/audio/transcriptions",
        data=data,
        files=files,
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=TIMEOUT,
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        # Not cached, and not held back by a buffering proxy: each event must reach the client as it is sent.
        assert (response.headers["cache-control"], response.headers["x-accel-buffering"]) == ("no-cache", "no")
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
                if len(events) == 1:
                    assert not held.gate.is_set() and events[0]["text"] == "window 0 one"
                    held.gate.set()
    assert [e["type"] for e in events] == ["transcript.text.segment"] * 6 + ["transcript.text.done"]


def test_windows_of_concurrent_requests_share_batches(scripted, held, audio):
    held.delay = 0.2  # while one batch decodes, the other requests' windows queue up behind it
    path = audio(20)
    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(lambda _: post(scripted, path, response_format="text"), range(6)))
    assert all(r.status_code == 200 and r.text.strip() == "window 0 one window 0 two" for r in responses)
    assert max(len(b) for b in held.batches) > 1 and len(held.batches) < 6


def test_full_queue_is_429_and_a_slow_request_504(held, audio, tmp_path):
    settings = settings_for(tmp_path, workers=1, max_queue=0, request_timeout_s=1.0, retry_after_s=7)
    held.reset()
    held.hold_from = 0
    with running(settings, lambda: Pipeline(held, linker())) as url, ThreadPoolExecutor(1) as pool:
        slow = pool.submit(post, url, audio(3))
        wait_until(lambda: held.batches, what="the first request to reach the decoder")
        busy = post(url, audio(3))
        assert_error(busy, 429, "queue_full")
        assert busy.headers["Retry-After"] == "7"
        timed_out = slow.result(TIMEOUT)
        assert_error(timed_out, 504, "timeout")
        assert timed_out.headers["x-should-retry"] == "false"  # the SDKs would otherwise send it again
        held.gate.set()
        wait_until(lambda: post(url, audio(3)).status_code == 200, what="the server to serve again")


def test_cli_refuses_to_bind_beyond_loopback_without_a_key(monkeypatch):
    monkeypatch.delenv("TURNSCRIBE_API_KEYS", raising=False)
    app = typer.Typer()
    app.command()(serve)
    result = CliRunner().invoke(app, ["--host", "0.0.0.0"])
    assert result.exit_code == 2 and "no API key configured" in result.output


def test_cli_hands_the_model_options_to_the_pipeline_it_serves(monkeypatch, tmp_path):
    served = {}
    monkeypatch.setattr("turnscribe.server.app.create_app", lambda settings, factory: factory)
    monkeypatch.setattr("uvicorn.run", lambda app, **options: served.update(factory=app, **options))
    app = typer.Typer()
    app.command()(serve)
    with socket.socket() as free:  # the CLI checks that it can listen there (a port under 1024 needs root)
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    arguments = ["--port", str(port), "--device", "cpu", "--fast", "--dtype", "bfloat16", "--data-dir", str(tmp_path)]
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output
    assert served["port"] == port
    options = served["factory"].keywords
    assert (options["device"], options["fast"], options["batch_size"]) == ("cpu", True, None)  # 0: sized by memory
    assert options["dtype"] == "bfloat16"
    arguments = ["--port", str(port), "--dtype", "fp16", "--data-dir", str(tmp_path)]
    refused = CliRunner().invoke(app, arguments, env={"COLUMNS": "200"})  # rich wraps at the terminal's width
    assert refused.exit_code == 2 and "unknown dtype 'fp16'; choose from auto, bfloat16, float16" in refused.output
    # A device that is no device, or a GPU this machine lacks: refused at start, not on /ready once the server runs.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    # The vLLM backend places the model on its GPUs itself: several devices are refused at start too.
    for device, reason, backend in (
        ("gpu", "'gpu' is not a device name", "transformers"),
        ("cuda:1", "PyTorch sees no CUDA GPU", "transformers"),
        ("cpu,cpu", "vLLM places the model on its GPUs itself", "vllm"),
    ):
        arguments = ["--port", str(port), "--device", device, "--backend", backend, "--data-dir", str(tmp_path)]
        refused = CliRunner().invoke(app, arguments, env={"COLUMNS": "200"})
        assert refused.exit_code == 2 and reason in refused.output, refused.output


# --- jobs --------------------------------------------------------------------------------------------------


def job(url: str, job_id: str) -> dict:
    response = httpx.get(f"{url}/v1/audio/jobs/{job_id}", headers={"Authorization": f"Bearer {KEY}"}, timeout=TIMEOUT)
    response.raise_for_status()
    return response.json()


def job_call(method: str, url: str, path: str, **params: object) -> httpx.Response:
    return httpx.request(
        method,
        f"{url}/v1/audio/jobs{path}",
        params=params,  # type: ignore[arg-type]
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=TIMEOUT,
    )


def test_job_lifecycle(scripted_server, scripted, audio):
    url, data = scripted_server
    path = audio(70)
    created = post(url, path, endpoint="/v1/audio/jobs", response_format="srt")
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    assert created.json()["status"] in ("queued", "running") and created.json()["duration"] == pytest.approx(70)
    wait_until(lambda: job(url, job_id)["status"] == "succeeded", what="the job to finish")
    status = job(url, job_id)
    assert status["progress"] == {"windows_done": 3, "windows_total": 3} and status["attempts"] == 1

    srt = job_call("GET", url, f"/{job_id}/result")
    assert srt.status_code == 200 and "SPEAKER_00: window 0 one" in srt.text
    diarized = job_call("GET", url, f"/{job_id}/result", response_format="diarized_json").json()
    assert [(s["start"], s["end"], s["text"], s["speaker"]) for s in diarized["segments"]] == library_result(path)
    assert job_id in [j["id"] for j in job_call("GET", url, "", status="succeeded").json()["data"]]
    # Retention is 0 s here: the janitor removes the audio right after the job ends.
    wait_until(lambda: not any((data / "uploads").glob(f"{job_id}*")), what="the audio to be removed")

    assert job_call("DELETE", url, f"/{job_id}").json() == {
        "id": job_id,
        "object": "transcription.job.deleted",
        "deleted": True,
    }
    assert_error(job_call("GET", url, f"/{job_id}"), 404, "job_not_found")
    assert_error(job_call("GET", url, f"/{job_id}/result"), 404, "job_not_found")


def two_voices(path: Path, seconds: float) -> Path:
    """A recording that FakeEmbedder hears as two people: `script`'s first speaker of each window over a positive
    signal, its second over a negative one."""
    samples = np.full(int(seconds * SAMPLE_RATE), 0.01, dtype=np.float32)
    for span in plan_windows(len(samples), DEFAULT_WINDOW_S, DEFAULT_OVERLAP_S):
        for start, end, level in ((1, 3, 0.3), (5, 8, -0.3)):
            samples[span.start_sample + start * SAMPLE_RATE : span.start_sample + end * SAMPLE_RATE] = level
    write_wav(path, samples)
    return path


def test_a_request_may_say_how_many_speakers_it_holds(scripted_server, scripted, tmp_path):
    # pyannote's num/min/max_speakers as form fields, on both endpoints: they replace the server's for the request.
    url, _ = scripted_server
    path = two_voices(tmp_path / "call.wav", 70)  # three windows, whose speakers the embedder links

    def speakers(**fields: object) -> set[str]:
        response = post(url, path, response_format="diarized_json", **fields)
        assert response.status_code == 200, response.text
        return {s["speaker"] for s in response.json()["segments"]}

    assert len(speakers()) == 2
    assert len(speakers(num_speakers=1)) == 1 and len(speakers(min_speakers=1, max_speakers=1)) == 1
    created = post(url, path, endpoint="/v1/audio/jobs", response_format="diarized_json", num_speakers=1)
    assert created.status_code == 202 and created.json()["num_speakers"] == 1, created.text
    assert created.json()["min_speakers"] is None
    job_id = created.json()["id"]
    wait_until(lambda: job(url, job_id)["status"] == "succeeded", what="the job to finish")
    segments = job_call("GET", url, f"/{job_id}/result").json()["segments"]
    assert len({s["speaker"] for s in segments}) == 1
    for fields, message in (
        ({"num_speakers": 0}, "greater than or equal to 1"),
        ({"num_speakers": "two"}, "num_speakers"),
        ({"min_speakers": 3, "max_speakers": 2}, "min_speakers (3) is greater than max_speakers (2)"),
    ):
        for endpoint in ("/v1/audio/transcriptions", "/v1/audio/jobs"):
            error = assert_error(post(url, path, endpoint=endpoint, **fields), 400)
            assert message in error["message"], error


def test_cancel_a_running_job(scripted_server, scripted, held, audio):
    url, data = scripted_server
    held.hold_from = 0
    job_id = post(url, audio(70), endpoint="/v1/audio/jobs").json()["id"]
    wait_until(lambda: job(url, job_id)["status"] == "running", what="the job to start")
    assert job_call("POST", url, f"/{job_id}/cancel").json()["status"] == "cancelled"
    held.gate.set()
    time.sleep(0.2)  # the worker notices at its next window; the job must stay cancelled
    assert job(url, job_id)["status"] == "cancelled"
    assert_error(job_call("GET", url, f"/{job_id}/result"), 409, "job_not_succeeded")


def test_a_failed_job_reports_why(scripted_server, scripted, audio):
    url, _ = scripted_server
    # A header that promises audio the file does not have: accepted at upload, fails when decoded.
    created = post(url, None, content=audio(3).read_bytes()[:44], filename="cut.wav", endpoint="/v1/audio/jobs")
    if created.status_code == 400:  # the probe already saw through it: also a documented answer
        assert_error(created, 400, "invalid_audio")
        return
    job_id = created.json()["id"]
    wait_until(lambda: job(url, job_id)["status"] == "failed", what="the job to fail")
    assert job(url, job_id)["error"]["code"] == "invalid_audio"


def test_short_silence_gives_an_empty_transcript(scripted, tmp_path):
    path = tmp_path / "silence.wav"
    write_wav(path, np.zeros(5 * SAMPLE_RATE, np.float32))
    result = post(scripted, path, response_format="diarized_json").json()
    assert result["segments"] == [] and result["duration"] == pytest.approx(5.0)


def test_a_failed_run_tells_the_sdks_not_to_retry_and_a_stopped_one_may_be_retried():
    failed = as_api_error(TurnscribeError("window 3 failed to decode"))
    assert (failed.status_code, failed.headers) == (500, {"x-should-retry": "false"})
    stopped = as_api_error(RunStopped("shutdown"))
    assert stopped.status_code == 503 and "x-should-retry" not in (stopped.headers or {})
