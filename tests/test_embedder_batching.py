"""Embedders batch many clips per forward pass: same vectors as clip by clip, grouped as intended, device "auto"."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_speakers import write_hub

from turnscribe.speakers import EmbedderError, load_embedder
from turnscribe.speakers.embedders import length_buckets, resolve_device
from turnscribe.types import SAMPLE_RATE


def voice_like(seconds: float, pitch: float, seed: int) -> np.ndarray:
    """A buzz with harmonics under a slow random envelope, plus a little noise: clips of one `pitch` sound alike."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    buzz = sum(np.sin(2 * np.pi * pitch * k * t) / k for k in range(1, 6))
    envelope = 0.5 + 0.5 * np.abs(np.sin(2 * np.pi * rng.uniform(2, 5) * t + rng.uniform(0, np.pi)))
    return (0.1 * buzz * envelope + 0.005 * rng.normal(size=len(t))).astype(np.float32)


# Lengths from far below one resemblyzer partial (1.6 s) to several, and empty: every path of the batching.
CLIPS = [
    voice_like(seconds, pitch, seed)
    for seed, (seconds, pitch) in enumerate(
        [(2.0, 120), (0.3, 210), (5.3, 120), (2.1, 210), (1.0, 330), (7.9, 330), (2.05, 120), (0.05, 210)]
    )
] + [np.zeros(0, np.float32)]


def most_passes_at_once(embedder: Any, module: torch.nn.Module, monkeypatch: pytest.MonkeyPatch) -> int:
    """The most forward passes of `module` that ran at once while 4 threads embedded CLIPS; each thread's result
    must equal one call alone. (The files in flight embed from their own threads; on a GPU concurrent passes
    would only multiply memory.)"""
    alone = embedder.embed(CLIPS)
    lock, inside, most = threading.Lock(), [0], [0]
    forward = module.forward

    def counting(x: torch.Tensor) -> torch.Tensor:
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        time.sleep(0.01)  # long enough for another thread to come in, were it let
        try:
            return forward(x)
        finally:
            with lock:
                inside[0] -= 1

    monkeypatch.setattr(module, "forward", counting)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: embedder.embed(CLIPS), range(4)))
    for result in results:
        np.testing.assert_allclose(result, alone, atol=1e-6)
    return most[0]


def forward_batches(module: torch.nn.Module, monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    """Record the input shape of every forward pass of `module`."""
    shapes: list[tuple[int, ...]] = []
    forward = module.forward

    def recording(x: torch.Tensor) -> torch.Tensor:
        shapes.append(tuple(x.shape))
        return forward(x)

    monkeypatch.setattr(module, "forward", recording)
    return shapes


# --- grouping ---------------------------------------------------------------------------------------------------


def test_length_buckets_group_similar_lengths_within_the_budget() -> None:
    lengths = [100, 950, 105, 1000, 300, 109, 111, 5000, 990, 325]
    groups = length_buckets(lengths, stretch=1.1, max_samples=3000)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))  # every clip exactly once
    assert groups == [[0, 2, 5], [6], [4, 9], [1, 8, 3], [7]]
    for group in groups:
        longest, shortest = max(lengths[i] for i in group), min(lengths[i] for i in group)
        assert longest <= 1.1 * shortest
        assert len(group) == 1 or len(group) * longest <= 3000
    # The budget splits a run of equal lengths; a single clip over it still gets its own pass.
    assert length_buckets([1000] * 5, stretch=1.0, max_samples=2500) == [[0, 1], [2, 3], [4]]
    assert length_buckets([], stretch=1.5, max_samples=10) == []


# --- ReDimNet2 (the tiny stand-in of tests/test_speakers.py) ----------------------------------------------------


def test_redimnet2_batches_by_length_and_matches_clip_by_clip(tmp_path: Path, monkeypatch) -> None:
    embedder = load_embedder("redimnet2", device="cpu", hub_dir=str(write_hub(tmp_path / "hub")))
    one_by_one = np.concatenate([embedder.embed([clip]) for clip in CLIPS])
    shapes = forward_batches(embedder._model, monkeypatch)
    batched = embedder.embed(CLIPS)

    # Lengths after tiling short clips to 0.5 s: 2.0, 0.5, 5.3, 2.1, 1.0, 7.9, 2.05, 0.5, 0.5 s.
    lengths = [max(len(c), embedder.min_samples) for c in CLIPS]
    groups = length_buckets(lengths, stretch=embedder.max_stretch, max_samples=embedder.batch_samples)
    assert [len(g) for g in groups] == [3, 1, 3, 1, 1]  # 0.5 s ×3 | 1.0 | 2.0, 2.05, 2.1 | 5.3 | 7.9
    assert shapes == [(len(g), max(lengths[i] for i in g)) for g in groups]
    assert batched.shape == one_by_one.shape
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, rtol=1e-5)
    # Tiling a clip by up to 5 % moves its vector (cosine) by less than two clips of one pitch differ (here
    # ≥ 4e-5; other pitches are ≥ 0.3 apart): a clip given another clip's row would fail this.
    assert np.max(1 - np.sum(batched * one_by_one, axis=1)) < 1e-5
    assert 1 - one_by_one[0] @ one_by_one[6] > 2e-5


def test_redimnet2_callers_in_many_threads_take_turns_for_the_device(tmp_path: Path, monkeypatch) -> None:
    embedder = load_embedder("redimnet2", device="cpu", hub_dir=str(write_hub(tmp_path / "hub")))
    assert most_passes_at_once(embedder, embedder._model, monkeypatch) == 1


def test_redimnet2_batch_options_from_the_command_line(tmp_path: Path) -> None:
    hub = str(write_hub(tmp_path / "hub"))
    # --embedder-option values arrive as strings and take the type of the option's default.
    embedder = load_embedder("redimnet2", device="cpu", hub_dir=hub, batch_seconds="3", max_stretch="1")
    assert embedder.batch_samples == 3 * SAMPLE_RATE and embedder.max_stretch == 1.0
    with pytest.raises(EmbedderError, match="batch_seconds='lots' must be a float"):
        load_embedder("redimnet2", hub_dir=hub, batch_seconds="lots")
    with pytest.raises(EmbedderError, match="max_stretch >= 1"):
        load_embedder("redimnet2", hub_dir=hub, max_stretch=0.5)
    # NaN passed the check (batch_seconds: a ValueError from round(); max_stretch: no batching at all), inf
    # ended in an OverflowError.
    for option in ({"batch_seconds": "nan"}, {"batch_seconds": "inf"}, {"max_stretch": "nan"}):
        with pytest.raises(EmbedderError, match="need finite batch_seconds > 0 and max_stretch >= 1"):
            load_embedder("redimnet2", hub_dir=hub, **option)


# --- resemblyzer ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resemblyzer():
    return load_embedder("resemblyzer", device="cpu")


def test_resemblyzer_batches_partials_across_clips_and_matches_embed_utterance(resemblyzer, monkeypatch) -> None:
    encoder = resemblyzer._encoder
    utterance = np.stack([encoder.embed_utterance(resemblyzer._prepare(clip)) for clip in CLIPS])
    partials = [len(resemblyzer._cut(clip)[1]) for clip in CLIPS]
    # 1.6 s partials every 0.77 s, the last kept when 75 % covered; at least one (the empty clip too).
    assert partials == [2, 1, 6, 2, 1, 9, 2, 1, 1]

    monkeypatch.setattr(resemblyzer, "batch_partials", 4)
    shapes = forward_batches(encoder, monkeypatch)
    batched = resemblyzer.embed(CLIPS)
    # A pass goes as soon as 4 partials wait, whole clips only: 2+1+6 | 2+1+9 | 2+1+1.
    assert [s[0] for s in shapes] == [9, 12, 4]
    assert all(s[1:] == (160, 40) for s in shapes)
    np.testing.assert_allclose(batched, utterance, atol=1e-5)

    monkeypatch.setattr(resemblyzer, "batch_partials", 256)
    shapes.clear()
    np.testing.assert_allclose(resemblyzer.embed(CLIPS), utterance, atol=1e-5)
    assert shapes == [(sum(partials), 160, 40)]  # everything in one pass


@pytest.mark.filterwarnings("ignore:n_fft=400 is too large:UserWarning")  # librosa, on the shortest clips
def test_resemblyzer_mel_front_end_equals_librosa(resemblyzer) -> None:
    # The torch front end (runs on the encoder's device) against resemblyzer's own librosa one, on clips of every
    # length including ones shorter than one FFT frame; relative to each clip's peak, float32 rounding only.
    from resemblyzer.audio import wav_to_mel_spectrogram

    wavs = [resemblyzer._prepare(clip) for clip in CLIPS + [CLIPS[0][:100]]]
    together, rows = resemblyzer.spectrogram(wavs)  # one STFT for all clips, as on a GPU
    for wav, row in zip(wavs, rows):
        expected = wav_to_mel_spectrogram(wav)
        alone = resemblyzer.spectrogram([wav])[0][: len(expected)].numpy()
        tolerance = 1e-5 * max(float(expected.max()), 1e-12)
        np.testing.assert_allclose(alone, expected, atol=tolerance)
        np.testing.assert_allclose(together[row : row + len(expected)].numpy(), expected, atol=tolerance)


def test_resemblyzer_partials_of_many_clips_at_once_equal_clip_by_clip(resemblyzer, monkeypatch) -> None:
    cuts = [resemblyzer._cut(clip) for clip in CLIPS]
    assert resemblyzer.spectrogram_per_clip  # on the CPU: cache-sized arrays
    per_clip = resemblyzer.partials(cuts)
    monkeypatch.setattr(resemblyzer, "spectrogram_per_clip", False)  # what a GPU does
    at_once = resemblyzer.partials(cuts)
    assert per_clip.shape == at_once.shape == (sum(len(starts) for _, starts in cuts), 160, 40)
    torch.testing.assert_close(at_once, per_clip, rtol=1e-5, atol=1e-6 * float(per_clip.max()))


def test_resemblyzer_embeds_denormal_silence(resemblyzer) -> None:
    # What silence looks like after evaluation.oracle.tag_speakers: zeros with their lowest mantissa bits set.
    dust = np.full(SAMPLE_RATE, 3, np.uint32).view(np.float32)
    vectors = resemblyzer.embed([dust, CLIPS[0]])
    assert np.all(np.isfinite(vectors))


def test_resemblyzer_rejects_an_empty_batch_size() -> None:
    with pytest.raises(EmbedderError, match="batch_partials"):
        load_embedder("resemblyzer", device="cpu", batch_partials="-1")


# --- device -----------------------------------------------------------------------------------------------------


def test_auto_device_is_cuda_when_torch_sees_a_gpu(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    assert load_embedder("resemblyzer").device == "cpu"  # "auto" is the default
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda"
    assert resolve_device("cuda:1") == "cuda:1" and resolve_device("cpu") == "cpu"


def test_resemblyzer_callers_in_many_threads_take_turns_for_the_device(resemblyzer, monkeypatch) -> None:
    monkeypatch.setattr(resemblyzer, "batch_partials", 4)  # several passes per call
    assert most_passes_at_once(resemblyzer, resemblyzer._encoder, monkeypatch) == 1
