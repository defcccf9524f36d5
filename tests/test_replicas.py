"""One model on several devices (decoders/replicas.py): batches split across the copies, decoded at once."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from turnscribe import build_pipeline
from turnscribe.decoders import ScriptedDecoder
from turnscribe.decoders.base import WindowAudio
from turnscribe.decoders.replicas import ReplicatedDecoder, device_list, shares
from turnscribe.decoders.transformers import TransformersDecoder
from turnscribe.types import SAMPLE_RATE, WindowSpan

TIMEOUT = 30


def windows(count: int) -> list[WindowAudio]:
    return [WindowAudio(WindowSpan(i, 0, SAMPLE_RATE), np.zeros(SAMPLE_RATE, np.float32)) for i in range(count)]


class Recording(ScriptedDecoder):
    """Answers with the window's index; records the windows it got; waits for its peers inside decode."""

    def __init__(self, batch_size: int, together: threading.Barrier | None = None) -> None:
        super().__init__(lambda span: f"window {span.index}", batch_size=batch_size)
        self.together, self.got = together, []

    def decode(self, batch, language):
        self.got.append([w.span.index for w in batch])
        if self.together:
            self.together.wait()  # broken (and raising) unless every copy decodes at the same time
        return super().decode(batch, language)


def test_device_lists():
    assert device_list("auto") == ["auto"]
    assert device_list("cuda:0, cuda:1") == ["cuda:0", "cuda:1"]
    assert device_list("cpu,cpu") == ["cpu", "cpu"]  # CPU copies share the cores (tests use them)
    with pytest.raises(ValueError, match="named twice"):
        device_list("cuda:0,cuda:0")
    with pytest.raises(ValueError, match="named twice"):
        device_list("cuda,cuda:0")  # "cuda" is the first GPU
    with pytest.raises(ValueError, match="empty device"):
        device_list("cuda:0,")


def test_cuda_all_is_every_visible_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    assert device_list("cuda:all") == ["cuda:0", "cuda:1", "cuda:2"]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(ValueError, match="no CUDA GPU"):
        device_list("cuda:all")


@pytest.mark.parametrize(
    ("count", "weights", "expected"), [(8, [3, 1], [6, 2]), (5, [2, 2], [3, 2]), (1, [1, 4], [0, 1])]
)
def test_shares_follow_the_batch_sizes(count, weights, expected):
    assert shares(count, weights) == expected


def test_a_batch_is_split_across_the_copies_and_decoded_on_all_at_once():
    together = threading.Barrier(2, timeout=TIMEOUT)
    big, small = Recording(3, together), Recording(1, together)
    decoder = ReplicatedDecoder([big, small])
    assert decoder.batch_size == 4
    assert decoder.decode(windows(8), "en") == [f"window {i}" for i in range(8)]
    assert (big.got, small.got) == ([[0, 1, 2, 3, 4, 5]], [[6, 7]])


def test_a_failing_copy_fails_the_batch_after_the_others_finish():
    class Broken(Recording):
        def decode(self, batch, language):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")

    healthy = Recording(2)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        ReplicatedDecoder([healthy, Broken(2)]).decode(windows(4), "en")
    assert healthy.got == [[0, 1]]


def test_build_pipeline_loads_a_copy_per_device(tiny_native):
    pipeline = build_pipeline(model=str(tiny_native), device="cpu,cpu", batch_size=2)
    decoder = pipeline.decoder
    assert isinstance(decoder, ReplicatedDecoder) and len(decoder.replicas) == 2
    assert all(isinstance(r, TransformersDecoder) for r in decoder.replicas)
    assert decoder.replicas[0].model is not decoder.replicas[1].model
    single = TransformersDecoder(tiny_native, device="cpu", batch_size=4, max_new_tokens=20)
    for replica in decoder.replicas:
        replica.max_new_tokens = 20
    tone = (0.1 * np.sin(np.arange(3 * SAMPLE_RATE) / 50)).astype(np.float32)
    clips = [WindowAudio(WindowSpan(i, 0, len(tone)), tone * (i + 1)) for i in range(4)]
    assert decoder.decode(clips, "en") == single.decode(clips, "en")


def test_vllm_takes_one_device():
    with pytest.raises(ValueError, match="vLLM places the model"):
        build_pipeline(model="unused", device="cpu,cpu", backend="vllm")


def test_auto_is_resolved_before_the_backend_sees_the_device(monkeypatch):
    # --fast picks CUDA-only speed-ups from the device name: "auto" must reach the backend as "cuda".
    from turnscribe.decoders import backends

    seen = []
    monkeypatch.setitem(backends.BACKENDS, "transformers", lambda options: seen.append(options) or Recording(4))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    backends.load_decoder("transformers", backends.DecoderOptions("m", "auto", None, fast=True))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    backends.load_decoder("transformers", backends.DecoderOptions("m", "auto", None, fast=True))
    assert [o.device for o in seen] == ["cuda", "cpu"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(ValueError, match="named twice"):
        backends.load_decoder("transformers", backends.DecoderOptions("m", "auto,cuda:0", None))
