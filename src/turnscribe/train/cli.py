"""`turnscribe extend-vocab`, `turnscribe prepare-data ami|mixtures|corpus` and `turnscribe train`.

Heavy imports (lhotse, accelerate, torch) happen inside the commands: the CLI starts without the [train] extra.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from ..types import TurnscribeError

console = Console(stderr=True)
prepare_app = typer.Typer(
    no_args_is_help=True, help="Turn a corpus into shuffled, sharded training windows with targets (lhotse Shar)."
)
_MISSING_EXTRA = "training needs the [train] extra: pip install 'turnscribe[train]'"


@contextmanager
def _errors() -> Iterator[None]:
    """A missing extra or a turnscribe error ends the command with its message and exit code 2, no traceback."""
    try:
        yield
    except ImportError as e:
        console.print(f"[red]error[/red] {escape(f'{_MISSING_EXTRA} ({e})')}")
        raise typer.Exit(2) from e
    except TurnscribeError as e:
        console.print(f"[red]error[/red] {escape(str(e))}")
        raise typer.Exit(2) from e


def _report(out: Path, summaries: dict) -> None:  # type: ignore[type-arg]
    for name, s in summaries.items():
        dropped = ", ".join(f"{k} {v}" for k, v in s.dropped.items()) or "none"
        speakers = ", ".join(f"{k}: {v}" for k, v in s.speakers.items())
        typer.echo(
            f"{out / name}: {s.windows} windows, {s.seconds / 3600:.2f} h, speakers per window {{{speakers}}}; "
            f"left out: {dropped}"
        )


WindowOption = Annotated[float, typer.Option(help="Window length in seconds (≤ 30).")]
HopOption = Annotated[float, typer.Option(help="Seconds between window starts.")]
MaxSpeakersOption = Annotated[int, typer.Option(help="Windows with more speakers are left out.")]
ShardOption = Annotated[int, typer.Option(help="Windows per shard.")]
SeedOption = Annotated[int, typer.Option(help="Seed of the shuffle / of the mixtures.")]
LanguageOption = Annotated[str, typer.Option("--language", "-l", help="Language code of the speech.")]


@prepare_app.command("ami")
def prepare_ami_command(
    corpus: Annotated[
        Path,
        typer.Argument(
            exists=True, file_okay=False, help="Local AMI copy: <MEETING>/audio/*.Array1-01.wav + annotations."
        ),
    ],
    out: Annotated[Path, typer.Argument(help="Output folder: train/ and dev/ shards, summary.json.")],
    annotations: Annotated[
        Path | None, typer.Option(exists=True, help="ami_public_manual_1.6.2 folder or zip.")
    ] = None,
    partition: Annotated[str, typer.Option(help="full-corpus, full-corpus-asr or scenario-only.")] = "full-corpus",
    text: Annotated[str, typer.Option(help="kaldi (upper case, no punctuation) or punctuated.")] = "kaldi",
    window: WindowOption = 28.0,
    hop: HopOption = 14.0,
    max_speakers: MaxSpeakersOption = 4,
    dev_windows: Annotated[int, typer.Option(help="At most this many held-out windows (AMI dev split).")] = 500,
    shard_size: ShardOption = 1000,
    seed: SeedOption = 0,
) -> None:
    """AMI SDM (lhotse's recipe) → 28 s windows every 14 s with ≤ 4 speakers (the card's 19,928 train rows)."""
    with _errors():
        from .data import WindowConfig, ami_cuts, prepare_windows

        splits = ami_cuts(corpus, annotations_dir=annotations, partition=partition, text=text)  # type: ignore[arg-type]
        summaries = prepare_windows(
            out,
            {"train": splits["train"], "dev": splits["dev"]},
            WindowConfig(window_s=window, hop_s=hop, max_speakers=max_speakers),
            language="en",
            source=f"AMI SDM {partition} ({corpus})",
            seed=seed,
            shard_size=shard_size,
            max_windows={"dev": dev_windows},
        )
    _report(out, summaries)


@prepare_app.command("mixtures")
def prepare_mixtures_command(
    out: Annotated[Path, typer.Argument(help="Output folder: train/ and dev/ shards, summary.json.")],
    librispeech: Annotated[
        Path | None, typer.Option(exists=True, file_okay=False, help="Local LibriSpeech copy (lhotse's recipe).")
    ] = None,
    parts: Annotated[str, typer.Option(help="Comma-separated LibriSpeech parts, or auto.")] = "auto",
    cuts: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="Or: any lhotse CutSet manifest of single-speaker cuts."),
    ] = None,
    count: Annotated[int, typer.Option(help="Training mixtures (the card: 11,813).")] = 11813,
    dev_count: Annotated[int, typer.Option(help="Held-out mixtures.")] = 200,
    max_duration: Annotated[float, typer.Option(help="Longest mixture in seconds (≤ 30).")] = 28.0,
    overlap: Annotated[float, typer.Option(help="Probability that a turn overlaps the previous speaker's.")] = 0.0,
    language: LanguageOption = "en",
    shard_size: ShardOption = 1000,
    seed: SeedOption = 0,
) -> None:
    """Synthetic K-speaker conversations (K = 1…4 weighted 0.2/0.3/0.3/0.2) from single-speaker utterances."""
    with _errors():
        from lhotse import CutSet

        from .data import DataPreparationError, MixtureConfig, librispeech_cuts, prepare_mixtures

        if (librispeech is None) == (cuts is None):
            raise DataPreparationError("give exactly one of --librispeech DIR or --cuts MANIFEST")
        utterances = (
            librispeech_cuts(librispeech, "auto" if parts == "auto" else parts.split(","))
            if librispeech is not None
            else CutSet.from_file(cuts)
        )
        config = MixtureConfig(count=count, max_duration_s=max_duration, overlap_probability=overlap, seed=seed)
        summaries = prepare_mixtures(
            out,
            utterances,
            config,
            dev_count=dev_count,
            language=language,
            source=f"mixtures of {librispeech or cuts}",
            shard_size=shard_size,
        )
    _report(out, summaries)


@prepare_app.command("corpus")
def prepare_corpus_command(
    out: Annotated[Path, typer.Argument(help="Output folder: train/ (and dev/) shards, summary.json.")],
    audio: Annotated[
        list[Path], typer.Option(exists=True, dir_okay=False, help="An audio file; repeatable. Session id = file stem.")
    ],
    ref: Annotated[
        list[Path], typer.Option(exists=True, dir_okay=False, help="SegLST or STM reference(s) with words; repeatable.")
    ],
    dev_recordings: Annotated[int, typer.Option(help="Recordings held out for evaluation.")] = 1,
    language: LanguageOption = "en",
    window: WindowOption = 28.0,
    hop: HopOption = 14.0,
    max_speakers: MaxSpeakersOption = 4,
    shard_size: ShardOption = 1000,
    seed: SeedOption = 0,
) -> None:
    """Your own recordings + reference transcripts (speaker, start, end, words) → training windows."""
    with _errors():
        from .data import DataPreparationError, WindowConfig, corpus_cuts, prepare_windows

        recordings = corpus_cuts(audio, ref)
        ids = sorted(recordings.ids)
        if dev_recordings >= len(ids):
            raise DataPreparationError(f"{len(ids)} recording(s): cannot hold out {dev_recordings} for evaluation")
        held_out = set(ids[:: max(len(ids) // max(dev_recordings, 1), 1)][:dev_recordings]) if dev_recordings else set()
        splits = {"train": recordings.filter(lambda c: c.id not in held_out)}
        if held_out:
            splits["dev"] = recordings.filter(lambda c: c.id in held_out)
        summaries = prepare_windows(
            out,
            splits,
            WindowConfig(window_s=window, hop_s=hop, max_speakers=max_speakers),
            language=language,
            source=f"{len(ids)} recordings",
            seed=seed,
            shard_size=shard_size,
        )
    _report(out, summaries)


def extend_vocab_command(
    base: Annotated[Path, typer.Argument(help="Base Cohere Transcribe checkpoint folder (either layout).")],
    out: Annotated[Path, typer.Argument(help="Where to save the extended checkpoint (native layout).")],
    init: Annotated[str, typer.Option(help="New rows from the old rows' covariance or std.")] = "covariance",
    seed: SeedOption = 0,
) -> None:
    """Add the 8 speaker and 300 timestamp tokens (and missing prompt controls); idempotent."""
    from .vocab import extend_checkpoint

    with _errors():
        extension = extend_checkpoint(base, out, init=init, seed=seed)  # type: ignore[arg-type]
    if extension.changed:
        typer.echo(
            f"{out}: {len(extension.added_tokens)} tokens added, rows {extension.rows_before} → "
            f"{extension.rows_after} ({len(extension.initialised_rows)} drawn from the existing rows' statistics)"
        )
    else:
        typer.echo(f"{out}: the vocabulary already has every diarize token; nothing changed")


def train_command(
    config: Annotated[Path | None, typer.Argument(help="YAML file of settings (see configs/).")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="KEY=VALUE overriding the file, e.g. --set max_steps=20.")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the latest checkpoint in output_dir.")] = False,
) -> None:
    """Fine-tune with the card's recipe (multi-GPU: `accelerate launch -m turnscribe train CONFIG`)."""
    with _errors():
        from .loop import load_config, train

        result = train(load_config(config, set_ or []), resume=resume)
    typer.echo(
        f"{result.steps}/{result.total_steps} steps ({result.optimizer}, {result.seconds_per_step:.2f} s/step); "
        f"model: {result.model_dir} (turnscribe transcribe --model {result.model_dir} …)"
    )


def register(app: typer.Typer) -> None:
    app.command("extend-vocab")(extend_vocab_command)
    app.add_typer(prepare_app, name="prepare-data")
    app.command("train")(train_command)
