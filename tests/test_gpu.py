"""On a CUDA GPU (skipped elsewhere; scripts/gpu_check.sh runs these): the full-size architecture with random
weights in bfloat16, every window forced to a scripted stream.

With the tokens forced, batched and single-window runs feed the decoder identical inputs, so their logits can be
compared step by step: padding (windows of other lengths in the batch) must not leak into a window's result.
bfloat16 kernels for different shapes round differently, hence a tolerance: per step, cosine similarity of the
logit vectors >= 0.99, and the top token of the raw logits the same in >= 90 % of the steps.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from turnscribe.decoders.base import WindowAudio
from turnscribe.decoders.transformers import SpeedOptions, TransformersDecoder
from turnscribe.random_model import ForcedTokens, noise_windows, random_model, scripted_window
from turnscribe.types import SAMPLE_RATE

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run scripts/gpu_check.sh on one)"),
]
LENGTHS = [28.0, 13.4, 28.0, 21.0]
TOKENS = 180


@pytest.fixture(scope="module")
def loaded():
    return random_model("full", device="cuda", dtype=torch.bfloat16, attention="sdpa")


@pytest.fixture(scope="module")
def windows() -> list[WindowAudio]:
    return noise_windows(LENGTHS)


def forced_decoder(loaded, speed: SpeedOptions, device: str = "cuda") -> TransformersDecoder:
    decoder = TransformersDecoder("random-full", device=device, batch_size=8, speed=speed, loaded=loaded)
    tokenizer = decoder.processor.tokenizer

    def force(batch):
        scripts = [scripted_window(tokenizer, len(w.samples) / SAMPLE_RATE, TOKENS, seed=w.span.index) for w in batch]
        return [ForcedTokens(scripts, len(decoder.prompt_ids("en")), tokenizer.eos_token_id)]

    decoder.logits_processor_factory = force
    return decoder


def run(decoder: TransformersDecoder, windows: list[WindowAudio]):
    out = decoder.generate(windows, "en", output_logits=True, return_dict_in_generate=True)
    return out.sequences.cpu(), torch.stack(out.logits, dim=1).float().cpu()  # (batch, steps, vocab)


def assert_close(a: torch.Tensor, b: torch.Tensor) -> None:
    """a, b: (steps, vocab) logits of one window."""
    cosine = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    assert cosine.min() >= 0.99, f"lowest per-step cosine similarity {cosine.min():.4f}"
    agree = (a.argmax(-1) == b.argmax(-1)).float().mean()
    assert agree >= 0.9, f"top tokens agree in only {agree:.0%} of steps"


def test_bf16_batched_generate_matches_single_window_generate(loaded, windows):
    decoder = forced_decoder(loaded, SpeedOptions(attention="sdpa"))
    sequences, logits = run(decoder, windows)
    assert sequences.shape[1] == 9 + TOKENS + 1  # prompt, script, end-of-text
    for i, w in enumerate(windows):
        alone_sequence, alone_logits = run(decoder, [w])
        assert torch.equal(alone_sequence[0], sequences[i])
        assert_close(logits[i], alone_logits[0])


@pytest.mark.slow
def test_the_fast_preset_matches_the_plain_path(loaded, windows):
    """Static KV cache + torch.compile (CUDA graphs) + GPU features, against the plain dynamic-cache path."""
    plain_sequences, plain_logits = run(forced_decoder(loaded, SpeedOptions(attention="sdpa")), windows)
    fast = forced_decoder(loaded, SpeedOptions.fast("cuda"))
    run(fast, windows)  # compiles
    sequences, logits = run(fast, windows)
    assert torch.equal(sequences, plain_sequences)
    steps = plain_logits.shape[1]
    for i in range(len(windows)):
        assert_close(logits[i, :steps], plain_logits[i])


def test_resemblyzer_on_the_gpu_matches_the_cpu():
    # Front end (STFT + mel) and GE2E encoder both on the GPU; cuDNN's LSTM and cuFFT round differently from the
    # CPU's, so equal up to a small cosine distance (clips of one voice sit ~0.1 apart, of two voices ~0.3).
    from test_embedder_batching import CLIPS

    from turnscribe.speakers import load_embedder

    on_gpu = load_embedder("resemblyzer", device="cuda").embed(CLIPS)
    on_cpu = load_embedder("resemblyzer", device="cpu").embed(CLIPS)
    assert on_gpu.shape == on_cpu.shape
    assert float(np.max(1 - np.sum(on_gpu * on_cpu, axis=1))) < 1e-3


def test_features_on_the_gpu_match_the_cpu(loaded, windows):
    # On by default on CUDA (SpeedOptions.features_on_device, decoders/features.py): the extractor's log-mel,
    # computed on the GPU, up to FFT rounding.
    decoder = TransformersDecoder("random-full", device="cuda", batch_size=8, loaded=loaded)
    clips = [w.samples for w in windows]
    on_gpu, gpu_mask = decoder.log_mel(clips)
    assert on_gpu.device.type == "cuda"
    on_cpu = decoder.processor.feature_extractor(
        clips, sampling_rate=SAMPLE_RATE, return_tensors="pt", padding="longest", return_attention_mask=True
    )
    assert torch.equal(gpu_mask.cpu(), on_cpu["attention_mask"])
    assert float((on_gpu.cpu() - on_cpu["input_features"]).abs().max()) < 1e-3


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_copies_on_two_gpus_give_one_gpus_token_ids(loaded, windows):
    from turnscribe.decoders.replicas import ReplicatedDecoder

    one = forced_decoder(loaded, SpeedOptions(attention="sdpa"))
    processor, model = loaded
    second = random_model("full", device="cuda:1", dtype=torch.bfloat16, attention="sdpa")[1]
    second.load_state_dict(model.state_dict())
    other = forced_decoder((processor, second), SpeedOptions(attention="sdpa"), device="cuda:1")
    assert ReplicatedDecoder([one, other]).decode(windows, "en") == one.decode(windows, "en")


def test_a_padded_batch_encodes_to_finite_values(loaded, windows):
    # Padded frames are fully masked query rows; an attention kernel that returns NaN for them (transformers < 5.18
    # with eager attention does, on any device) poisons every token through the decoder's cross-attention. The
    # decoder turns such a kernel off and encodes again (TransformersDecoder._encode); this says whether the
    # GPU's default kernel needs that.
    from turnscribe.decoders.projection import encode_projected

    decoder = forced_decoder(loaded, SpeedOptions(attention="sdpa"))
    values, mask = decoder.log_mel([w.samples for w in windows])
    with torch.inference_mode():
        encoded = encode_projected(decoder.model, values.to(torch.bfloat16), mask).last_hidden_state
    assert bool(torch.isfinite(encoded).all()), f"{int((~torch.isfinite(encoded)).sum())} non-finite values"
