"""`turnscribe` command line: a thin shell over turnscribe.build_pipeline / Pipeline.run."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from . import DEFAULT_EMBEDDER, DEFAULT_MODEL, __version__, build_pipeline
from . import cli_options as options
from .bench import bench_command
from .evaluation.cli import eval_command
from .formats import extension, format_names, render, write
from .pipeline import ProgressEvent
from .prompt import LANGUAGES, check_language
from .scheduler import run_many
from .server.cli import serve
from .speakers.names import SpeakerNameError, check_speaker_names
from .train.cli import register as register_training
from .types import TurnscribeError
from .windows import DEFAULT_OVERLAP_S, DEFAULT_WINDOW_S, check_window

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Who spoke when, and what they said.")
console = Console(stderr=True)
DEFAULT_FORMATS = "txt,json"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"turnscribe {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log what the pipeline does.")] = False,
) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s")


@app.command("fix-checkpoint")
def fix_checkpoint(
    directory: Annotated[Path, typer.Argument(help="A downloaded checkpoint in the original layout.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would change.")] = False,
) -> None:
    """Apply the model card's edits that let vLLM serve an original-layout checkpoint (idempotent)."""
    from .checkpoint import CheckpointError, fix_for_vllm

    try:
        fixes = fix_for_vllm(directory, dry_run=dry_run)
    except CheckpointError as e:
        console.print(f"[red]error[/red] {escape(str(e))}")
        raise typer.Exit(2) from e
    for fix in fixes:
        typer.echo(f"{'would ' if dry_run else ''}{fix.file}: {fix.change}")
    if not fixes:
        typer.echo(f"{directory}: nothing to change")


@app.command()
def languages() -> None:
    """List the language codes the model transcribes."""
    for code, name in LANGUAGES.items():
        typer.echo(f"{code}\t{name}")


def _parse_shard(shard: str) -> tuple[int, None, int]:
    """'INDEX/COUNT' as the slice (INDEX, None, COUNT) of the file list."""
    index, sep, count = shard.partition("/")
    if not (sep and index.strip().isdigit() and count.strip().isdigit() and int(index) < int(count)):
        raise typer.BadParameter(f"expected INDEX/COUNT with 0 <= INDEX < COUNT, got {shard!r}", param_hint="--shard")
    return int(index), None, int(count)


def _parse_formats(value: str) -> list[str]:
    names = format_names()
    given = list(dict.fromkeys(f.strip() for f in value.split(",") if f.strip()))  # each format written once
    unknown = [f for f in given if f not in [*names, "all"]]
    if unknown or not given:
        raise typer.BadParameter(
            f"unknown format {', '.join(map(repr, unknown)) or repr(value)}; choose from {', '.join(names)}, all"
        )
    # 'all' among others ('all,srt') is all: it was refused as unknown by an error that listed it as valid.
    return names if "all" in given else given


def _parse_speakers(values: list[str]) -> dict[str, str]:
    """NAME=FILE pairs as name → file, the names checked (and stripped) as the library checks them."""
    pairs = [options.key_value(item, "--speaker", "NAME=FILE") for item in values]
    try:
        names = check_speaker_names(name for name, _ in pairs)
    except SpeakerNameError as e:
        raise typer.BadParameter(str(e), param_hint="--speaker") from e
    return dict(zip(names, (file for _, file in pairs), strict=True))


def _is_input(path: Path) -> bool:
    """Anything that exists and is no directory: a pipe (`<(cat f.wav)`) or a device too, not only a regular file;
    the audio loader says what is wrong with the rest."""
    return path.exists() and not path.is_dir()


def _report(label: str, style: str, path: Path, message: str) -> None:
    """One line about one input. Paths and messages are printed as they are, not read as Rich markup: a file
    named '[final].wav' would lose its brackets and one named 'a[/]b.wav' would raise."""
    console.print(f"[{style}]{label}[/{style}] {escape(f'{path}: {message}')}")


def _to_stdout(text: str) -> None:
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader left (`| head`): point stdout at /dev/null, as Python's docs advise, so that the flush at exit
        # does not end the run in a second BrokenPipeError traceback; the run reports the file as failed.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise OSError("stdout was closed before the transcript was written") from None


def _repeated(names: Iterable[str]) -> list[str]:
    """The names that occur more than once, sorted."""
    return sorted(name for name, count in Counter(names).items() if count > 1)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def _prepare_output_dir(output_dir: Path) -> None:
    """Create `output_dir` and check that a file can be written there: better to stop now, before the model is loaded,
    than after hours of transcription whose outputs cannot be saved."""
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=output_dir):
            pass
    except OSError as e:
        message = f"--output-dir {output_dir}: cannot write files there ({e.strerror or e})"
        console.print(f"[red]error[/red] {escape(message)}")
        raise typer.Exit(2) from e


@contextlib.contextmanager
def _interrupted(summary: Callable[[], str]) -> Iterator[None]:
    """Ctrl-C ends the command with what was done and the shell's status for SIGINT (130), not a traceback."""
    try:
        yield
    except KeyboardInterrupt:
        console.print(f"[yellow]interrupted[/yellow]: {summary()}; the others were not written")
        raise typer.Exit(130) from None


@app.command()
def transcribe(
    files: Annotated[list[Path], typer.Argument(help="Audio or video files, any format FFmpeg reads.")],
    model: Annotated[str, typer.Option(help="Hub id or local folder of the checkpoint.")] = DEFAULT_MODEL,
    language: Annotated[
        str, typer.Option("--language", "-l", help="Spoken language (see `turnscribe languages`).")
    ] = "en",
    format: Annotated[
        str, typer.Option("--format", "-f", help="Comma-separated output formats, or 'all'.")
    ] = DEFAULT_FORMATS,
    output_dir: Annotated[Path, typer.Option("--output-dir", "-o", help="Where to write the outputs.")] = Path("."),
    num_speakers: Annotated[int | None, typer.Option(min=1, help="Exact number of speakers, if known.")] = None,
    min_speakers: Annotated[int | None, typer.Option(min=1, help="At least this many speakers.")] = None,
    max_speakers: Annotated[int | None, typer.Option(min=1, help="At most this many speakers.")] = None,
    threshold: Annotated[
        float | None,
        typer.Option(help="Clustering threshold (default: calibrated per recording; baseline: the embedder's)."),
    ] = None,
    linker: Annotated[
        str, typer.Option(help="Speaker linking: slots (default) or baseline (the model card's recipe).")
    ] = "slots",
    speaker: Annotated[list[str] | None, typer.Option(help="A known speaker, NAME=reference.wav; repeatable.")] = None,
    embedder: options.Embedder = DEFAULT_EMBEDDER,
    embedder_option: options.EmbedderOptions = None,
    device: options.Device = "auto",
    batch_size: options.BatchSize = 0,
    fast: options.Fast = False,
    dtype: options.Dtype = "auto",
    window: Annotated[float, typer.Option(help="Window length in seconds (at most 30).")] = DEFAULT_WINDOW_S,
    overlap: Annotated[float, typer.Option(help="Overlap between windows in seconds.")] = DEFAULT_OVERLAP_S,
    trust_remote_code: options.TrustRemoteCode = False,
    backend: options.Backend = "transformers",
    files_at_once: Annotated[
        int,
        typer.Option(
            min=0, help="Files transcribed at once (their windows share the model's batches); 0: enough to fill them."
        ),
    ] = 0,
    audio_processes: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Processes decoding audio ahead of the files in flight, a long file in pieces across them "
            "(default on Linux: one per core, up to 16).",
        ),
    ] = None,
    shard: Annotated[
        str | None,
        typer.Option(
            metavar="INDEX/COUNT",
            help="Only every COUNT-th of FILES, from position INDEX (0-based): one of COUNT jobs given the same list.",
        ),
    ] = None,
    skip_existing: Annotated[
        bool, typer.Option(help="Skip a file whose every requested output already exists in --output-dir (resume).")
    ] = False,
) -> None:
    """Transcribe FILES with speaker labels and write the chosen formats to --output-dir."""
    formats = _parse_formats(format)
    known_speakers = _parse_speakers(speaker or [])
    try:
        check_language(language)
        check_window(window, overlap)
    except TurnscribeError as e:
        raise typer.BadParameter(str(e)) from e

    def output(path: Path, fmt: str) -> Path:
        return output_dir / f"{path.stem}{extension(fmt)}"

    first_names: dict[tuple[Path, str], Path] = {}
    for f in files:  # one recording named twice (a glob and its own name; a.wav and ./a.wav) is transcribed once
        # By its stem too: a link of another name to it (corpora link recordings under their ids) has outputs of
        # its own.
        first_names.setdefault((f.resolve(), f.stem), f)
    files = list(first_names.values())
    # `-o -`: the one transcript goes to stdout (progress and reports: stderr). Checked once the duplicates are
    # dropped: `-o - a.wav ./a.wav` names one file.
    to_stdout = str(output_dir) == "-"
    if to_stdout and (len(files) != 1 or len(formats) != 1 or skip_existing):
        raise typer.BadParameter(
            "-o - writes one file's transcript in one format: give one file and one -f", param_hint="-o"
        )

    # Outputs are named <stem>.<ext>: one file's transcript would overwrite another's (also across shards) where two
    # inputs share a stem, or where a stem is another's plus a format's ending ('a.wav' and 'a.diarized.wav' both
    # write a.diarized.json, as diarized_json and as json).
    inputs = [f for f in files if _is_input(f)]
    if clashes := _repeated(f.stem for f in inputs):
        raise typer.BadParameter(f"several inputs are named {', '.join(clashes)}; give each its own --output-dir run")
    if clashes := _repeated(output(f, fmt).name for f in inputs for fmt in formats):
        raise typer.BadParameter(f"several inputs would write {', '.join(clashes)}; give each its own --output-dir run")
    if shard:
        given, files = len(files), files[slice(*_parse_shard(shard))]
        if not files:  # a job array with more jobs than files: nothing for this one, and that is no failure
            console.print(f"shard {shard}: none of the {given} files falls to it")
            return
    missing = [f for f in files if not _is_input(f)]
    for f in missing:
        _report("error", "red", f, "is a directory" if f.is_dir() else "no such file")
    todo = [f for f in files if _is_input(f)]
    if skip_existing:
        done = [f for f in todo if all(output(f, fmt).exists() for fmt in formats)]
        for f in done:
            _report("skipped", "dim", f, "its outputs exist")
        skipped = set(done)  # a search of the list for each file took minutes on a list of 20,000
        todo = [f for f in todo if f not in skipped]
        if not todo and not missing:
            return
    if not todo:
        raise typer.Exit(1)
    attempted = len(todo) + len(missing)
    if not to_stdout:
        _prepare_output_dir(output_dir)
    try:
        with console.status(f"Loading {escape(model)} …"):
            pipeline = build_pipeline(
                model=model,
                embedder=embedder,
                embedder_options=options.embedder_options(embedder_option),
                threshold=threshold,
                num_speakers=num_speakers,
                min_speakers=min_speakers,
                max_speakers=max_speakers,
                linker=linker,
                known_speakers=known_speakers,
                device=device,
                batch_size=batch_size or None,
                window_s=window,
                overlap_s=overlap,
                trust_remote_code=trust_remote_code,
                backend=backend,
                fast=fast,
                dtype=dtype,
            )
    except (TurnscribeError, ValueError) as e:
        console.print(f"[red]error[/red] {escape(str(e))}")
        raise typer.Exit(2) from e

    failed = len(missing)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as bar:
        files_task = bar.add_task("files", total=len(todo))
        window_tasks: dict[str, TaskID] = {}
        lock = threading.Lock()  # files run in worker threads; their windows share the model's batches

        def on_progress(event: ProgressEvent) -> None:
            if event.kind == "window" and event.source is not None:
                with lock:
                    if event.source not in window_tasks:
                        name = escape(Path(event.source).name)
                        window_tasks[event.source] = bar.add_task(f"  {name}", total=event.total)
                    bar.update(window_tasks[event.source], completed=event.done, total=event.total)

        results = run_many(
            pipeline,
            todo,
            language=language,
            files_at_once=files_at_once or None,
            audio_processes=audio_processes,
            progress=on_progress,
        )
        finished = 0
        # Closed at once on Ctrl-C, so that the files in flight stop rather than run to the end for nobody.
        with _interrupted(lambda: f"{finished} of {len(todo)} files finished"), contextlib.closing(results):
            for result in results:
                path = todo[result.index]
                try:
                    if result.error is not None:
                        raise result.error
                    assert result.transcript is not None
                    transcript = result.transcript
                    if to_stdout:
                        _to_stdout(render(transcript, formats[0], uri=path.stem))
                        written = [Path("stdout")]
                    else:
                        written = [write(transcript, fmt, output(path, fmt), uri=path.stem) for fmt in formats]
                except (TurnscribeError, OSError) as e:  # OSError: an output that cannot be written (disk full)
                    failed += 1
                    _report("error", "red", path, str(e))
                else:
                    problems = [r for r in transcript.metadata.repairs if r.kind == "window_failed"]
                    for r in problems:
                        _report("warning", "yellow", path, f"window {r.window} failed to decode: {r.detail}")
                    _report(
                        "done",
                        "green",
                        path,
                        f"{transcript.duration:.1f}s, {_count(len(transcript.speakers), 'speaker')}, "
                        f"{_count(len(transcript.segments), 'segment')} → {', '.join(str(p) for p in written)}",
                    )
                with lock:
                    if (task := window_tasks.pop(str(path), None)) is not None:
                        bar.remove_task(task)
                bar.advance(files_task)
                finished += 1
    if failed:
        console.print(f"[red]{failed} of {attempted} files failed[/red]")
        raise typer.Exit(1)


app.command("eval")(eval_command)
app.command()(serve)
register_training(app)
app.command("bench")(bench_command)
