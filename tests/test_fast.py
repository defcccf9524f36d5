"""The transformers backend's speed options keep the plain path's token ids; batch sizes from GPU memory.

The tiny random model decodes freely here (greedy, end-of-text banned so that every window runs the whole
budget): forced outputs would be identical whatever the model computed. Windows of three lengths share a batch,
so padding is exercised too.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_model import NoEndOfText, skip_if_eager_attention_pads_with_nan
from transformers import CohereAsrConfig

from turnscribe.decoders.base import WindowAudio
from turnscribe.decoders.transformers import (
    SpeedOptions,
    TransformersDecoder,
    batch_size_for_memory,
    max_new_tokens_for,
    window_memory,
)
from turnscribe.random_model import noise_windows

NEW_TOKENS = 40


@pytest.fixture(scope="module")
def windows() -> list[WindowAudio]:
    return noise_windows([28.0, 7.5, 19.0], level=0.1)


def decoder(path, speed: SpeedOptions) -> TransformersDecoder:
    d = TransformersDecoder(path, device="cpu", speed=speed, max_new_tokens=NEW_TOKENS)
    d.logits_processor_factory = lambda _: [NoEndOfText(d.processor.tokenizer.eos_token_id)]
    return d


@pytest.fixture(scope="module")
def plain_ids(tiny_native, windows) -> torch.Tensor:
    skip_if_eager_attention_pads_with_nan()
    ids = decoder(tiny_native, SpeedOptions(attention="eager")).generate_ids(windows, "en")
    assert ids.shape == (3, NEW_TOKENS)
    assert all(len(set(row.tolist())) > 3 for row in ids)  # a real, varied decode, not one token repeated
    return ids


@pytest.mark.parametrize(
    "speed",
    [SpeedOptions(attention="sdpa"), SpeedOptions(static_cache=True), SpeedOptions(features_on_device=False)],
    ids=["sdpa", "static-cache", "features-on-cpu"],
)
def test_each_speed_option_keeps_the_token_ids(tiny_native, windows, plain_ids, speed):
    assert torch.equal(decoder(tiny_native, speed).generate_ids(windows, "en"), plain_ids)


@pytest.mark.slow
def test_compiled_static_cache_keeps_the_token_ids(tiny_native, windows, plain_ids):
    """torch.compile of the decoding step (what --fast does on CUDA), forced on the CPU; ~40 s of compiling."""
    fast = decoder(tiny_native, SpeedOptions(attention="sdpa", static_cache=True, compile=True))
    assert torch.equal(fast.generate_ids(windows, "en"), plain_ids)
    assert hasattr(fast.generating_model, "_compiled_call")  # generate() really compiled, no fall back


def test_a_batch_gives_each_window_what_it_gets_alone(tiny_native, windows, plain_ids):
    plain = decoder(tiny_native, SpeedOptions(attention="eager"))
    for i, w in enumerate(windows):
        assert torch.equal(plain.generate_ids([w], "en")[0], plain_ids[i])


def test_the_fast_preset_is_sdpa_on_cpu_and_everything_on_cuda():
    assert SpeedOptions.fast("cpu") == SpeedOptions(attention="sdpa")
    assert SpeedOptions.fast("cuda:0") == SpeedOptions("sdpa", static_cache=True, compile=True, features_on_device=True)
    with pytest.raises(ValueError, match="static_cache"):
        SpeedOptions(compile=True)


def test_window_memory_of_the_full_size_model_is_dominated_by_the_conv_front_end():
    memory = window_memory(CohereAsrConfig(vocab_size=16684), window_s=30.0)
    # 256 channels × 1500 × 64 bf16 maps, three alive at once: 147 MB.
    assert memory.subsampling == 3 * 256 * 1500 * 64 * 2
    # KV cache: 8 layers × (K, V) × 1024 × bf16 per position; prompt + budget and 375 encoded frames.
    assert memory.decoder_cache >= 2 * 8 * 1024 * 2 * (9 + max_new_tokens_for(30.0) + 375)
    assert 150e6 < memory.total < 250e6


@pytest.mark.parametrize(
    ("free_gib", "per_window_mb", "expected"),
    [(70, 200, 250), (70, 50, 512), (0.1, 200, 1), (10, 1000, 7)],
)
def test_batch_size_follows_free_memory(free_gib, per_window_mb, expected):
    assert batch_size_for_memory(int(free_gib * 2**30), int(per_window_mb * 2**20)) == expected


def test_batch_size_is_fixed_on_the_cpu_and_taken_from_memory_on_cuda(tiny_native, monkeypatch):
    assert TransformersDecoder(tiny_native, device="cpu", batch_size=None).batch_size == 4
    d = TransformersDecoder(tiny_native, device="cpu", batch_size=2)
    monkeypatch.setattr(d, "device", "cuda:0")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (8 * 2**30, 80 * 2**30))
    per_window = window_memory(d.model.config, dtype_bytes=4).total
    assert d.auto_batch_size() == batch_size_for_memory(8 * 2**30, per_window)


@pytest.mark.parametrize(
    "out_of_memory",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
    ],
    ids=["allocator", "cublas"],
)
def test_a_batch_out_of_gpu_memory_is_decoded_in_halves_and_later_batches_are_smaller(
    tiny_native, windows, plain_ids, caplog, out_of_memory
):
    d = decoder(tiny_native, SpeedOptions(attention="eager"))
    d.batch_size = 8
    generate_ids = d.generate_ids
    sizes: list[int] = []

    def short_of_memory_above_two(batch, language):
        sizes.append(len(batch))
        if len(batch) > 2:
            raise out_of_memory
        return generate_ids(batch, language)

    d.generate_ids = short_of_memory_above_two
    expected = d.processor.tokenizer.batch_decode(plain_ids, skip_special_tokens=False)
    with caplog.at_level("WARNING"):
        assert d.decode(windows, "en") == expected
    assert sizes == [3, 2, 1]
    assert d.batch_size == 2
    assert "Out of GPU memory for a batch of 3 windows" in caplog.text
    # One window that does not fit is the caller's to report (the pipeline fails that window alone).
    d.generate_ids = lambda batch, language: short_of_memory_above_two(batch * 3, language)
    with pytest.raises(type(out_of_memory)):
        d.decode(windows[:1], "en")
    # Any other error is the caller's at once: no halving.
    d.generate_ids = lambda batch, language: 1 / 0
    with pytest.raises(ZeroDivisionError):
        d.decode(windows, "en")
    assert d.batch_size == 2


def test_a_loaded_model_is_fed_in_its_own_dtype():
    # The device's default dtype (bfloat16 on CUDA, float32 on the CPU) would not match weights loaded otherwise:
    # training evaluates its float32 model on the GPU.
    from turnscribe.random_model import random_model

    processor, model = random_model("tiny", dtype=torch.bfloat16)
    d = TransformersDecoder("random-tiny", device="cpu", loaded=(processor, model), max_new_tokens=5)
    assert d.dtype == torch.bfloat16
    assert len(d.decode(noise_windows([3.0]), "en")) == 1


@pytest.fixture
def attention_kernels():
    """The process-wide SDPA kernel switches, as they were before the test."""
    cuda = torch.backends.cuda
    saved = cuda.cudnn_sdp_enabled(), cuda.mem_efficient_sdp_enabled()
    yield
    cuda.enable_cudnn_sdp(saved[0])
    cuda.enable_mem_efficient_sdp(saved[1])


def nan_in_the_last_frame_while(condition):
    """An encoder hook: NaN in the padded (last) frame while `condition()` holds, as a kernel that returns NaN for
    fully masked rows gives (or transformers < 5.18 with eager attention, always)."""

    def hook(module, args, out) -> None:
        if condition():
            out.last_hidden_state[:, -1:] = np.nan

    return hook


def test_non_finite_encoder_output_is_a_clear_error_not_garbage(tiny_native, windows, attention_kernels, caplog):
    from turnscribe.decoders.base import DecoderError

    d = decoder(tiny_native, SpeedOptions(attention="eager"))
    d.model.get_encoder().register_forward_hook(nan_in_the_last_frame_while(lambda: True))
    with pytest.raises(DecoderError, match="NaN or infinite"):
        d.decode(windows, "en")
    assert torch.backends.cuda.cudnn_sdp_enabled() and not caplog.text  # eager: no SDPA kernel to blame
    d = decoder(tiny_native, SpeedOptions(attention="sdpa"))
    d.model.get_encoder().register_forward_hook(nan_in_the_last_frame_while(lambda: True))
    with pytest.raises(DecoderError, match="every fused attention kernel was turned off"):
        d.decode(windows, "en")


def test_a_fused_attention_kernel_giving_nan_is_turned_off_and_the_batch_encoded_again(
    tiny_native, windows, plain_ids, attention_kernels, caplog
):
    d = decoder(tiny_native, SpeedOptions(attention="sdpa"))
    d.model.get_encoder().register_forward_hook(nan_in_the_last_frame_while(torch.backends.cuda.cudnn_sdp_enabled))
    with caplog.at_level("WARNING"):
        assert torch.equal(d.generate_ids(windows, "en"), plain_ids)
    assert not torch.backends.cuda.cudnn_sdp_enabled() and torch.backends.cuda.mem_efficient_sdp_enabled()
    assert "cuDNN attention kernel is now off" in caplog.text


def test_a_compiled_decoder_runs_generate_on_one_thread_whoever_calls(tiny_native, windows):
    # CUDA graphs belong to the thread that captured them; the scheduler, benchmarks and copies on several GPUs
    # call from threads of their own.
    import threading
    from concurrent.futures import ThreadPoolExecutor

    d = decoder(tiny_native, SpeedOptions(static_cache=True, compile=True))
    threads = []

    def recording_generate(**inputs):
        threads.append(threading.current_thread())
        rows = inputs["decoder_input_ids"]
        return torch.cat([rows, torch.full_like(rows[:, :1], d.processor.tokenizer.eos_token_id)], dim=1)

    d.model.generate = recording_generate  # before the first call: the projected view copies it
    with ThreadPoolExecutor(3) as callers:
        list(callers.map(lambda w: d.decode([w], "en"), windows))
    d.decode(windows, "en")
    assert len(threads) == 4 and len(set(threads)) == 1
    assert threads[0] is not threading.current_thread() and threads[0].name.startswith("turnscribe-compiled")
