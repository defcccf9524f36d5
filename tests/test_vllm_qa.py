"""The vLLM decoder's edges found in QA: the checkpoint check's messages, and a failing window's siblings."""

import asyncio
import base64
import shutil

import numpy as np
import pytest
from fastapi.testclient import TestClient
from test_pipeline import FakeEmbedder, write_wav
from test_server import two_voices
from test_server_scripted import SlotLinker
from test_vllm_decoder import by_level, window
from test_vllm_plugin import ARGS, SCRIPT, GatedEngine, post, upload_scope, vllm_like_app, wav_bytes
from vllm_fakes import FakeEngine, audio_of

from turnscribe import Pipeline
from turnscribe.checkpoint import CheckpointError, fix_for_vllm
from turnscribe.decoders.base import StreamingDecoder
from turnscribe.decoders.vllm import AsyncVllmDecoder, servable_checkpoint
from turnscribe.pipeline import RunControl, RunStopped
from turnscribe.speakers import ClusteringLinker
from turnscribe.speakers import SlotLinker as RealSlotLinker
from turnscribe.types import SAMPLE_RATE
from turnscribe.vllm_plugin import (
    MAX_UPLOAD_ENV,
    DiarizedTranscriptionPlugin,
    DiarizeRequest,
    DiarizeService,
    served_model_names,
)


def test_unreadable_weights_are_refused_for_what_they_are_not_for_the_layout(tiny_original, tmp_path):
    path = tmp_path / "ckpt"
    shutil.copytree(tiny_original, path)
    fix_for_vllm(path)
    weights = next(path.glob("*.safetensors"))
    weights.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 1\n")  # a clone without LFS
    with pytest.raises(CheckpointError) as refused:
        servable_checkpoint(path)
    assert "not readable as safetensors" in str(refused.value) and "git lfs pull" in str(refused.value)
    assert "original-layout" not in str(refused.value)  # the layout is fine: saying otherwise misleads


def test_a_native_checkpoint_is_refused_naming_the_layout_vllm_needs(tiny_native):
    with pytest.raises(CheckpointError, match=f"original-layout checkpoints only: {tiny_native} is in the native"):
        servable_checkpoint(tiny_native)


def test_a_failing_window_cancels_its_batchs_other_engine_requests():
    """vLLM aborts a request whose generator is cancelled; left running, the siblings would decode for nobody
    while the pipeline retries each window alone."""

    def answer(prompt) -> str:
        if audio_of(prompt)[0] > 0.035:  # the fourth window
            raise RuntimeError("the engine refused this window")
        return by_level(prompt)

    engine = FakeEngine(answer, steps=1000)

    async def main() -> int:
        decoder = await AsyncVllmDecoder.for_engine(engine, model_id="m", sampling_params=dict)
        with pytest.raises(RuntimeError, match="refused"):
            await decoder.generate([window(i, 5.0, 0.01 * (i + 1)) for i in range(4)], "en")
        for _ in range(3):  # let the cancellations land
            await asyncio.sleep(0)
        return engine.in_flight

    assert asyncio.run(main()) == 0
    assert len(engine.requests) == 4


class HoldingEngine(FakeEngine):
    """The first request answers once `gate` opens; the others take 2 s unless vLLM aborts them (cancelled)."""

    def __init__(self) -> None:
        super().__init__(by_level)
        self.gate, self.asked, self.aborted = asyncio.Event(), 0, 0

    async def generate(self, prompt, sampling_params, request_id):  # noqa: ANN201
        self.asked += 1
        try:
            if self.asked == 1:
                await self.gate.wait()
            else:
                await asyncio.sleep(2.0)
        except asyncio.CancelledError:
            self.aborted += 1
            raise
        async for output in super().generate(prompt, sampling_params, request_id):
            yield output


def test_a_stopped_run_aborts_its_windows_in_flight_on_the_engine():
    """The plugin stops a run whose client left: the windows still on the engine are aborted, not finished."""
    engine = HoldingEngine()
    control = RunControl()

    async def main() -> None:
        decoder = await AsyncVllmDecoder.for_engine(engine, model_id="m", batch_size=2, sampling_params=dict)
        assert isinstance(decoder, StreamingDecoder)
        pipeline = Pipeline(decoder, SlotLinker())
        audio = np.full(60 * SAMPLE_RATE, 0.05, np.float32)  # three windows
        run = asyncio.ensure_future(
            asyncio.to_thread(pipeline.run, audio, sampling_rate=SAMPLE_RATE, progress=lambda _: control.check())
        )
        for _ in range(100):  # until both windows of the look-ahead are on the engine
            if engine.asked == 2:
                break
            await asyncio.sleep(0.01)
        control.stop("cancelled")
        engine.gate.set()
        with pytest.raises(RunStopped):
            await asyncio.wait_for(run, 1.5)
        await asyncio.sleep(0.05)

    asyncio.run(main())
    assert engine.aborted == 1 and engine.in_flight == 0


def test_a_failing_window_is_lost_alone_and_sent_once():
    def answer(prompt) -> str:
        if audio_of(prompt)[-1] > 0.15:  # the last window, where the audio gets louder
            raise RuntimeError("the engine refused this window")
        return by_level(prompt)

    engine = FakeEngine(answer)
    audio = np.full(60 * SAMPLE_RATE, 0.05, np.float32)
    audio[56 * SAMPLE_RATE :] = 0.2

    async def main():
        decoder = await AsyncVllmDecoder.for_engine(engine, model_id="m", batch_size=4, sampling_params=dict)
        return await asyncio.to_thread(Pipeline(decoder, SlotLinker()).run, audio, sampling_rate=SAMPLE_RATE)

    transcript = asyncio.run(main())
    assert [r.window for r in transcript.metadata.repairs if r.kind == "window_failed"] == [2]
    assert [s.text for s in transcript.segments] == ["level 5", "level 5"]
    assert len(engine.requests) == 3  # no window sent twice


class OutOfMemoryLinker:
    """The speaker embedder shares the GPU with vLLM (the card's 0.55): it may run out of memory."""

    def assign(self, segments, audio):  # noqa: ANN201
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_a_run_that_fails_outside_the_decoder_is_answered_in_openais_shape():
    engine = FakeEngine(lambda prompt: SCRIPT)

    async def start(engine_client, args):
        decoder = await AsyncVllmDecoder.for_engine(engine_client, model_id="m", sampling_params=dict)
        return DiarizeService(Pipeline(decoder, OutOfMemoryLinker()), served_model_names(args))

    app = vllm_like_app()
    plugin = DiarizedTranscriptionPlugin(service_factory=start)
    plugin.attach_router(app)
    with TestClient(app) as client:
        client.portal.call(plugin.init_state, engine, app.state, ARGS)
        response = post(client, wav_bytes(5), response_format="diarized_json")
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["type"] == "server_error" and error["code"] == "transcription_failed"
    assert "CUDA out of memory" in error["message"]


@pytest.mark.parametrize("limit", ["1GB", "0", "-5", "nan", "inf"])
def test_a_bad_upload_limit_stops_the_server_at_start_naming_the_variable(monkeypatch, limit):
    monkeypatch.setenv(MAX_UPLOAD_ENV, limit)
    refusal = rf"\$TURNSCRIBE_MAX_UPLOAD_MB must be a number of megabytes above 0, not '{limit}'"
    with pytest.raises(ValueError, match=refusal):
        DiarizedTranscriptionPlugin().attach_router(vllm_like_app())


def test_a_client_gone_mid_upload_gets_499_not_a_server_error():
    app = vllm_like_app()
    DiarizedTranscriptionPlugin().attach_router(app)
    scope = upload_scope(
        app, [(b"content-type", b"multipart/form-data; boundary=x"), (b"transfer-encoding", b"chunked")]
    )
    messages = [{"type": "http.disconnect"}, {"type": "http.request", "body": b"--x\r\n", "more_body": True}]
    sent: list[dict] = []

    async def receive():
        return messages.pop()

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))  # raised ClientDisconnect out of the app: vLLM logged a traceback
    assert sent[0]["status"] == 499


@pytest.mark.parametrize("framing", ["declared", "chunked", "waits-for-continue"])
def test_an_upload_over_the_limit_is_read_through_after_its_413(monkeypatch, framing):
    # Closed with upload bytes unread, the connection is reset under a client still sending (httpx sends the whole
    # body before reading) and the 413 was lost. A client waiting for "100 Continue" sends nothing: nothing to read.
    monkeypatch.setenv(MAX_UPLOAD_ENV, "1")
    app = vllm_like_app()
    DiarizedTranscriptionPlugin().attach_router(app)
    headers = [(b"content-type", b"multipart/form-data; boundary=x")]
    headers.append((b"transfer-encoding", b"chunked") if framing == "chunked" else (b"content-length", b"3145728"))
    if framing == "waits-for-continue":
        headers.append((b"expect", b"100-continue"))
    body = [{"type": "http.request", "body": b"\0" * (1 << 20), "more_body": more} for more in (True, True, False)]
    sent: list[dict] = []

    async def receive():
        return body.pop(0) if body else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    asyncio.run(app(upload_scope(app, headers), receive, send))
    assert sent[0]["status"] == 413 and b"file_too_large" in sent[1]["body"]
    assert len(body) == (3 if framing == "waits-for-continue" else 0)
    assert not sent[-1].get("more_body", False)


def test_many_concurrent_requests_reach_the_engine_together():
    # The card's peak is 128 concurrent 28 s clips. Each request waits for its windows in a thread, and asyncio's
    # default executor (min(32, cores + 4) threads: 6 here) let only that many requests reach the engine at once.
    class Counting(GatedEngine):
        waiting = 0

        async def generate(self, prompt, sampling_params, request_id):  # noqa: ANN201
            self.waiting += 1
            async for output in super().generate(prompt, sampling_params, request_id):
                yield output

    engine = Counting()
    clip = DiarizeRequest(wav_bytes(5), "clip.wav", "en")

    async def main() -> list:
        decoder = await AsyncVllmDecoder.for_engine(engine, model_id="m", sampling_params=dict)
        service = DiarizeService(Pipeline(decoder, SlotLinker()), ["m"], audio_processes=0)
        runs = [asyncio.ensure_future(service.transcribe(clip)) for _ in range(40)]
        async with asyncio.timeout(20):
            while engine.waiting < 40:
                await asyncio.sleep(0.01)
        engine.gate.set()
        return await asyncio.gather(*runs)

    transcripts = asyncio.run(main())
    assert len(transcripts) == 40 and all(t.segments for t in transcripts)


def test_a_diarized_request_may_say_how_many_speakers_it_holds(tmp_path):
    # The same num/min/max_speakers fields as `turnscribe serve`: they reach this request's linking.
    def service(linker):
        async def start(engine_client, args):
            decoder = await AsyncVllmDecoder.for_engine(engine_client, model_id="m", sampling_params=dict)
            return DiarizeService(Pipeline(decoder, linker), served_model_names(args), audio_processes=0)

        return start

    audio = two_voices(tmp_path / "call.wav", 70).read_bytes()  # two voices in SCRIPT's places, three windows
    for linker, expected in ((ClusteringLinker(FakeEmbedder()), 200), (SlotLinker(), 400)):
        app = vllm_like_app()
        plugin = DiarizedTranscriptionPlugin(service_factory=service(linker))
        plugin.attach_router(app)
        with TestClient(app) as client:
            client.portal.call(plugin.init_state, FakeEngine(lambda prompt: SCRIPT), app.state, ARGS)
            answer = post(client, audio, response_format="diarized_json", num_speakers="1.0")  # as serve takes it
            assert answer.status_code == expected, answer.text
            if expected == 400:  # the window-slot linker of the tests takes no counts
                assert answer.json()["error"]["code"] == "speaker_counts_unsupported"
                continue
            assert len({s["speaker"] for s in answer.json()["segments"]}) == 1
            two = post(client, audio, response_format="diarized_json").json()["segments"]
            assert len({s["speaker"] for s in two}) == 2
            for fields in (
                {"num_speakers": "two"},
                {"num_speakers": "1.5"},
                {"min_speakers": "3", "max_speakers": "2"},
            ):
                refused = post(client, audio, response_format="diarized_json", **fields)
                assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_value"


def test_a_diarized_request_names_its_known_speakers(tmp_path):
    # OpenAI's known_speaker_names[] / known_speaker_references[] were not read: every speaker stayed SPEAKER_NN.
    reference = tmp_path / "alice.wav"
    write_wav(reference, np.full(3 * SAMPLE_RATE, 0.3, dtype=np.float32))  # FakeEmbedder hears her as SCRIPT's first
    alice = "data:audio/wav;base64," + base64.b64encode(reference.read_bytes()).decode()
    audio = two_voices(tmp_path / "call.wav", 70).read_bytes()

    def ask(linker, **fields):
        async def start(engine_client, args):
            decoder = await AsyncVllmDecoder.for_engine(engine_client, model_id="m", sampling_params=dict)
            return DiarizeService(Pipeline(decoder, linker), served_model_names(args), audio_processes=0)

        app = vllm_like_app()
        plugin = DiarizedTranscriptionPlugin(service_factory=start)
        plugin.attach_router(app)
        with TestClient(app) as client:
            client.portal.call(plugin.init_state, FakeEngine(lambda prompt: SCRIPT), app.state, ARGS)
            return post(client, audio, response_format="diarized_json", **fields)

    known = {"known_speaker_names[]": "Alice", "known_speaker_references[]": alice}
    named = ask(RealSlotLinker(FakeEmbedder()), **known)
    assert named.status_code == 200, named.text
    assert {s["speaker"] for s in named.json()["segments"]} == {"Alice", "SPEAKER_00"}
    refused = ask(SlotLinker(), **known)  # the tests' window-slot linker enrols no one
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "known_speakers_unsupported"
    bad = ask(RealSlotLinker(FakeEmbedder()), **{**known, "known_speaker_references[]": "hello"})
    assert bad.status_code == 400 and "base64 data URL" in bad.json()["error"]["message"]
