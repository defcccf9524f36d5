"""One model on several GPUs of a machine: every batch is split across the copies and decoded on all at once.

`--device cuda:0,cuda:1` (or `cuda:all`) loads a decoder per device; `ReplicatedDecoder` looks like one decoder
whose batch is the sum of theirs (`--batch-size` is per copy), so the scheduler, the pipeline and the server need
nothing else. Each copy gets a consecutive share of a batch in proportion to its own batch size; the scheduler
puts windows of similar length together (its length buckets), so the shares carry little padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import wait

from .base import Decoder, WindowAudio
from .threads import OwnThread


def device_list(device: str) -> list[str]:
    """The devices a `--device` value names: one ("auto", "cpu", "cuda:1"), several separated by commas, or
    "cuda:all" for every visible GPU."""
    if device.strip() == "cuda:all":
        import torch

        count = torch.cuda.device_count()
        if not count:
            raise ValueError("device 'cuda:all': no CUDA GPU is visible")
        return [f"cuda:{i}" for i in range(count)]
    devices = [d.strip() for d in device.split(",")]
    if not all(devices):
        raise ValueError(f"empty device name in {device!r}")
    check_distinct(devices)
    return devices


def check_distinct(devices: Sequence[str]) -> None:
    """Each copy of the model needs a GPU of its own (CPU copies share the cores; tests use them)."""
    gpus = ["cuda:0" if d == "cuda" else d for d in devices if d.startswith("cuda")]  # "cuda" is the first GPU
    if len(set(gpus)) != len(gpus):
        raise ValueError(f"a GPU named twice in {', '.join(devices)}: each copy of the model needs its own")


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

    Each copy runs on a thread of its own, always the same one: their GPU work overlaps, while their Python
    between kernels takes turns on the interpreter lock (`--fast` compiles each step into a few graph launches,
    which leaves little of it)."""

    def __init__(self, replicas: Sequence[Decoder]) -> None:
        if not replicas:
            raise ValueError("ReplicatedDecoder needs at least one decoder")
        self.replicas = list(replicas)
        self.name = self.replicas[0].name
        self.model_id = self.replicas[0].model_id
        self._threads = [OwnThread(f"turnscribe-replica-{i}") for i in range(len(self.replicas))]

    @property
    def batch_size(self) -> int:
        return sum(max(1, r.batch_size) for r in self.replicas)

    def decode(self, windows: Sequence[WindowAudio], language: str) -> list[str]:
        sizes = shares(len(windows), [max(1, r.batch_size) for r in self.replicas])
        running, start = [], 0
        for replica, thread, size in zip(self.replicas, self._threads, sizes, strict=True):
            if size:
                running.append(thread.submit(replica.decode, windows[start : start + size], language))
            start += size
        wait(running)  # a failing share raises below only once every share has finished
        return [output for future in running for output in future.result()]
