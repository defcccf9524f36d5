"""Decoder backends by name: what `--backend` and `build_pipeline(backend=...)` choose from."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace

from .base import Decoder
from .replicas import ReplicatedDecoder, check_distinct, device_list


@dataclass(frozen=True)
class DecoderOptions:
    model: str | os.PathLike[str]
    device: str  # one device, or several (replicas.device_list): a copy of the model on each
    batch_size: int | None  # None: sized by the backend (free GPU memory for transformers)
    trust_remote_code: bool = False
    fast: bool = False  # transformers' SpeedOptions.fast; other backends are fast by themselves
    dtype: str = "auto"  # base.DTYPES; vLLM takes the same names


def _transformers(options: DecoderOptions) -> Decoder:
    from .transformers import SpeedOptions, TransformersDecoder

    return TransformersDecoder(
        options.model,
        device=options.device,
        dtype=options.dtype,
        batch_size=options.batch_size,
        trust_remote_code=options.trust_remote_code,
        speed=SpeedOptions.fast(options.device) if options.fast else None,
    )


def _vllm(options: DecoderOptions) -> Decoder:
    # vLLM places the model on its GPU itself: `device` only places the speaker embedder.
    from .vllm import DEFAULT_BATCH_SIZE, VllmDecoder

    return VllmDecoder.from_pretrained(
        options.model,
        batch_size=options.batch_size or DEFAULT_BATCH_SIZE,
        trust_remote_code=options.trust_remote_code,
        dtype=options.dtype,  # vLLM's "auto" is the checkpoint's bfloat16, float16 on GPUs without it
    )


BACKENDS: dict[str, Callable[[DecoderOptions], Decoder]] = {
    "transformers": _transformers,
    "vllm": _vllm,
}


def check_backend(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"Unknown decoder backend {name!r}; choose from {', '.join(BACKENDS)}")
    return name


def load_decoder(backend: str, options: DecoderOptions) -> Decoder:
    """The backend's decoder on `options.device`; on several devices (see `replicas.device_list`) one per device,
    used as one (`ReplicatedDecoder`)."""
    factory = BACKENDS[check_backend(backend)]
    devices = resolve_devices(backend, options.device)
    if len(devices) == 1:
        return factory(replace(options, device=devices[0]))
    return ReplicatedDecoder([factory(replace(options, device=device)) for device in devices])


def resolve_devices(backend: str, device: str) -> list[str]:
    """The devices `device` names for `backend`, resolved ("auto" → "cuda" or "cpu": the backends' options, such
    as SpeedOptions.fast, depend on it) and checked before anything loads (`turnscribe serve` checks at start)."""
    from .transformers import pick_device

    devices = [pick_device(name) for name in device_list(device)]
    check_distinct(devices)  # again once resolved: "auto,cuda:0" names one GPU twice
    if len(devices) > 1 and backend == "vllm":
        raise ValueError(
            "vLLM places the model on its GPUs itself (its data and tensor parallel options): give one device"
        )
    return devices
