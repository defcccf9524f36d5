"""The vLLM decoder's edges found in QA: the checkpoint check's messages, and a failing window's siblings."""

import asyncio
import shutil

import pytest
from test_vllm_decoder import by_level, window
from vllm_fakes import FakeEngine, audio_of

from turnscribe.checkpoint import CheckpointError, fix_for_vllm
from turnscribe.decoders.vllm import AsyncVllmDecoder, servable_checkpoint


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
