"""`turnscribe bench`: how fast the whole pipeline runs here, stage by stage, next to the model card's figures.

What it measures, for each decoder backend present (transformers always; vLLM where it is installed and a
checkpoint fixed for it is given):

* throughput for 28 s clips sent by 1, 8, 32 and 128 concurrent streams (the model card's vLLM test), through
  `run_many` and its scheduler, in audio seconds per wall second (× real time);
* on CUDA, the largest batch of 28 s windows that fits (doubling until out of memory), straight through the
  decoder, and its throughput;
* long-form files (10 minutes and 1 hour): × real time end to end (audio decode → windows → model → parse →
  stitch → speaker embeddings → linking), with each stage's seconds and the peak GPU memory;
* many files at once (8 of 10 minutes), end to end through `run_many`: FLAC at 44.1 kHz stereo, so that audio
  decoding (in worker processes, one per core) costs what it costs on real recordings.

With no `--model` it runs the full-size architecture with random weights (no download), forcing every window to
emit a realistic stream in the diarize grammar of `tokens_per_28s` tokens (the real model writes about 180 for a
busy 28 s window); decoding costs the same whatever the weights say. With `--model PATH` it runs that checkpoint,
forced the same way: on vLLM, whose engine takes no logits processor per batch, by `min_tokens` = `max_tokens`
(the stream's tokens are then the model's own, its length fixed). `--tiny --quick` is the CPU smoke test CI runs.
"""

from __future__ import annotations

import datetime
import gc
import importlib.util
import json
import platform
import shutil
import tempfile
import threading
import time
import wave
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from . import cli_options as options
from .audio import audio_process_count
from .decoders.base import WindowAudio
from .pipeline import Pipeline
from .scheduler import run_many
from .types import SAMPLE_RATE, WindowSpan

BACKENDS = ("transformers", "vllm")

MODEL_CARD_3090: dict[str, Any] = {
    "gpu": "NVIDIA GeForce RTX 3090 (model card)",
    "clips": {1: "22× (vLLM); one generate() stream ≈ 14×", 8: "117× (vLLM)", 32: "171× (vLLM)", 128: "249× (vLLM)"},
    "long_form": {600: "44× (vLLM + embeddings); ≈ 7× (transformers helper)"},
}


@dataclass(frozen=True)
class BenchSettings:
    size: str = "full"  # "full" or "tiny" random model; ignored with `model`
    model: str | None = None  # a checkpoint folder or hub id instead of random weights
    backends: tuple[str, ...] = BACKENDS  # each one measured where it can run (see `unavailable`)
    device: str = "auto"
    fast: bool = False  # SpeedOptions.fast
    batch_size: int | None = None  # None: from free GPU memory (4 on the CPU)
    concurrency: tuple[int, ...] = (1, 8, 32, 128)
    clips_per_stream: int = 2  # each concurrent stream sends this many 28 s clips
    clip_s: float = 28.0
    long_form_s: tuple[float, ...] = (600.0, 3600.0)
    many_files: int = 8  # 0: skip
    many_files_s: float = 600.0
    tokens_per_28s: int = 180
    find_largest_batch: bool = True  # CUDA only
    embedder: str = "resemblyzer"
    seed: int = 0

    @classmethod
    def quick(cls, **overrides: Any) -> BenchSettings:
        """A smoke run: few clips, one 1-minute file, no batch search."""
        return replace(
            cls(
                concurrency=(1, 4),
                clips_per_stream=1,
                long_form_s=(60.0,),
                many_files=2,
                many_files_s=30.0,
                find_largest_batch=False,
            ),
            **overrides,
        )


@dataclass
class StageClock:
    """Seconds spent in the log-mel features and the encoder (CUDA events on a GPU, so kernels are timed, not
    launches), in the whole decoder call, and in the speaker embedder."""

    cuda: bool
    # Per device-timed stage ("features", "encoder"): (start, end) CUDA events, or wall-clock seconds on the CPU.
    events: dict[str, list[tuple[Any, Any]]] = field(default_factory=dict)
    cpu_s: dict[str, float] = field(default_factory=dict)
    model_s: float = 0.0
    embedder_s: float = 0.0
    attached: bool = False  # features and encoder timed inside the model (transformers)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _started: dict[str, float] = field(default_factory=dict)

    def begin(self, stage: str) -> None:
        if self.cuda:
            import torch

            start = torch.cuda.Event(enable_timing=True)
            start.record()
            self.events.setdefault(stage, []).append((start, None))
        else:
            self._started[stage] = time.perf_counter()

    def end(self, stage: str) -> None:
        if self.cuda:
            import torch

            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self.events[stage][-1] = (self.events[stage][-1][0], end)
        else:
            self.cpu_s[stage] = self.cpu_s.get(stage, 0.0) + time.perf_counter() - self._started.pop(stage)

    def attach(self, decoder: Any) -> None:
        """Times the decoder's log-mel features and its encoder's forward passes."""
        encoder = decoder.model.get_encoder()
        encoder.register_forward_pre_hook(lambda *_: self.begin("encoder"))
        encoder.register_forward_hook(lambda *_: self.end("encoder"))
        log_mel = decoder.log_mel
        self.attached = True

        def timed_log_mel(clips: Any) -> Any:
            self.begin("features")
            try:
                return log_mel(clips)
            finally:
                self.end("features")

        decoder.log_mel = timed_log_mel

    def seconds(self, stage: str) -> float:
        if not self.cuda:
            return self.cpu_s.get(stage, 0.0)
        import torch

        torch.cuda.synchronize()
        # A call that raised (out of memory: the decoder then retries in halves) has no end event.
        return sum(start.elapsed_time(end) for start, end in self.events.get(stage, []) if end is not None) / 1000

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            setattr(self, stage, getattr(self, stage) + seconds)

    def reset(self) -> None:
        self.events.clear()
        self.cpu_s.clear()
        self.model_s = self.embedder_s = 0.0


class _TimedDecoder:
    """The decoder, its calls timed (the scheduler calls it from one thread)."""

    def __init__(self, inner: Any, clock: StageClock) -> None:
        self.inner, self.clock = inner, clock
        self.name, self.model_id = inner.name, inner.model_id

    @property
    def batch_size(self) -> int:
        return int(self.inner.batch_size)

    def decode(self, windows: Sequence[WindowAudio], language: str) -> list[str]:
        t0 = time.perf_counter()
        try:
            return list(self.inner.decode(windows, language))
        finally:
            self.clock.add("model_s", time.perf_counter() - t0)


class _TimedEmbedder:
    def __init__(self, inner: Any, clock: StageClock) -> None:
        self.inner, self.clock = inner, clock
        self.name, self.default_threshold = inner.name, inner.default_threshold

    def embed(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        t0 = time.perf_counter()
        try:
            return np.asarray(self.inner.embed(clips))
        finally:
            self.clock.add("embedder_s", time.perf_counter() - t0)


@dataclass
class Bench:
    """The loaded parts: a decoder forced to a fixed output length, a pipeline over it, and the stage clock."""

    settings: BenchSettings
    backend: str
    decoder: Any
    pipeline: Pipeline
    clock: StageClock
    description: str
    load_s: float

    @property
    def cuda(self) -> bool:
        return self.clock.cuda


def unavailable(backend: str, settings: BenchSettings) -> str | None:
    """Why `backend` cannot be measured with `settings`, or None if it can."""
    if backend != "vllm":
        return None
    if importlib.util.find_spec("vllm") is None:
        return "not installed (pip install 'turnscribe[vllm]')"
    if not settings.model:
        return (
            "needs --model, a checkpoint fixed for vLLM (turnscribe fix-checkpoint): "
            "random weights are built for transformers only"
        )
    return None


def load(settings: BenchSettings, backend: str = "transformers") -> Bench:
    import torch

    from .decoders.transformers import pick_device, pick_dtype
    from .speakers import SlotLinker, load_embedder

    device = pick_device(settings.device)
    dtype = pick_dtype(device)
    clock = StageClock(cuda=device.startswith("cuda"))
    t0 = time.perf_counter()
    if backend == "vllm":
        decoder, description = _vllm_decoder(settings), str(settings.model)
    else:
        decoder, description = _transformers_decoder(settings, device, dtype)
        clock.attach(decoder)
    embedder = _TimedEmbedder(load_embedder(settings.embedder, device=device), clock)
    pipeline = Pipeline(_TimedDecoder(decoder, clock), SlotLinker(embedder))  # type: ignore[arg-type]
    if clock.cuda:
        torch.cuda.synchronize()
    return Bench(settings, backend, decoder, pipeline, clock, description, time.perf_counter() - t0)


def _transformers_decoder(settings: BenchSettings, device: str, dtype: Any) -> tuple[Any, str]:
    """The transformers decoder, each window forced to a scripted stream of the settings' length."""
    from .decoders.transformers import SpeedOptions, TransformersDecoder
    from .random_model import ForcedTokens, random_model, scripted_window

    speed = SpeedOptions.fast(device) if settings.fast else SpeedOptions()
    if settings.model:
        decoder = TransformersDecoder(settings.model, device=device, batch_size=settings.batch_size, speed=speed)
        description = settings.model
    else:
        loaded = random_model(settings.size, device=device, dtype=dtype, attention=speed.attention, seed=settings.seed)  # type: ignore[arg-type]
        decoder = TransformersDecoder(
            f"random-{settings.size}", device=device, batch_size=settings.batch_size, speed=speed, loaded=loaded
        )
        params = sum(p.numel() for p in decoder.model.parameters())
        count = f"{params / 1e9:.2f} B" if params >= 1e8 else f"{params / 1e6:.2f} M"
        description = f"{settings.size}-size architecture, random weights ({count} parameters)"
    tokenizer = decoder.processor.tokenizer
    prompt_len = len(decoder.prompt_ids("en"))

    def force(windows: Sequence[WindowAudio]) -> list[Any]:
        scripts = [
            scripted_window(
                tokenizer,
                len(w.samples) / SAMPLE_RATE,
                round(settings.tokens_per_28s * len(w.samples) / SAMPLE_RATE / 28.0),
                seed=w.span.index,
            )
            for w in windows
        ]
        return [ForcedTokens(scripts, prompt_len, tokenizer.eos_token_id)]

    decoder.logits_processor_factory = force
    return decoder, description


def _vllm_decoder(settings: BenchSettings) -> Any:
    from .decoders.vllm import DEFAULT_BATCH_SIZE, VllmDecoder, import_vllm

    assert settings.model, unavailable("vllm", replace(settings, model=None))
    return VllmDecoder.from_pretrained(
        settings.model,
        batch_size=settings.batch_size or DEFAULT_BATCH_SIZE,
        sampling_params=forced_length(import_vllm().SamplingParams, settings.tokens_per_28s),
    )


def forced_length(sampling_params: Callable[..., Any], tokens_per_28s: int) -> Callable[..., Any]:
    """vLLM's SamplingParams with each window's output held at `tokens_per_28s` per 28 s: `min_tokens` keeps
    end-of-text back until then and `max_tokens` stops it there. The window's length is read back from the token
    budget the decoder sized to it (`max_new_tokens_for`)."""
    from .decoders.transformers import TOKENS_PER_SECOND, max_new_tokens_for

    slack = max_new_tokens_for(0.0)

    def forced(**options: Any) -> Any:
        seconds = (options["max_tokens"] - slack) / TOKENS_PER_SECOND
        tokens = max(1, round(tokens_per_28s * seconds / 28.0))
        return sampling_params(**{**options, "min_tokens": tokens, "max_tokens": tokens})

    return forced


def _noise(seconds: float, seed: int) -> np.ndarray:
    """Audible (not skipped as silence), different in every clip; the forced output does not depend on it."""
    from .random_model import noise_windows

    return noise_windows([seconds], seed=seed)[0].samples


def _peak_gib(bench: Bench) -> float | None:
    """This process's peak; None for vLLM, whose engine runs in a process of its own (with the memory that
    `gpu_memory_utilization` reserves)."""
    if not bench.cuda or bench.backend == "vllm":
        return None
    import torch

    return torch.cuda.max_memory_allocated() / 2**30


def _reset_peak(bench: Bench) -> None:
    bench.clock.reset()
    if bench.cuda:
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def measure_clips(bench: Bench, concurrency: int) -> dict[str, Any]:
    settings = bench.settings
    count = concurrency * settings.clips_per_stream
    clips = [_noise(settings.clip_s, settings.seed + i) for i in range(count)]
    _reset_peak(bench)
    t0 = time.perf_counter()
    results = list(run_many(bench.pipeline, clips, sampling_rate=SAMPLE_RATE, files_at_once=concurrency))
    wall = time.perf_counter() - t0
    failed = [str(r.error) for r in results if r.error is not None]
    return {
        "concurrency": concurrency,
        "clips": count,
        "wall_s": wall,
        "throughput_x": count * settings.clip_s / wall,
        "model_s": bench.clock.model_s,
        "peak_gpu_gib": _peak_gib(bench),
        "failed": failed,
    }


def find_largest_batch(bench: Bench, limit: int = 1024) -> dict[str, Any]:
    """Doubling batches of 28 s windows straight through the model until one runs out of GPU memory (through
    `generate_ids`: `decode` would retry the batch in halves and lower the decoder's batch size)."""
    import torch

    tried: list[dict[str, Any]] = []
    size = 8
    while size <= limit:
        windows = [
            WindowAudio(WindowSpan(i, 0, round(bench.settings.clip_s * SAMPLE_RATE)), _noise(bench.settings.clip_s, i))
            for i in range(size)
        ]
        _reset_peak(bench)
        try:
            t0 = time.perf_counter()
            bench.decoder.generate_ids(windows, "en")
            torch.cuda.synchronize()
            wall = time.perf_counter() - t0
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            break
        features, encoder = bench.clock.seconds("features"), bench.clock.seconds("encoder")
        tried.append(
            {
                "batch": size,
                "wall_s": wall,
                "throughput_x": size * bench.settings.clip_s / wall,
                "features_s": features,
                "encoder_s": encoder,
                # Every window emits its forced tokens and end-of-text: one decoding step each.
                "decode_ms_per_step": 1000 * (wall - features - encoder) / (bench.settings.tokens_per_28s + 1),
                "peak_gpu_gib": _peak_gib(bench),
            }
        )
        size *= 2
    best = max(tried, key=lambda t: t["throughput_x"], default=None)
    return {"largest": tried[-1]["batch"] if tried else 0, "best": best, "tried": tried, "limit": limit}


def _write_wav(path: Path, samples: np.ndarray) -> None:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())


def measure_long_form(bench: Bench, seconds: float, folder: Path) -> dict[str, Any]:
    path = folder / f"long-{seconds:g}s.wav"
    _write_wav(path, _noise(seconds, bench.settings.seed))
    _reset_peak(bench)
    t0 = time.perf_counter()
    (result,) = run_many(bench.pipeline, [path], files_at_once=1)
    wall = time.perf_counter() - t0
    path.unlink()
    if result.transcript is None:
        raise RuntimeError(f"the {seconds:g} s file failed: {result.error}")
    timings = result.transcript.metadata.timings
    stages = {
        "audio_decode": timings["audio"],
        **_model_stages(bench),
        "parse_stitch": timings["decode"] - bench.clock.model_s + timings["stitch"],  # incl. queueing
        "embedder": bench.clock.embedder_s,
        "linking": timings["speakers"] - bench.clock.embedder_s,
    }
    return {
        "audio_s": seconds,
        "windows": result.transcript.metadata.windows,
        "segments": len(result.transcript.segments),
        "wall_s": wall,
        "real_time_x": seconds / wall,
        "stages_s": stages,
        "peak_gpu_gib": _peak_gib(bench),
    }


def _model_stages(bench: Bench) -> dict[str, float]:
    """The model's seconds: split into features, encoder and decoding loop where the clock sees inside the model
    (transformers); one figure for vLLM's engine."""
    if not bench.clock.attached:
        return {"model": bench.clock.model_s}
    features, encoder = bench.clock.seconds("features"), bench.clock.seconds("encoder")
    # The rest of the decoder call: generate's decoding loop and token decoding.
    return {"features": features, "encoder": encoder, "decoder": bench.clock.model_s - features - encoder}


RECORDING_RATE = 44100  # what phones and recorders write; decoding resamples it to 16 kHz


def write_recording(path: Path, seconds: float, *, codec: str = "flac", seed: int = 0) -> None:
    """Noise as a phone or recorder would store it, 44.1 kHz stereo, under a slow envelope so that codecs spend
    about what they spend on speech; written a second at a time, so that long files are never held at once."""
    import av

    rate, rng = RECORDING_RATE, np.random.default_rng(seed)
    total = round(seconds * rate)
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=rate, layout="stereo")
        assert isinstance(stream, av.audio.stream.AudioStream)
        for second, start in enumerate(range(0, total, rate)):
            block = min(rate, total - start)
            envelope = 0.5 + 0.5 * np.sin(2 * np.pi * (second % 7) / 7 + np.linspace(0, 2 * np.pi, rate)[:block])
            pcm = (0.1 * envelope * rng.standard_normal((2, block))).astype(np.float32)
            frame = av.AudioFrame.from_ndarray(pcm, format="fltp", layout="stereo")
            frame.sample_rate, frame.pts = rate, start
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


def measure_many_files(bench: Bench, count: int, seconds: float, folder: Path) -> dict[str, Any]:
    """`count` files of `seconds` at once through `run_many`, end to end; one file written, the rest copies."""
    paths = [folder / f"file-{i}.flac" for i in range(count)]
    write_recording(paths[0], seconds, seed=bench.settings.seed)
    for path in paths[1:]:
        shutil.copyfile(paths[0], path)
    _reset_peak(bench)
    t0 = time.perf_counter()
    results = list(run_many(bench.pipeline, paths, files_at_once=count))
    wall = time.perf_counter() - t0
    for path in paths:
        path.unlink()
    return {
        "files": count,
        "file_s": seconds,
        "audio_processes": audio_process_count(),  # run_many's default
        "wall_s": wall,
        "throughput_x": count * seconds / wall,
        "model_s": bench.clock.model_s,
        "embedder_s": bench.clock.embedder_s,
        "peak_gpu_gib": _peak_gib(bench),
        "failed": [str(r.error) for r in results if r.error is not None],
    }


def machine(cuda: bool) -> dict[str, Any]:
    import torch
    import transformers

    info: dict[str, Any] = {
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "date": datetime.date.today().isoformat(),
    }
    if cuda:
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        info["gpu"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
    return info


def run(
    settings: BenchSettings, log: Any = print, on_update: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """Every measurement of `settings`, backend after backend; `on_update` gets the results so far after each one
    (a run stopped at a time limit keeps what it measured)."""
    from .decoders.transformers import pick_device

    result: dict[str, Any] = {
        "machine": machine(pick_device(settings.device).startswith("cuda")),
        "settings": asdict(settings),
        "backends": {},
        "model_card_3090": MODEL_CARD_3090,
    }

    def measured(line: str) -> None:
        log(line)
        if on_update:
            on_update(result)

    for backend in settings.backends:
        if reason := unavailable(backend, settings):
            result["backends"][backend] = {"skipped": reason}
            measured(f"{backend}: skipped, {reason}")
            continue
        bench = load(settings, backend)
        log(f"{backend}: loaded {bench.description} in {bench.load_s:.1f} s; batch size {bench.decoder.batch_size}")
        try:
            measure_backend(bench, result["backends"], measured)
        finally:
            _release(bench)
    return result


def measure_backend(bench: Bench, results: dict[str, Any], measured: Callable[[str], None]) -> None:
    """Every measurement of one backend, each added to `results[bench.backend]` and reported as it completes."""
    settings, decoder = bench.settings, bench.decoder

    def done(line: str) -> None:
        measured(f"{bench.backend}: {line}")

    # Warm-up (CUDA context, kernels, and with --fast the first compilation) outside every measurement.
    measure_clips(replace(bench, settings=replace(settings, clips_per_stream=1)), 1)
    results[bench.backend] = row = {
        "model": bench.description,
        # vLLM places the model and picks its dtype itself (the checkpoint's, with dtype="auto").
        "device": getattr(decoder, "device", "vLLM's"),
        "dtype": str(getattr(decoder, "dtype", "auto")).removeprefix("torch."),
        "speed": asdict(decoder.speed) if hasattr(decoder, "speed") else {},
        "batch_size": decoder.batch_size,
        "load_s": bench.load_s,
        "clips": [],
        "largest_batch": None,
        "long_form": [],
        "many_files": None,
    }
    for c in settings.concurrency:
        row["clips"].append(clips := measure_clips(bench, c))
        done(f"28 s clips, concurrency {c}: {clips['throughput_x']:.0f}× real time")
    # Straight through transformers' generate: vLLM schedules its own batches.
    if settings.find_largest_batch and bench.cuda and bench.backend == "transformers":
        row["largest_batch"] = largest = find_largest_batch(bench)
        done(f"largest batch that fits: {largest['largest']} windows")
    with tempfile.TemporaryDirectory(prefix="turnscribe-bench-") as tmp:
        for seconds in settings.long_form_s:
            row["long_form"].append(long_form := measure_long_form(bench, seconds, Path(tmp)))
            done(f"{seconds:g} s file: {long_form['real_time_x']:.0f}× real time")
        if settings.many_files:
            row["many_files"] = many = measure_many_files(bench, settings.many_files, settings.many_files_s, Path(tmp))
            done(f"{settings.many_files} files of {settings.many_files_s:g} s: {many['throughput_x']:.0f}× real time")


def _release(bench: Bench) -> None:
    """Free the backend's GPU memory before the next one loads (vLLM reserves a share of what is free)."""
    del bench.decoder, bench.pipeline
    gc.collect()
    if bench.cuda:
        import torch

        torch.cuda.empty_cache()


def _x(value: float) -> str:
    return f"{value:,.0f}×" if value >= 10 else f"{value:.1f}×"


def render(result: dict[str, Any]) -> str:
    """Markdown tables: this machine next to the model card's RTX 3090, then the long-form stage breakdown."""
    info = result["machine"]
    where = info.get("gpu") or f"CPU ({info['cpu']})"
    blocks = []
    for name, backend in result["backends"].items():
        if "skipped" in backend:
            continue
        speed = [k for k, v in backend["speed"].items() if v]
        label = f"{where}, {name} {backend['dtype']}" + (f" ({', '.join(speed)})" if speed else "")
        lines = [f"| 28 s clips / files | {label} | RTX 3090 (model card) |", "|---|---:|---:|"]
        # The card's rows stay in the table even where this run skipped them (--quick, --concurrency).
        measured = {row["concurrency"]: _x(row["throughput_x"]) for row in backend["clips"]}
        for c in sorted(set(measured) | set(MODEL_CARD_3090["clips"])):
            lines.append(f"| {c} concurrent | {measured.get(c, '–')} | {MODEL_CARD_3090['clips'].get(c, '–')} |")
        if backend["largest_batch"] and backend["largest_batch"]["best"]:
            best = backend["largest_batch"]["best"]
            lines.append(
                f"| batch of {best['batch']} (largest fitting: {backend['largest_batch']['largest']}) "
                f"| {_x(best['throughput_x'])} | – |"
            )
        files = {round(row["audio_s"]): _x(row["real_time_x"]) for row in backend["long_form"]}
        for seconds in sorted(set(files) | set(MODEL_CARD_3090["long_form"])):
            card = MODEL_CARD_3090["long_form"].get(seconds, "–")
            lines.append(f"| {_duration(seconds)} file, end to end | {files.get(seconds, '–')} | {card} |")
        if many := backend.get("many_files"):
            lines.append(
                f"| {many['files']} × {_duration(many['file_s'])} files at once, end to end "
                f"({many['audio_processes']} audio processes) | {_x(many['throughput_x'])} | – |"
            )
        stages = list(backend["long_form"][0]["stages_s"]) if backend["long_form"] else []
        if stages:
            lines += [
                "",
                "| file | " + " | ".join(f"{s.replace('_', ' ')} s" for s in stages) + " | wall s | peak GPU GiB |",
            ]
            lines.append("|---" + "|---:" * (len(stages) + 2) + "|")
            for row in backend["long_form"]:
                peak = "–" if row["peak_gpu_gib"] is None else f"{row['peak_gpu_gib']:.1f}"
                cells = " | ".join(f"{row['stages_s'][s]:.2f}" for s in stages)
                lines.append(f"| {_duration(row['audio_s'])} | {cells} | {row['wall_s']:.1f} | {peak} |")
        if backend["largest_batch"] and backend["largest_batch"]["tried"]:
            lines += [
                "",
                "| 28 s windows | × real time | features s | encoder s | ms per decoding step | peak GPU GiB |",
                "|---:|---:|---:|---:|---:|---:|",
            ]
            for row in backend["largest_batch"]["tried"]:
                lines.append(
                    f"| {row['batch']} | {_x(row['throughput_x'])} | {row['features_s']:.2f} | {row['encoder_s']:.2f} "
                    f"| {row['decode_ms_per_step']:.1f} | {row['peak_gpu_gib']:.1f} |"
                )
        blocks.append("\n".join(lines))
    settings = result["settings"]
    skipped = "; ".join(f"{n}: {b['skipped']}" for n, b in result["backends"].items() if "skipped" in b)
    ran = [b for b in result["backends"].values() if "skipped" not in b]
    model = ran[0]["model"] if ran else "no backend ran"
    batches = ", ".join(f"{n} {b['batch_size']}" for n, b in result["backends"].items() if "skipped" not in b)
    blocks.append(
        f"{model}; every window forced to {settings['tokens_per_28s']} tokens per 28 s; batch size "
        f"{batches or '–'}; embedder {settings['embedder']}. "
        f"{where}, torch {info['torch']}, transformers {info['transformers']}, {info['date']}."
        + (f" Not run: {skipped}." if skipped else "")
    )
    return "\n\n".join(blocks)


def _duration(seconds: float) -> str:
    return (
        f"{seconds / 3600:g} h" if seconds >= 3600 else f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"
    )


def bench_command(
    model: Annotated[str | None, typer.Option(help="A checkpoint instead of random full-size weights.")] = None,
    tiny: Annotated[bool, typer.Option(help="A tiny random model (CPU smoke test).")] = False,
    backend: Annotated[
        list[str] | None,
        typer.Option(help="transformers or vllm (needs --model); repeatable. Default: each one that can run here."),
    ] = None,
    quick: Annotated[
        bool, typer.Option(help="Few clips, one 1-minute file, two 30 s files at once, no batch search.")
    ] = False,
    device: options.Device = "auto",
    fast: options.Fast = False,
    batch_size: options.BatchSize = 0,
    concurrency: Annotated[list[int] | None, typer.Option(help="Concurrent 28 s streams; repeatable.")] = None,
    long_form: Annotated[
        list[float] | None, typer.Option(help="Long-form file lengths in seconds; repeatable.")
    ] = None,
    many_files: Annotated[
        int | None, typer.Option(min=0, help="Files at once in the many-files measurement (default 8; 0: skip).")
    ] = None,
    batch_search: Annotated[
        bool | None,
        typer.Option(help="Look for the largest batch that fits (on CUDA; default: on, off with --quick)."),
    ] = None,
    tokens_per_28s: Annotated[int, typer.Option(min=1, help="Forced tokens per 28 s window.")] = 180,
    embedder: options.Embedder = "resemblyzer",
    json_path: Annotated[Path | None, typer.Option("--json", help="Also write the results here as JSON.")] = None,
) -> None:
    """Measure throughput, long-form speed and each stage's cost; print JSON and a table."""
    if "," in device or device.strip() == "cuda:all":
        raise typer.BadParameter("the benchmark measures one device", param_hint="--device")
    from .decoders.transformers import pick_device

    try:
        pick_device(device)  # a GPU that is not there fails here, not after the benchmark has started
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--device") from None
    settings = BenchSettings.quick() if quick else BenchSettings()
    overrides: dict[str, Any] = {
        "size": "tiny" if tiny else "full",
        "model": model,
        "device": device,
        "fast": fast,
        "batch_size": batch_size or None,
        "tokens_per_28s": tokens_per_28s,
        "embedder": embedder,
    }
    if backend:
        for name in backend:
            if name not in BACKENDS:
                raise typer.BadParameter(f"{name!r}: choose from {', '.join(BACKENDS)}", param_hint="--backend")
            if reason := unavailable(name, replace(settings, model=model)):
                raise typer.BadParameter(f"{name}: {reason}", param_hint="--backend")
        overrides["backends"] = tuple(dict.fromkeys(backend))
    if concurrency:
        overrides["concurrency"] = tuple(concurrency)
    if long_form:
        overrides["long_form_s"] = tuple(long_form)
    if many_files is not None:
        overrides["many_files"] = many_files
    if batch_search is not None:
        overrides["find_largest_batch"] = batch_search

    def save(result: dict[str, Any]) -> None:
        if json_path:  # rewritten after each measurement: a run stopped at a time limit keeps what it measured
            partial = json_path.with_name(f".{json_path.name}.partial")
            partial.write_text(json.dumps(result, indent=2))
            partial.replace(json_path)  # atomic: a kill mid-write leaves the previous complete file

    result = run(replace(settings, **overrides), log=lambda line: typer.echo(line, err=True), on_update=save)
    save(result)
    typer.echo(json.dumps(result, indent=2))
    typer.echo(render(result))
