"""`turnscribe eval`: score a hypothesis file against a reference file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from .conventions import DEFAULT_NORMALIZER, TCP_COLLAR

if TYPE_CHECKING:
    from .metrics import EvaluationResult

OUTPUTS = ("table", "json")


def result_table(result: EvaluationResult) -> Table:
    table = Table(
        title=f"{len(result.sessions)} session(s), {result.ref_speakers} reference / "
        f"{result.hyp_speakers} hypothesis speaker(s)"
    )
    for column in ("metric", "collar", "value", "details"):
        table.add_column(column, justify="right" if column == "value" else "left")
    for d in result.diarization:
        details = f"missed {d.missed:.2f}s  false alarm {d.false_alarm:.2f}s  confusion {d.confusion:.2f}s"
        table.add_row("DER", f"{d.collar:g}s", f"{100 * d.der:.2f}%", f"{details}  of {d.total:.2f}s")
        table.add_row("JER", f"{d.collar:g}s", f"{100 * d.jer:.2f}%", "")
    for w in result.word_errors:
        details = (
            f"{w.errors}/{w.length} words: sub {w.substitutions} del {w.deletions} ins {w.insertions}; "
            f"speakers missed {w.missed_speakers} extra {w.false_alarm_speakers}"
        )
        collar = "" if w.collar is None else f"{w.collar:g}s"
        table.add_row(w.metric, collar, f"{100 * w.error_rate:.2f}%", details)
    return table


def eval_command(
    ref: Annotated[Path, typer.Option("--ref", help="Reference: RTTM, STM or SegLST (.rttm, .stm, .json).")],
    hyp: Annotated[Path, typer.Option("--hyp", help="Hypothesis in one of the same formats.")],
    uem: Annotated[
        Path | None,
        typer.Option("--uem", help="Score only these spans: a UEM file (<recording> <channel> <start> <end>)."),
    ] = None,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Also write the scores as JSON to this file.")
    ] = None,
    output: Annotated[str, typer.Option("--format", help="What to print: table or json.")] = "table",
    tcp_collar: Annotated[float, typer.Option(min=0.0, help="tcpWER collar in seconds.")] = TCP_COLLAR,
    normalizer: Annotated[
        str, typer.Option(help="meeteval text normalizer applied before WER, or 'none'.")
    ] = DEFAULT_NORMALIZER,
) -> None:
    """Score HYP against REF: DER and JER (collar 0 and 0.25 s, overlap scored), cpWER and tcpWER."""
    from .metrics import EvaluationError, evaluate

    if output not in OUTPUTS:
        raise typer.BadParameter(f"choose one of {', '.join(OUTPUTS)}", param_hint="--format")
    try:
        result = evaluate(
            ref, hyp, tcp_collar=tcp_collar, normalizer=None if normalizer == "none" else normalizer, uem=uem
        )
    except (EvaluationError, ValueError) as exc:  # meeteval rejects an unknown normalizer with ValueError
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    data = json.dumps(result.to_dict(), indent=2) + "\n"
    if json_path is not None:
        try:
            json_path.write_text(data, encoding="utf-8")
        except OSError as exc:
            typer.echo(f"error: --json {json_path}: {exc.strerror or exc}", err=True)
            raise typer.Exit(2) from None
    if output == "json":
        typer.echo(data, nl=False)
        return
    console = Console()
    console.print(result_table(result))
    for note in result.notes:
        console.print(f"note: {note}")
