"""Log-mel features computed on the model's device (decoders/features.py) are transformers' extractor's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import CohereAsrFeatureExtractor

from turnscribe.decoders import features
from turnscribe.decoders.transformers import TransformersDecoder
from turnscribe.types import SAMPLE_RATE

EXTRACTOR_OPTIONS = {"sampling_rate": SAMPLE_RATE, "return_tensors": "pt", "padding": "longest"}


@pytest.fixture(scope="module")
def extractor() -> CohereAsrFeatureExtractor:
    return CohereAsrFeatureExtractor(dither=0.0)


@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    # The longest clip the extractor takes whole (30 s), and shorter ones padded behind it in the batch.
    rng = np.random.default_rng(0)
    return [(0.1 * rng.standard_normal(round(s * SAMPLE_RATE))).astype(np.float32) for s in (7.5, 30.0, 1.0, 19.3)]


def test_on_the_cpu_the_features_are_the_extractors_exactly(extractor, clips):
    expected = extractor(clips, return_attention_mask=True, **EXTRACTOR_OPTIONS)
    values, mask = features.log_mel(extractor, clips, "cpu")
    assert torch.equal(values, expected["input_features"])
    assert torch.equal(mask, expected["attention_mask"])


def test_every_tensor_lives_on_the_target_device(extractor, clips):
    # The meta device stands in for a GPU: an operation mixing it with a CPU tensor raises, as one mixing CUDA
    # and CPU would. transformers' extractor fails so with device= (a CPU waveform, a window on the device).
    with pytest.raises(RuntimeError, match="same device"):
        extractor(clips, device="meta", **EXTRACTOR_OPTIONS)
    values, mask = features.log_mel(extractor, clips, "meta")
    assert (values.device.type, mask.device.type) == ("meta", "meta")
    assert values.shape == (len(clips), 3001, extractor.feature_size)


def test_longer_clips_than_the_extractor_takes_whole_are_refused(extractor):
    too_long = np.zeros(features.longest_clip_samples(extractor) + 1, dtype=np.float32)
    with pytest.raises(ValueError, match="up to 30 s"):
        features.log_mel(extractor, [too_long], "cpu")


def test_an_extractor_log_mel_cannot_reproduce_is_called_itself(tiny_native, clips):
    decoder = TransformersDecoder(tiny_native, device="cpu")
    extractor = decoder.processor.feature_extractor
    assert extractor.dither == 0.0  # the decoder turns dither off: random noise at inference
    assert features.supports(extractor)
    extractor.dither = 1e-5  # seeded by each clip's length, so the extractor's own output is reproducible
    assert not features.supports(extractor)
    values, mask = decoder.log_mel(clips)
    expected = extractor(clips, return_attention_mask=True, **EXTRACTOR_OPTIONS)
    assert torch.equal(values, expected["input_features"])
    assert not torch.equal(values, features.log_mel(CohereAsrFeatureExtractor(dither=0.0), clips, "cpu")[0])
    assert torch.equal(mask, expected["attention_mask"])
