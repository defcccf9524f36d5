"""One model on several GPUs of a machine: every batch is split across the copies and decoded on all at once.

`--device cuda:0,cuda:1` (or `cuda:all`) loads a decoder per device; `ReplicatedDecoder` looks like one decoder
whose batch is the sum of theirs, so the scheduler, the pipeline and the server need nothing else. A batch's
windows come sorted by length (the scheduler's buckets), and each copy gets a consecutive share in proportion
to its own batch size, so the shares carry little padding and finish at about the same time.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from .base import Decoder, WindowAudio


def device_list(device: str) -> list[str]:
    """The devices a `--device` value names: one ("auto", "cpu", "cuda:1"), several separated by commas, or
    "cuda:all" for every visible GPU."""
    if device.strip() == "cuda:all":
        import torch

        count = torch.cuda.device_count()
        if not count:
            raise ValueError("--device cuda:all: no CUDA GPU is visible")
        return [f"cuda:{i}" for i in range(count)]
    devices = [d.strip() for d in device.split(",")]
    if not all(devices):
        raise ValueError(f"empty device name in {device!r}")
    if len(set(devices)) != len(devices) and any(d.startswith("cuda") for d in devices):
        raise ValueError(f"a GPU named twice in {device!r}: each copy of the model needs its own")
    return devices


def shares(count: int, weights: Sequence[int]) -> list[int]:
    """`count` split in proportion to `weights` (largest remainders), summing to `count`."""
    total = sum(weights)
    exact = [count * w / total for w in weights]
    sizes = [int(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: exact[i] - sizes[i], reverse=True)
    for i in by_remainder[: count - sum(sizes)]:
        sizes[i] += 1
    return sizes


class ReplicatedDecoder:
    """Decoders of one model on different devices, used as one (see the module docstring).

    The copies run in threads: their GPU work overlaps, while their Python between kernels takes turns on the
    interpreter lock (`--fast` compiles each step into a few graph launches, which leaves little of it)."""

    def __init__(self, replicas: Sequence[Decoder]) -> None:
        if not replicas:
            raise ValueError("ReplicatedDecoder needs at least one decoder")
        self.replicas = list(replicas)
        self.name = self.replicas[0].name
        self.model_id = self.replicas[0].model_id
        self._threads = ThreadPoolExecutor(len(self.replicas), thread_name_prefix="turnscribe-replica")

    @property
    def batch_size(self) -> int:
        return sum(max(1, r.batch_size) for r in self.replicas)

    def decode(self, windows: Sequence[WindowAudio], language: str) -> list[str]:
        sizes = shares(len(windows), [max(1, r.batch_size) for r in self.replicas])
        running, start = [], 0
        for replica, size in zip(self.replicas, sizes, strict=True):
            if size:
                running.append(self._threads.submit(replica.decode, windows[start : start + size], language))
            start += size
        # A failing share raises here, after every share has finished (the scheduler then retries each window).
        results = [future.exception() for future in running]
        if failed := next((e for e in results if e is not None), None):
            raise failed
        return [output for future in running for output in future.result()]
