"""Fine-tuning with the model card's recipe: all parameters, bf16, gradient checkpointing, 8-bit AdamW, linear
warm-up then linear decay, effective batch 128 by accumulation, 2 epochs; resumable; multi-GPU via accelerate.

Launch on one device with `turnscribe train CONFIG`, on several with
`accelerate launch -m turnscribe train CONFIG`. The result, OUTPUT_DIR/model, is a native-layout checkpoint that
`turnscribe transcribe --model OUTPUT_DIR/model` loads.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import shutil
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

from ..parse import parse_window
from ..prompt import diarize_prompt_ids
from ..types import SAMPLE_RATE, TurnscribeError, WindowSpan
from .data import count_windows
from .vocab import RowInit, extend_vocabulary

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
CHECKPOINTS = "checkpoints"
MODEL_DIR = "model"
STATE_FILE = "trainer_state.json"
REPETITION_PENALTY = 1.2  # the card's generation setting, saved with the model


class TrainingError(TurnscribeError):
    pass


@dataclass
class TrainConfig:
    """Every knob of a run; the defaults are the model card's recipe (one config file overrides them)."""

    model: str  # base checkpoint (extended on the fly) or an extended one: folder or hub id
    train_data: list[str]  # Shar folders written by `turnscribe prepare-data` (their train/ splits)
    output_dir: str
    eval_data: list[str] = field(default_factory=list)  # held-out Shar folders (dev/ splits)
    epochs: float = 2.0
    peak_lr: float = 3e-4
    warmup_steps: int = 100  # optimizer steps of linear warm-up, then linear decay to 0
    effective_batch: int = 128  # windows per optimizer step, over all devices
    micro_batch: int = 2  # windows per forward pass on one device; the rest is accumulation
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    optimizer: Literal["adamw8bit", "adamw"] = "adamw8bit"  # 8-bit (bitsandbytes) needs CUDA; else AdamW
    precision: Literal["bf16", "fp32"] = "bf16"  # bf16 autocast on CUDA; the CPU trains in fp32
    gradient_checkpointing: bool = True
    vocab_init: RowInit = "covariance"
    eval_every: int = 200  # optimizer steps; 0: only after the last step
    eval_windows: int = 200  # held-out windows per evaluation (from each eval_data folder)
    eval_batch: int = 8
    save_every: int = 500  # optimizer steps between resumable checkpoints
    keep_checkpoints: int = 2
    log_every: int = 10  # optimizer steps; 0: only the last
    max_steps: int | None = None  # stop early (smoke tests); the schedule still spans `epochs`
    num_workers: int = 2  # data-loading processes per device
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.train_data, str):
            self.train_data = [self.train_data]
        if isinstance(self.eval_data, str):
            self.eval_data = [self.eval_data]
        if not self.train_data:
            raise TrainingError("train_data names no Shar folder")
        if min(self.micro_batch, self.effective_batch) < 1 or self.epochs <= 0:
            raise TrainingError("micro_batch, effective_batch and epochs must be positive")
        if self.effective_batch % self.micro_batch:
            raise TrainingError(f"effective_batch {self.effective_batch} is not a multiple of micro_batch")


def load_config(path: Path | None, overrides: Sequence[str] = ()) -> TrainConfig:
    """A YAML file of TrainConfig fields, then KEY=VALUE overrides (values read as YAML: 3e-4, true, [a, b])."""
    import yaml

    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise TrainingError(f"cannot read the config {path}: {e}") from e
        if not isinstance(loaded, dict):
            raise TrainingError(f"{path}: expected a mapping of settings")
        data.update(loaded)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise TrainingError(f"override {item!r} is not KEY=VALUE")
        data[key.strip()] = yaml.safe_load(value)
    hints = get_type_hints(TrainConfig)
    if unknown := sorted(set(data) - set(hints)):
        raise TrainingError(f"unknown setting(s): {', '.join(unknown)}; known: {', '.join(sorted(hints))}")
    try:
        return TrainConfig(**{key: _typed(key, value, hints[key]) for key, value in data.items()})
    except TypeError as e:
        raise TrainingError(f"incomplete config: {e}") from e


def _typed(key: str, value: Any, hint: Any) -> Any:
    """A setting as its field's type, or a TrainingError naming it. YAML 1.1 reads a number without a dot
    (`peak_lr: 1e-4`) as a string, so numbers are also taken from text."""
    options = get_args(hint)
    if type(None) in options:  # X | None
        if value is None:
            return None
        (hint,) = [o for o in options if o is not type(None)]
        options = get_args(hint)
    if get_origin(hint) is Literal:
        if value in options:
            return value
        expected = " or ".join(map(repr, options))
    elif get_origin(hint) is list:
        items = [] if value is None else [value] if isinstance(value, str) else value
        if isinstance(items, list) and all(isinstance(i, str) for i in items):
            return items
        expected = "a list of folders"
    elif hint in (int, float) and not isinstance(value, bool):
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if math.isfinite(number) and (hint is float or number.is_integer()):
            return hint(number)
        expected = "a whole number" if hint is int else "a number"
    elif isinstance(value, hint):  # bool, str
        return value
    else:
        expected = "true or false" if hint is bool else "text"
    raise TrainingError(f"setting {key}: expected {expected}, got {value!r}")


# --- batches -------------------------------------------------------------------------------------------------


class WindowCollator:
    """Window cuts → model inputs: mel features, and decoder ids = diarize prompt + target, labels shifted by one
    with the prompt masked (the model learns the transcript, not the prompt it is given)."""

    def __init__(self, processor: Any) -> None:
        self.feature_extractor = processor.feature_extractor
        self.tokenizer = processor.tokenizer
        self._prompts: dict[str, list[int]] = {}

    def prompt(self, language: str) -> list[int]:
        if language not in self._prompts:
            tok = self.tokenizer
            self._prompts[language] = diarize_prompt_ids(language, tok.convert_tokens_to_ids, tok.unk_token_id)
        return self._prompts[language]

    def __call__(self, cuts: Iterable[Any]) -> dict[str, Any]:
        import torch

        clips, sequences, prompt_lengths = [], [], []
        for cut in cuts:
            cut = cut if cut.sampling_rate == SAMPLE_RATE else cut.resample(SAMPLE_RATE)
            clips.append(window_samples(cut))
            prompt = self.prompt(cut.custom.get("language", "en"))
            target = self.tokenizer(cut.custom["target"], add_special_tokens=False).input_ids
            sequences.append(prompt + target)
            prompt_lengths.append(len(prompt))
        features = self.feature_extractor(
            clips, sampling_rate=SAMPLE_RATE, return_tensors="pt", padding="longest", return_attention_mask=True
        )
        length = max(len(s) for s in sequences) - 1
        pad = self.tokenizer.pad_token_id
        inputs = torch.full((len(sequences), length), pad, dtype=torch.long)
        labels = torch.full((len(sequences), length), IGNORE_INDEX, dtype=torch.long)
        for row, (sequence, prompt_length) in enumerate(zip(sequences, prompt_lengths)):
            ids = torch.tensor(sequence)
            inputs[row, : len(ids) - 1] = ids[:-1]
            labels[row, prompt_length - 1 : len(ids) - 1] = ids[prompt_length:]
        return {
            "input_features": features["input_features"],
            "attention_mask": features["attention_mask"],
            "decoder_input_ids": inputs,
            "labels": labels,
        }


def window_samples(cut: Any) -> Any:
    """A window's audio as the model hears it in transcription: channels averaged (a stereo call keeps both parties;
    its first channel alone would leave out speech the target has)."""
    return cut.load_audio().mean(axis=0)


def token_loss_sum(model: Any, batch: dict[str, Any]) -> Any:
    """Summed cross-entropy over target tokens (callers divide by the token count of the whole step)."""
    import torch

    logits = model(
        input_features=batch["input_features"],
        attention_mask=batch["attention_mask"],
        decoder_input_ids=batch["decoder_input_ids"],
        use_cache=False,
    ).logits
    return torch.nn.functional.cross_entropy(
        logits.float().flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )


def _to(batch: dict[str, Any], device: Any) -> dict[str, Any]:
    return {k: v.to(device) for k, v in batch.items()}


class _CutsDataset:
    """Map-style dataset whose 'index' is a CutSet from a lhotse sampler: collation runs in the workers."""

    def __init__(self, collate: WindowCollator) -> None:
        self.collate = collate

    def __getitem__(self, cuts: Any) -> dict[str, Any]:
        return self.collate(cuts)


class _Skip:
    """The sampler's batches after the first `count` (resuming mid-epoch; skipped batches are not loaded)."""

    def __init__(self, sampler: Any, count: int) -> None:
        self.sampler, self.count = sampler, count

    def __iter__(self) -> Iterator[Any]:
        return islice(iter(self.sampler), self.count, None)


def training_cuts(folders: Sequence[str], seed: int) -> Any:
    """All training windows, streamed from their shards (shard order shuffled per epoch via `seed`)."""
    from lhotse import CutSet

    sets = [CutSet.from_shar(in_dir=folder, shuffle_shards=True, seed=seed) for folder in folders]
    if len(sets) == 1:
        return sets[0]
    # Interleave the sources in proportion to their size, so that each is spread over the whole epoch.
    return CutSet.mux(*sets, weights=[count_windows(Path(f)) for f in folders], seed=seed)


def eval_cuts(folders: Sequence[str], per_folder: int) -> list[Any]:
    from lhotse import CutSet

    cuts: list[Any] = []
    for folder in folders:
        cuts += list(islice(CutSet.from_shar(in_dir=folder), per_folder))
    return cuts


# --- evaluation ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalResult:
    step: int
    windows: int
    loss: float  # mean cross-entropy per target token (nats)
    der: float  # collar 0.25 s, overlap scored, over all windows
    cpwer: float | None
    seconds: float


def evaluate_windows(model: Any, processor: Any, cuts: Sequence[Any], *, step: int, batch_size: int) -> EvalResult:
    """Loss on the held-out windows, then greedy decoding of them scored against their targets with the
    project's evaluation (each window its own session)."""
    import torch
    from meeteval.io import SegLST

    from ..decoders.base import WindowAudio
    from ..decoders.transformers import TransformersDecoder
    from ..evaluation import evaluate

    started = time.perf_counter()
    device = next(model.parameters()).device
    collate = WindowCollator(processor)
    was_training = model.training
    model.eval()
    loss_sum, tokens = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(cuts), batch_size):
            batch = _to(collate(cuts[i : i + batch_size]), device)
            loss_sum += float(token_loss_sum(model, batch))
            tokens += int((batch["labels"] != IGNORE_INDEX).sum())
    # A copy of the processor: the decoder turns dither off, the training collator keeps it.
    decoder = TransformersDecoder(device=str(device), batch_size=batch_size, loaded=(copy.deepcopy(processor), model))
    reference, hypothesis = [], []
    for i in range(0, len(cuts), batch_size):
        chunk = cuts[i : i + batch_size]
        windows = [WindowAudio(WindowSpan(j, 0, c.num_samples), window_samples(c)) for j, c in enumerate(chunk)]
        # All windows of a call share one prompt: group by language.
        for language in sorted({c.custom.get("language", "en") for c in chunk}):
            picked = [(c, w) for c, w in zip(chunk, windows) if c.custom.get("language", "en") == language]
            outputs = decoder.decode([w for _, w in picked], language)
            for (cut, _), output in zip(picked, outputs):
                reference += _segments(cut.id, cut.custom["target"], cut.duration)
                hypothesis += _segments(cut.id, output, cut.duration)
    if was_training:
        model.train()
    result = evaluate(SegLST(reference), SegLST(hypothesis))
    return EvalResult(
        step=step,
        windows=len(cuts),
        loss=loss_sum / max(tokens, 1),
        der=result.der(0.25),
        cpwer=result.wer("cpWER"),
        seconds=time.perf_counter() - started,
    )


def _segments(session: str, stream: str, duration: float) -> list[dict[str, Any]]:
    """SegLST rows of one window's token stream, speakers by slot (cpWER and DER are blind to the labels)."""
    return [
        {"session_id": session, "speaker": f"slot{s.slot}", "start_time": s.start, "end_time": s.end, "words": s.text}
        for s in parse_window(stream, duration).segments
    ]


# --- the loop ------------------------------------------------------------------------------------------------


@dataclass
class TrainerState:
    step: int = 0  # optimizer steps done
    epoch: int = 0
    batches_in_epoch: int = 0  # micro-batches of `epoch` already used (per device)


@dataclass(frozen=True)
class TrainResult:
    model_dir: Path
    steps: int
    total_steps: int
    optimizer: str
    last_loss: float | None
    evaluations: list[EvalResult]
    seconds_per_step: float


def make_optimizer(parameters: Iterable[Any], config: TrainConfig, on_cuda: bool) -> tuple[Any, str]:
    import torch

    if config.optimizer == "adamw8bit" and on_cuda:
        try:
            import bitsandbytes as bnb

            return bnb.optim.AdamW8bit(parameters, lr=config.peak_lr, weight_decay=config.weight_decay), "AdamW8bit"
        except ImportError:
            log.warning("bitsandbytes is not installed: plain AdamW instead of AdamW8bit (more optimizer memory)")
    return torch.optim.AdamW(parameters, lr=config.peak_lr, weight_decay=config.weight_decay), "AdamW"


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete checkpoint: its state file is written last, so a run stopped while saving leaves none."""
    found = sorted(p for p in (output_dir / CHECKPOINTS).glob("step-*") if (p / STATE_FILE).is_file())
    return found[-1] if found else None


def train(config: TrainConfig, *, resume: bool = False) -> TrainResult:
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from lhotse.dataset import SimpleCutSampler
    from torch.utils.data import DataLoader
    from transformers import get_linear_schedule_with_warmup

    from ..decoders.transformers import load_model

    on_cuda = torch.cuda.is_available()
    accelerator = Accelerator(mixed_precision="bf16" if on_cuda and config.precision == "bf16" else "no")
    set_seed(config.seed)
    output_dir = Path(config.output_dir)
    if not resume and any((output_dir / CHECKPOINTS).glob("step-*")):
        # A second run would mix its checkpoints with the first's, and pruning by step number would delete its own.
        raise TrainingError(
            f"{output_dir} holds checkpoints of an earlier run: --resume continues it; to start over, "
            f"choose another output_dir or delete {output_dir / CHECKPOINTS}"
        )
    world = accelerator.num_processes
    if config.effective_batch % (config.micro_batch * world):
        raise TrainingError(
            f"effective_batch {config.effective_batch} is not a multiple of micro_batch × devices "
            f"({config.micro_batch} × {world})"
        )
    accumulation = config.effective_batch // (config.micro_batch * world)
    windows = sum(count_windows(Path(f)) for f in config.train_data)
    for folder in config.eval_data:
        count_windows(Path(folder))  # a wrong folder fails now, by name, not in lhotse once the model has loaded
    # Steps carry an incomplete accumulation group over into the next epoch, so an epoch is a fractional number of
    # steps: micro-batches per device (lhotse gives every device as many) ÷ accumulation. Rounded off float noise.
    micro_batches = math.ceil(math.ceil(windows / config.micro_batch) / world)
    total_steps = max(1, math.ceil(round(config.epochs * micro_batches / accumulation, 6)))
    last_step = min(total_steps, config.max_steps or total_steps)
    if config.warmup_steps >= total_steps:
        log.warning(
            "warmup_steps %d is not below the run's %d steps: the learning rate never reaches peak_lr %g and never "
            "decays; set warmup_steps lower (a small corpus makes few steps)",
            config.warmup_steps,
            total_steps,
            config.peak_lr,
        )

    processor, model = load_model(config.model, "cpu", torch.float32, False, None)
    extension = extend_vocabulary(model, processor.tokenizer, init=config.vocab_init, seed=config.seed)
    if extension.changed:
        log.info(
            "vocabulary extended: %d tokens added, %d → %d rows",
            len(extension.added_tokens),
            extension.rows_before,
            extension.rows_after,
        )
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    optimizer, optimizer_name = make_optimizer(model.parameters(), config, on_cuda)
    scheduler = get_linear_schedule_with_warmup(optimizer, config.warmup_steps, total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    # The scheduler is stepped once per optimizer step by us (accelerate would step it once per device).
    accelerator.register_for_checkpointing(scheduler)

    state = TrainerState()
    if resume and (checkpoint := latest_checkpoint(output_dir)) is not None:
        accelerator.load_state(str(checkpoint))
        state = TrainerState(**json.loads((checkpoint / STATE_FILE).read_text()))
        accelerator.print(f"resumed from {checkpoint} at step {state.step}")
    elif resume:
        accelerator.print(f"no checkpoint in {output_dir / CHECKPOINTS}: starting at step 0")

    collate = WindowCollator(processor)
    held_out = eval_cuts(config.eval_data, config.eval_windows) if config.eval_data else []
    evaluations: list[EvalResult] = []
    group: list[dict[str, Any]] = []
    last_loss: float | None = None
    step_times: list[float] = []
    step_started = time.perf_counter()
    log_file = output_dir / "train_log.jsonl"
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config.yaml").write_text(_yaml(asdict(config)))

    def run_eval() -> None:
        if not held_out:
            return
        if accelerator.is_main_process:
            with accelerator.autocast():
                result = evaluate_windows(
                    accelerator.unwrap_model(model), processor, held_out, step=state.step, batch_size=config.eval_batch
                )
            evaluations.append(result)
            _append_json(output_dir / "eval_log.jsonl", asdict(result))
            accelerator.print(
                f"eval step {result.step}: loss {result.loss:.3f}  DER {100 * result.der:.1f}%  "
                f"cpWER {'-' if result.cpwer is None else f'{100 * result.cpwer:.1f}%'}  ({result.windows} windows)"
            )
        accelerator.wait_for_everyone()

    while state.step < last_step:
        cuts = training_cuts(config.train_data, seed=config.seed + state.epoch)
        sampler = SimpleCutSampler(
            cuts,
            max_cuts=config.micro_batch,
            shuffle=True,
            seed=config.seed,
            world_size=world,
            rank=accelerator.process_index,
        )
        sampler.set_epoch(state.epoch)
        loader: DataLoader[dict[str, Any]] = DataLoader(
            _CutsDataset(collate),  # type: ignore[arg-type]  # map-style by __getitem__, keyed by CutSets
            sampler=_Skip(sampler, state.batches_in_epoch),
            batch_size=None,
            num_workers=config.num_workers,
        )
        batches_before = state.batches_in_epoch
        for batch in loader:
            state.batches_in_epoch += 1
            group.append(batch)
            if len(group) < accumulation:
                continue
            tokens = sum(int((b["labels"] != IGNORE_INDEX).sum()) for b in group)
            loss_total = 0.0
            for i, micro in enumerate(group):
                # Gradients are all-reduced across devices only on the last micro-batch of the step.
                sync = accelerator.no_sync(model) if i < len(group) - 1 else nullcontext()
                with sync, accelerator.autocast():
                    loss = token_loss_sum(model, _to(micro, accelerator.device)) / tokens
                accelerator.backward(loss)
                loss_total += float(loss.detach())
            group = []
            if config.max_grad_norm:
                accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            last_loss = loss_total
            now = time.perf_counter()
            step_times.append(now - step_started)
            step_started = now
            logged = config.log_every and state.step % config.log_every == 0
            if accelerator.is_main_process and (logged or state.step == last_step):
                record = {
                    "step": state.step,
                    "epoch": state.epoch,
                    "loss": loss_total,
                    "lr": scheduler.get_last_lr()[0],
                    "seconds": step_times[-1],
                }
                _append_json(log_file, record)
                accelerator.print(f"step {state.step}/{total_steps}  loss {loss_total:.4f}  lr {record['lr']:.2e}")
            if config.eval_every and state.step % config.eval_every == 0 and state.step < last_step:
                run_eval()
            if config.save_every and state.step % config.save_every == 0 and state.step < last_step:
                _save_checkpoint(accelerator, output_dir, state, config.keep_checkpoints)
            if state.step >= last_step:
                break
        else:
            if state.batches_in_epoch == batches_before == 0:
                raise TrainingError(f"device {accelerator.process_index} got no training windows")
            # The epoch ran out (a partial accumulation group carries over into the next epoch).
            state.epoch += 1
            state.batches_in_epoch = 0
            continue
        break

    run_eval()
    model_dir = output_dir / MODEL_DIR
    if accelerator.is_main_process:
        save_model(accelerator.unwrap_model(model), processor, model_dir)
    accelerator.wait_for_everyone()
    _save_checkpoint(accelerator, output_dir, state, config.keep_checkpoints)
    return TrainResult(
        model_dir=model_dir,
        steps=state.step,
        total_steps=total_steps,
        optimizer=optimizer_name,
        last_loss=last_loss,
        evaluations=evaluations,
        seconds_per_step=sum(step_times) / max(len(step_times), 1),
    )


def save_model(model: Any, processor: Any, model_dir: Path) -> None:
    """A native-layout checkpoint `turnscribe transcribe --model DIR` loads, with the card's generation settings."""
    model_dir.mkdir(parents=True, exist_ok=True)
    model.generation_config.repetition_penalty = REPETITION_PENALTY
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)


def _save_checkpoint(accelerator: Any, output_dir: Path, state: TrainerState, keep: int) -> None:
    path = output_dir / CHECKPOINTS / f"step-{state.step:07d}"
    accelerator.save_state(str(path))
    if accelerator.is_main_process:
        (path / STATE_FILE).write_text(json.dumps(asdict(state)) + "\n")
        for old in sorted((output_dir / CHECKPOINTS).glob("step-*"))[: -max(keep, 1)]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def _append_json(file: Path, record: dict[str, Any]) -> None:
    with file.open("a") as f:
        f.write(json.dumps(record) + "\n")


def _yaml(data: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False)
