"""Command-line options that `transcribe`, `serve` and `bench` share: one wording, one default."""

from __future__ import annotations

from typing import Annotated

import typer

from .decoders.backends import BACKENDS

Device = Annotated[
    str,
    typer.Option(help="auto, cpu, cuda or cuda:N; several (a copy of the model on each): cuda:0,cuda:1 or cuda:all."),
]
BatchSize = Annotated[
    int,
    typer.Option(
        min=0,
        help="Windows per generate() call (per GPU with several); 0: as many as fit in free GPU memory (4 on the CPU).",
    ),
]
Fast = Annotated[
    bool,
    typer.Option(help="Speed-ups that keep the same output: SDPA; on CUDA a static cache and a compiled step."),
]
Dtype = Annotated[
    str,
    typer.Option(
        help="Model precision: auto (bfloat16 on GPUs from Ampere on, float16 on older ones, float32 on the CPU), "
        "bfloat16, float16 or float32."
    ),
]
Embedder = Annotated[str, typer.Option(help="Speaker embedder: resemblyzer or redimnet2.")]
Backend = Annotated[str, typer.Option(help=f"Decoder backend: {', '.join(BACKENDS)}.")]
TrustRemoteCode = Annotated[
    bool, typer.Option(help="Load the checkpoint with its own code instead of native transformers classes.")
]
EmbedderOptions = Annotated[
    list[str] | None, typer.Option(help="KEY=VALUE passed to the embedder (e.g. hub_dir=PATH); repeatable.")
]


def key_value(item: str, option: str, form: str = "KEY=VALUE") -> tuple[str, str]:
    """`item` split at its first '=', both sides stripped; the key (stripped) may not be empty."""
    key, sep, value = (part.strip() for part in item.partition("="))
    if not sep or not key:
        raise typer.BadParameter(f"expected {form}, got {item!r}", param_hint=option)
    return key, value


def embedder_options(values: list[str] | None) -> dict[str, str]:
    return dict(key_value(item, "--embedder-option") for item in values or [])
