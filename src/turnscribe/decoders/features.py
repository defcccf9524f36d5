"""Log-mel features for a batch of windows, computed on the device the model runs on.

transformers' `CohereAsrFeatureExtractor.__call__` takes a `device=` for its spectrogram, but it pads the batch
through NumPy on the CPU and never moves the padded waveform: with `device="cuda"` its `torch.stft` gets a CPU
waveform and a CUDA window and raises. On the CPU its padding and tensor conversions alone cost ~1.5 s per hour
of audio. `log_mel` pads into one array, moves it to the device once, and runs the extractor's own spectrogram
(`_torch_extract_fbank_features`) there; the preemphasis before it and the per-window normalisation after it
follow `__call__` step for step, so on the CPU the features are the extractor's exactly (tests/test_features.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..types import SAMPLE_RATE

NORMALISATION_EPSILON = 1e-5  # the extractor's EPSILON, added to each mel bin's standard deviation


def supports(extractor: Any) -> bool:
    """Whether `log_mel` computes what `extractor` would: transformers' Cohere ASR extractor, without dither
    (TransformersDecoder turns it off: random noise at inference), with the spectrogram method it reuses."""
    try:
        from transformers import CohereAsrFeatureExtractor
    except ImportError:
        return False
    return (
        isinstance(extractor, CohereAsrFeatureExtractor)
        and callable(getattr(extractor, "_torch_extract_fbank_features", None))
        and not getattr(extractor, "dither", 0.0)
    )


def longest_clip_samples(extractor: Any) -> int:
    """Longer clips the extractor would split into chunks (its long-form path), which `log_mel` does not do."""
    seconds = max(0.0, extractor.max_audio_clip_s - extractor.overlap_chunk_second)
    return int(seconds * SAMPLE_RATE)


def log_mel(extractor: Any, clips: Sequence[np.ndarray], device: Any) -> tuple[Any, Any]:
    """(input_features, attention_mask) on `device` for 16 kHz mono float32 clips, padded on the right to
    the longest: what `extractor(clips, sampling_rate=16000, return_tensors="pt", padding="longest",
    return_attention_mask=True)` returns. See the module docstring for why it is not called."""
    import torch

    if not clips:
        raise ValueError("log_mel needs at least one clip")
    lengths = [len(c) for c in clips]
    if max(lengths) > longest_clip_samples(extractor):
        raise ValueError(f"clips of up to {longest_clip_samples(extractor) / SAMPLE_RATE:.0f} s only")
    padded = np.zeros((len(clips), max(lengths)), dtype=np.float32)
    for row, clip in zip(padded, clips, strict=True):
        row[: len(clip)] = clip
    waveform = torch.from_numpy(padded).to(device)
    audio_lengths = torch.tensor(lengths, device=device)
    if extractor.preemphasis is not None:
        inside = torch.arange(waveform.shape[1], device=device)[None, :] < audio_lengths[:, None]
        emphasised = waveform[:, 1:] - extractor.preemphasis * waveform[:, :-1]
        waveform = torch.cat([waveform[:, :1], emphasised], dim=1).masked_fill(~inside, 0.0)
    features = extractor._torch_extract_fbank_features(waveform, device)
    frame_counts = torch.floor_divide(audio_lengths + extractor.n_fft // 2 * 2 - extractor.n_fft, extractor.hop_length)
    attention_mask = torch.arange(features.shape[1], device=device)[None, :] < frame_counts[:, None]
    # Each window's mel bins to zero mean and unit variance over its own frames, padding excluded.
    mask = attention_mask.unsqueeze(-1)
    masked = features * mask
    mean = (masked.sum(dim=1) / frame_counts.unsqueeze(-1)).unsqueeze(1)
    variance = ((masked - mean) ** 2 * mask).sum(dim=1) / (frame_counts - 1).unsqueeze(-1)
    features = (features - mean) / (torch.sqrt(variance).unsqueeze(1) + NORMALISATION_EPSILON)
    features *= mask
    return features, attention_mask
