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
Embedder = Annotated[str, typer.Option(help="Speaker embedder: resemblyzer or redimnet2.")]
Backend = Annotated[str, typer.Option(help=f"Decoder backend: {', '.join(BACKENDS)}.")]
TrustRemoteCode = Annotated[
    bool, typer.Option(help="Load the checkpoint with its own code instead of native transformers classes.")
]
