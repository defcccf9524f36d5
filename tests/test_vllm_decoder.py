"""The vLLM backend's own logic, without vLLM: request construction, batching, outputs, the async bridge, selection.

The engine is a stand-in with vLLM's documented shape (vllm_fakes.py); whether real vLLM accepts these requests
is checked in test_vllm_engine.py, which runs only where vLLM is installed.
"""

import asyncio
import importlib.util
import json
import shutil

import numpy as np
import pytest
from test_cli import flat, run
from test_server_scripted import SlotLinker
from tiny_model import build_tokenizer
from vllm_fakes import FakeEngine, FakeLLM, audio_of

from turnscribe import Pipeline, build_pipeline
from turnscribe.checkpoint import CheckpointError, fix_for_vllm
from turnscribe.decoders.backends import BACKENDS, DecoderOptions, load_decoder
from turnscribe.decoders.base import DecoderError, WindowAudio
from turnscribe.decoders.transformers import max_new_tokens_for
from turnscribe.decoders.vllm import (
    AsyncVllmDecoder,
    VllmDecoder,
    build_requests,
    no_dither_overrides,
    output_text,
    servable_checkpoint,
)
from turnscribe.formats import render
from turnscribe.prompt import PromptTokenError, diarize_prompt_tokens
from turnscribe.types import SAMPLE_RATE, WindowSpan
from turnscribe.windows import plan_windows

HAS_VLLM = importlib.util.find_spec("vllm") is not None
CARD_DECODING = {
    "temperature": 0.0,
    "repetition_penalty": 1.2,
    "skip_special_tokens": False,
    "spaces_between_special_tokens": False,
}


def window(index: int, seconds: float, level: float = 0.1) -> WindowAudio:
    samples = np.full(round(seconds * SAMPLE_RATE), level, np.float32)
    return WindowAudio(WindowSpan(index, 0, len(samples)), samples)


def prompt_ids(language: str) -> list[int]:
    return build_tokenizer().convert_tokens_to_ids(diarize_prompt_tokens(language))


def by_level(prompt) -> str:
    """The window's answer names the level its audio was filled with, so order mix-ups show."""
    level = round(float(audio_of(prompt)[0]) * 100)
    return f"<|spltoken0|><|t:1.0|> level {level} <|t:2.0|><|endoftext|>"


def test_requests_carry_the_diarize_prompt_the_audio_and_a_budget_sized_to_each_window():
    windows = [window(0, 28.0), window(1, 0.4)]
    requests = build_requests(windows, prompt_ids("de"))
    assert [r.prompt_token_ids for r in requests] == [tuple(prompt_ids("de"))] * 2
    assert [r.max_tokens for r in requests] == [max_new_tokens_for(28.0), max_new_tokens_for(0.4)] == [394, 22]
    assert len(requests[0].samples) == 28 * SAMPLE_RATE
    # Clips under 1 s are padded with silence (the mel front end needs frames), the audio itself kept.
    assert len(requests[1].samples) == SAMPLE_RATE and requests[1].samples.dtype == np.float32
    assert np.all(requests[1].samples[: int(0.4 * SAMPLE_RATE)] == np.float32(0.1))
    assert not requests[1].samples[int(0.4 * SAMPLE_RATE) :].any()

    prompt = requests[0].prompt()
    assert prompt["prompt_token_ids"] == prompt_ids("de")
    samples, rate = prompt["multi_modal_data"]["audio"]
    assert rate == SAMPLE_RATE and samples is requests[0].samples
    assert requests[0].sampling_options() == {**CARD_DECODING, "max_tokens": 394}
    assert [r.max_tokens for r in build_requests(windows, prompt_ids("en"), max_tokens=50)] == [50, 50]


def test_output_text_is_the_completion_with_its_special_tokens():
    llm = FakeLLM(by_level)
    (out,) = llm.generate([{"multi_modal_data": {"audio": (np.full(1, 0.07), SAMPLE_RATE)}}], [None])
    assert output_text(out) == "<|spltoken0|><|t:1.0|> level 7 <|t:2.0|><|endoftext|>"
    with pytest.raises(DecoderError, match="no completion"):
        output_text(type(out)([]))


def test_vllm_decoder_sends_a_batch_in_one_generate_call_and_answers_in_window_order():
    llm = FakeLLM(by_level)
    decoder = VllmDecoder(llm, model_id="m", batch_size=3, sampling_params=dict)
    windows = [window(0, 28.0, 0.03), window(1, 28.0, 0.01), window(2, 5.0, 0.02)]

    outputs = decoder.decode(windows, "fr")

    assert [o.split(" level ")[1].split()[0] for o in outputs] == ["3", "1", "2"]
    ((prompts, params, use_tqdm),) = llm.calls
    assert not use_tqdm and len(prompts) == 3
    assert all(p["prompt_token_ids"] == prompt_ids("fr") for p in prompts)
    assert params == [{**CARD_DECODING, "max_tokens": max_new_tokens_for(s)} for s in (28.0, 28.0, 5.0)]
    assert decoder.decode([], "fr") == [] and len(llm.calls) == 1


def test_vllm_decoder_refuses_a_tokenizer_without_the_diarize_tokens_and_a_short_answer():
    class PlainLLM(FakeLLM):
        def get_tokenizer(self):
            return type("Tok", (), {"unk_token_id": 0, "convert_tokens_to_ids": lambda self, ts: [0] * len(ts)})()

    with pytest.raises(PromptTokenError, match="diarize"):
        VllmDecoder(PlainLLM(by_level), model_id="m", sampling_params=dict)

    class ShortLLM(FakeLLM):
        def generate(self, prompts, sampling_params, use_tqdm=True):
            return super().generate(prompts, sampling_params, use_tqdm)[:-1]

    with pytest.raises(DecoderError, match="1 outputs for 2 windows"):
        VllmDecoder(ShortLLM(by_level), model_id="m", sampling_params=dict).decode([window(0, 2), window(1, 2)], "en")


def test_pipeline_on_the_vllm_decoder_stitches_the_windows_in_order():
    # 60 s whose level steps up every hop, so each window's first sample says which window it is.
    spans = plan_windows(60 * SAMPLE_RATE)
    audio = np.zeros(60 * SAMPLE_RATE, np.float32)
    for span in spans:
        audio[span.start_sample :] = 0.01 * (span.index + 1)
    llm = FakeLLM(by_level)
    pipeline = Pipeline(VllmDecoder(llm, model_id="m", batch_size=2, sampling_params=dict), SlotLinker())

    transcript = pipeline.run(audio, sampling_rate=SAMPLE_RATE, language="en")

    assert [len(prompts) for prompts, _, _ in llm.calls] == [2, 1]
    assert [(s.start, s.end, s.text) for s in transcript.segments] == [
        (1.0, 2.0, "level 1"),
        (27.0, 28.0, "level 2"),
        (53.0, 54.0, "level 3"),
    ]
    assert transcript.metadata.decoder == "vllm" and transcript.metadata.model == "m"


def test_async_decoder_sends_every_window_as_its_own_request_and_keeps_the_final_output():
    engine = FakeEngine(by_level)

    async def main():
        decoder = await AsyncVllmDecoder.for_engine(engine, model_id="m", sampling_params=dict)
        assert decoder.loop is asyncio.get_running_loop()
        windows = [window(i, 10.0, 0.01 * (i + 1)) for i in range(4)]
        awaited = await decoder.generate(windows, "ja")
        # decode() is for worker threads: it runs generate() on the engine's loop and waits.
        threaded = await asyncio.to_thread(decoder.decode, windows, "ja")
        with pytest.raises(DecoderError, match="worker thread"):
            decoder.decode(windows, "ja")
        return awaited, threaded

    awaited, threaded = asyncio.run(main())

    expected = [by_level({"multi_modal_data": {"audio": ([0.01 * i], SAMPLE_RATE)}}) for i in (1, 2, 3, 4)]
    assert awaited == threaded == expected
    assert len(engine.requests) == 8 and len({rid for _, _, rid in engine.requests}) == 8
    assert engine.most_in_flight == 4  # the windows of a batch are in the engine together
    prompt, params, _ = engine.requests[0]
    assert prompt["prompt_token_ids"] == prompt_ids("ja") and params == {**CARD_DECODING, "max_tokens": 151}


def test_async_decoder_fails_a_request_that_ends_without_output():
    engine = FakeEngine(by_level, steps=0)

    async def main():
        decoder = await AsyncVllmDecoder.for_engine(engine, model_id="m", sampling_params=dict)
        await decoder.generate([window(0, 2.0)], "en")

    with pytest.raises(DecoderError, match="without any output"):
        asyncio.run(main())


def test_only_fixed_original_layout_checkpoints_are_handed_to_vllm(tiny_original, tiny_native, tmp_path):
    path = tmp_path / "ckpt"
    shutil.copytree(tiny_original, path)
    with pytest.raises(CheckpointError, match=f"turnscribe fix-checkpoint {path}"):
        servable_checkpoint(path)
    fix_for_vllm(path)
    assert servable_checkpoint(path) == path
    with pytest.raises(CheckpointError, match="original-layout checkpoints only"):
        servable_checkpoint(tiny_native)


def test_vllm_gets_the_checkpoints_preprocessor_with_dither_off(tiny_original):
    """vLLM's Cohere ASR front end dithers unless told not to, and replaces a dict-valued config entry whole."""
    preprocessor = json.loads((tiny_original / "config.json").read_text())["preprocessor"]
    assert "dither" not in preprocessor
    assert no_dither_overrides(tiny_original) == {"preprocessor": {**preprocessor, "dither": 0.0}}


def test_backends_are_selected_by_name():
    assert list(BACKENDS) == ["transformers", "vllm"]
    with pytest.raises(ValueError, match="Unknown decoder backend 'nope'; choose from transformers, vllm"):
        build_pipeline(backend="nope")


@pytest.mark.skipif(HAS_VLLM, reason="checks the message shown when vLLM is missing")
def test_the_vllm_backend_without_vllm_names_the_extra(tiny_original, tmp_path):
    with pytest.raises(DecoderError, match=r"pip install 'turnscribe\[vllm\]'"):
        load_decoder("vllm", DecoderOptions(tiny_original, "cpu", 8))
    clip = tmp_path / "clip.wav"
    clip.write_bytes(b"RIFF")  # never read: the backend fails first
    result = run("transcribe", clip, "--backend", "vllm", "--model", tiny_original, "-o", tmp_path)
    assert result.exit_code == 2 and "turnscribe[vllm]" in flat(result)


def test_diarized_json_of_a_vllm_decoded_transcript():
    audio = np.full(20 * SAMPLE_RATE, 0.05, np.float32)
    pipeline = Pipeline(VllmDecoder(FakeLLM(by_level), model_id="m", sampling_params=dict), SlotLinker())
    body = json.loads(render(pipeline.run(audio, sampling_rate=SAMPLE_RATE), "diarized_json"))
    assert body["speakers"] == ["SPEAKER_00"] and body["segments"][0]["text"] == "level 5"
