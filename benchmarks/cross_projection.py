"""The encoder→decoder projection once per window (SpeedOptions.project_once) vs at every decoding step
(transformers' own generate()), side by side in one run, on the full-size decoder with random weights.

transformers' CohereAsrDecoder projects the encoder's whole output (frames × 1280 → 1024) at the start of every
forward call, though only the first step's result is used (see turnscribe/decoders/projection.py). Both arms run
the real backend (`TransformersDecoder.generate`) on the same batch of windows, each forced to emit the same
scripted stream (`--tokens` per 28 s, end-of-text after it), alternating arms `--repeats` times; the best time of
each arm counts. Decoder time = generate() − the encoder (forward hooks) − the log-mel features (timed around the
feature extractor). The encoder is cut to `--encoder-layers` conformer layers (default 1; 48 is the real depth)
to keep the run short: its depth changes nothing in the decoder's work, its width and frame count do.

    python benchmarks/cross_projection.py [--windows 4] [--seconds 28] [--tokens 180] [--threads 1] [--update-readme]
"""

from __future__ import annotations

import argparse
import datetime
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from readme_block import machine, publish

from turnscribe.decoders.base import WindowAudio
from turnscribe.decoders.transformers import SpeedOptions, TransformersDecoder
from turnscribe.random_model import ForcedTokens, noise_windows, random_model, scripted_window

START_MARKER, END_MARKER = "<!-- cross_projection:start -->", "<!-- cross_projection:end -->"


@dataclass
class Timing:
    total_s: float = 0.0
    encoder_s: float = 0.0
    features_s: float = 0.0
    steps: int = 0
    projections: int = 0

    @property
    def decoder_s(self) -> float:
        return self.total_s - self.encoder_s - self.features_s

    @property
    def step_ms(self) -> float:
        return 1000 * self.decoder_s / self.steps


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), else the platform's machine type."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    except OSError:
        names = []
    return names[0] if names else platform.machine()


class _TimedFeatures:
    """The feature extractor, its calls' time added to `timing.features_s`."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.timing = Timing()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return self.inner(*args, **kwargs)
        finally:
            self.timing.features_s += time.perf_counter() - started

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def measure(decoder: TransformersDecoder, windows: Sequence[WindowAudio], timing: Timing) -> Timing:
    model = decoder.model
    encoder_started = [0.0]

    def before(*_: Any) -> None:
        encoder_started[0] = time.perf_counter()

    def after(*_: Any) -> None:
        timing.encoder_s += time.perf_counter() - encoder_started[0]

    def projected(*_: Any) -> None:
        timing.projections += 1

    hooks = [
        model.get_encoder().register_forward_pre_hook(before),
        model.get_encoder().register_forward_hook(after),
        model.model.decoder.proj.register_forward_hook(projected),
    ]
    features = decoder.processor.feature_extractor
    assert isinstance(features, _TimedFeatures)
    features.timing = timing
    try:
        started = time.perf_counter()
        out = decoder.generate(windows, "en")
        timing.total_s = time.perf_counter() - started
    finally:
        for hook in hooks:
            hook.remove()
    timing.steps = out.shape[1] - len(decoder.prompt_ids("en"))
    return timing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", type=int, default=4, help="windows per generate() call (the CPU default)")
    parser.add_argument("--seconds", type=float, default=28.0, help="length of each window")
    parser.add_argument("--tokens", type=int, default=180, help="forced tokens per window (end-of-text after)")
    parser.add_argument("--encoder-layers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steady on a shared machine)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each arm, alternating; the best counts")
    parser.add_argument("--update-readme", action="store_true", help=f"write the result between {START_MARKER} …")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    started = time.perf_counter()
    loaded = random_model("full", encoder_layers=args.encoder_layers)
    print(f"built in {time.perf_counter() - started:.0f} s", flush=True)
    windows = noise_windows([args.seconds] * args.windows)
    arms = {"every step": SpeedOptions(project_once=False), "once per window": SpeedOptions(project_once=True)}
    decoders = {
        name: TransformersDecoder("random-full", device="cpu", speed=s, loaded=loaded) for name, s in arms.items()
    }
    tokenizer = loaded[0].tokenizer
    scripts = [scripted_window(tokenizer, args.seconds, args.tokens, seed=i) for i in range(args.windows)]
    for d in decoders.values():
        d.processor.feature_extractor = _TimedFeatures(d.processor.feature_extractor)
        d.logits_processor_factory = lambda _, d=d: [
            ForcedTokens(scripts, len(d.prompt_ids("en")), tokenizer.eos_token_id)
        ]
    # Warm-up: one short window through each arm (allocator, oneDNN kernels).
    for d in decoders.values():
        d.max_new_tokens = 4
        d.generate(noise_windows([2.0] * args.windows), "en")
        d.max_new_tokens = None

    best: dict[str, Timing] = {}
    for repeat in range(args.repeats):
        for name, d in decoders.items():
            t = measure(d, windows, Timing())
            print(
                f"run {repeat + 1} {name:>15}: {t.total_s:6.1f} s generate(), decoder {t.decoder_s:6.1f} s = "
                f"{t.step_ms:6.1f} ms/step over {t.steps} steps, projection calls {t.projections}",
                flush=True,
            )
            if name not in best or t.decoder_s < best[name].decoder_s:
                best[name] = t

    every, once = best["every step"], best["once per window"]
    encoder = loaded[1].config.encoder_config
    rows = [
        "| projection | decoder s | ms per step | projection calls | generate() s |",
        "|---|---:|---:|---:|---:|",
        *(
            f"| {name} | {t.decoder_s:.1f} | {t.step_ms:.1f} | {t.projections} | {t.total_s:.1f} |"
            for name, t in best.items()
        ),
    ]
    text = (
        "\n".join(rows)
        + f"\n\nDecoder time with the projection once per window: **{once.decoder_s / every.decoder_s:.2f}×** of "
        f"projecting at every step ({every.decoder_s / once.decoder_s:.2f}× as fast; the projection was "
        f"{1 - once.decoder_s / every.decoder_s:.0%} of decoding). "
        f"Full-size decoder (8 × 1024, {loaded[1].config.vocab_size:,} tokens, encoder width {encoder.hidden_size}), "
        f"random weights, float32 on the CPU; {args.windows} windows of {args.seconds:g} s in one generate() call, "
        f"{args.tokens} forced tokens each ({once.steps} steps with end-of-text); encoder cut to "
        f"{args.encoder_layers} layer(s) (its time is not counted). Best of {args.repeats} alternating run(s) per "
        f"arm. {cpu_name()} ({machine()}), torch threads: {args.threads}, Python {platform.python_version()}, "
        f"torch {torch.__version__}, {datetime.date.today().isoformat()}; `python benchmarks/cross_projection.py "
        f"--windows {args.windows} --seconds {args.seconds:g} --tokens {args.tokens} --threads {args.threads} "
        f"--repeats {args.repeats}`."
    )
    publish(text, update_readme=args.update_readme, start_marker=START_MARKER, end_marker=END_MARKER)


if __name__ == "__main__":
    main()
