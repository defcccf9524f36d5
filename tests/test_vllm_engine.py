"""What only real vLLM can show: that it accepts turnscribe's requests and plugin. Skipped where vLLM is not
installed (the reason is shown). Everything here but the last test runs on a CPU machine with vLLM 0.33.0 installed
(`pip install '.[vllm,test]'`, then `pytest -m vllm -rs`); the last one needs an NVIDIA GPU and a fixed checkpoint
in $TURNSCRIBE_VLLM_CHECKPOINT."""

import json
import os
import shutil

import pytest
import torch

vllm = pytest.importorskip("vllm", reason="vLLM is not installed: pip install '.[vllm]' (Linux, NVIDIA GPU)")

if not torch.cuda.is_available():
    # vLLM cannot infer a device without a GPU; its CPU platform is enough to parse `vllm serve` arguments, build
    # the API app and run the multimodal processor (no kernels run here). Read lazily by vLLM, so set it early.
    os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")

from fastapi.routing import APIRoute  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from test_vllm_plugin import SCRIPT, wav_bytes  # noqa: E402
from tiny_model import build_tokenizer  # noqa: E402
from vllm_fakes import FakeEngine  # noqa: E402

from turnscribe.checkpoint import fix_for_vllm  # noqa: E402
from turnscribe.decoders.base import WindowAudio  # noqa: E402
from turnscribe.decoders.vllm import VllmDecoder, build_requests, no_dither_overrides  # noqa: E402
from turnscribe.parse import parse_window  # noqa: E402
from turnscribe.prompt import diarize_prompt_tokens, tokenizer_prompt_ids  # noqa: E402
from turnscribe.random_model import noise_windows  # noqa: E402
from turnscribe.vllm_plugin import ENTRY_POINT, TRANSCRIPTIONS_PATH, DiarizedTranscriptionPlugin  # noqa: E402

pytestmark = pytest.mark.vllm
CHECKPOINT = os.environ.get("TURNSCRIBE_VLLM_CHECKPOINT")


def windows(*seconds: float) -> list[WindowAudio]:
    return noise_windows(seconds, level=0.1)


def test_vllm_accepts_the_requests_turnscribe_builds():
    (request,) = build_requests(windows(12.0), [1, 2, 3])
    params = vllm.SamplingParams(**request.sampling_options())
    assert params.temperature == 0.0 and params.repetition_penalty == 1.2 and params.max_tokens == request.max_tokens
    assert params.skip_special_tokens is False and params.spaces_between_special_tokens is False
    from vllm.inputs import TokensPrompt

    assert TokensPrompt(**request.prompt()) == request.prompt()


def test_vllm_takes_the_benchmarks_fixed_output_length():
    from turnscribe.bench import forced_length

    (request,) = build_requests(windows(28.0), [1, 2, 3])
    params = forced_length(vllm.SamplingParams, 180)(**request.sampling_options())
    assert params.min_tokens == params.max_tokens == 180 and params.skip_special_tokens is False


def test_the_plugin_satisfies_vllms_endpoint_plugin_protocol():
    from vllm.plugins.endpoint_plugins.interface import EndpointPlugin

    assert isinstance(DiarizedTranscriptionPlugin(), EndpointPlugin)


def test_vllms_loader_loads_the_plugin_only_when_allowlisted_for_transcription(monkeypatch):
    from vllm.plugins import load_endpoint_plugins

    monkeypatch.delenv("VLLM_PLUGINS", raising=False)
    assert load_endpoint_plugins(("transcription",)) == []  # endpoint plugins are opt-in
    monkeypatch.setenv("VLLM_PLUGINS", ENTRY_POINT)
    (plugin,) = load_endpoint_plugins(("generate", "transcription"))
    assert isinstance(plugin, DiarizedTranscriptionPlugin)
    assert load_endpoint_plugins(("generate",)) == []  # required_tasks: a server without transcription skips it


def serve_args(*argv: str):
    from vllm.entrypoints.common.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    return make_arg_parser(FlexibleArgumentParser()).parse_args(["--model", "/models/diarize", *argv])


class StubServingTranscription:
    """Stands in for vLLM's OpenAIServingTranscription (which needs an engine) behind vLLM's real route."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int]] = []

    async def create_transcription(self, audio_data, request, raw_request):
        from vllm.entrypoints.speech_to_text.transcription.protocol import TranscriptionResponse

        self.seen.append((request.response_format, len(audio_data)))
        return TranscriptionResponse(text="from vllm", usage={"seconds": 1})


def test_vllms_own_app_mounts_the_plugin_route_first_and_serves_through_it(monkeypatch):
    """vLLM's `build_app` and `init_endpoint_plugins_state` as `vllm serve` runs them; the engine is a stand-in."""
    from vllm.entrypoints.launchers.app import build_app
    from vllm.plugins.endpoint_plugins.interface import init_endpoint_plugins_state

    monkeypatch.setenv("VLLM_PLUGINS", ENTRY_POINT)
    monkeypatch.setenv("TURNSCRIBE_EMBEDDER", "resemblyzer")
    args = serve_args("--served-model-name", "syvai/cohere-transcribe-diarize")
    app = build_app(args, supported_tasks=("transcription",))
    (plugin,) = app.state.endpoint_plugins
    routes = [r for r in app.router.routes if isinstance(r, APIRoute) and r.path == TRANSCRIPTIONS_PATH]
    assert [r.endpoint for r in routes] == [plugin.create_transcription, plugin.fallback.endpoint]
    assert plugin.fallback.endpoint.__module__ == "vllm.entrypoints.speech_to_text.transcription.api_router"

    engine = FakeEngine(lambda prompt: SCRIPT)
    serving = StubServingTranscription()
    app.state.log_stats = False  # read by vLLM's lifespan
    app.state.openai_serving_transcription = serving
    with TestClient(app) as client:
        client.portal.call(init_endpoint_plugins_state, engine, app.state, args)
        files = {"file": ("meeting.wav", wav_bytes(40), "audio/wav")}
        diarized = client.post(
            TRANSCRIPTIONS_PATH, files=files, data={"language": "de", "response_format": "diarized_json"}
        )
        plain = client.post(TRANSCRIPTIONS_PATH, files=files, data={"response_format": "json"})

    assert diarized.status_code == 200, diarized.text
    body = diarized.json()
    assert [s["text"] for s in body["segments"]] == ["Hello there.", "General Kenobi."] * 2
    german = build_tokenizer().convert_tokens_to_ids(diarize_prompt_tokens("de"))
    assert [p["prompt_token_ids"] for p, _, _ in engine.requests] == [german, german]
    assert all(isinstance(params, vllm.SamplingParams) for _, params, _ in engine.requests)
    assert plain.status_code == 200 and plain.json()["text"] == "from vllm"
    assert serving.seen == [("json", len(files["file"][1]))]


@pytest.fixture()
def tiny_fixed(tiny_original, tmp_path):
    """The tiny original-layout checkpoint with the card's edits, plus the top-level audio keys that vLLM's Cohere
    ASR model reads from the real checkpoint's config (the tiny one lacks them)."""
    path = tmp_path / "fixed"
    shutil.copytree(tiny_original, path)
    fix_for_vllm(path)
    config = json.loads((path / "config.json").read_text())
    config.update(sample_rate=16000, max_audio_clip_s=30, overlap_chunk_second=1)
    (path / "config.json").write_text(json.dumps(config))
    return path


def test_vllms_cohere_asr_processor_takes_the_request_as_turnscribe_builds_it(tiny_fixed):
    """vLLM's own input path (renderer, Cohere ASR multimodal processor, InputProcessor) on CPU: the diarize prompt
    reaches the decoder unchanged, the audio becomes encoder features, and with dither off they are reproducible."""
    from vllm.config import ModelConfig, VllmConfig
    from vllm.model_executor.models.cohere_asr import CohereAsrForConditionalGeneration
    from vllm.renderers.registry import renderer_from_config
    from vllm.v1.engine.input_processor import InputProcessor

    model_config = ModelConfig(model=str(tiny_fixed), hf_overrides=no_dither_overrides(tiny_fixed))
    model_class, _ = model_config.registry.resolve_model_cls(model_config.architectures, model_config=model_config)
    assert model_class is CohereAsrForConditionalGeneration and model_config.is_encoder_decoder
    assert model_config.hf_config.preprocessor["dither"] == 0.0
    vllm_config = VllmConfig(model_config=model_config)
    renderer = renderer_from_config(vllm_config)
    processor = InputProcessor(vllm_config, renderer)

    prompt_ids = tokenizer_prompt_ids(renderer.get_tokenizer(), "de")
    assert prompt_ids == build_tokenizer().convert_tokens_to_ids(diarize_prompt_tokens("de"))
    (request,) = build_requests(windows(12.0), prompt_ids)
    params = vllm.SamplingParams(**request.sampling_options())
    features = []
    for n in range(2):
        core = processor.process_inputs(f"r{n}", request.prompt(), params, supported_tasks=("transcription",))
        assert core.prompt_token_ids == prompt_ids  # no decoder start token added, nothing dropped
        (feature,) = core.mm_features
        assert feature.modality == "audio"
        features.append(feature.data["input_features"].data)
        assert core.sampling_params.max_tokens == request.max_tokens and not core.sampling_params.skip_special_tokens
    assert features[0].shape[0] == 128 and torch.equal(features[0], features[1])


@pytest.mark.skipif(not CHECKPOINT, reason="set TURNSCRIBE_VLLM_CHECKPOINT to a checkpoint fixed with fix-checkpoint")
@pytest.mark.skipif(not torch.cuda.is_available(), reason="starting vLLM's engine needs an NVIDIA GPU")
def test_a_batch_decodes_as_its_windows_do_one_by_one_on_the_real_model():
    decoder = VllmDecoder.from_pretrained(CHECKPOINT, batch_size=4)
    batch = windows(28.0, 9.5, 28.0)
    together = decoder.decode(batch, "en")
    alone = [decoder.decode([w], "en")[0] for w in batch]
    assert together == alone  # greedy decoding: batching must not change a window's tokens
    for w, raw in zip(batch, together):
        parse_window(raw, w.span.duration, w.span.index)  # never raises; here it must at least run on real output
