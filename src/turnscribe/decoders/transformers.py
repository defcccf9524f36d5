"""Decoder backend on transformers: AutoProcessor + AutoModelForSpeechSeq2Seq, several windows per generate()."""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from ..checkpoint import (
    CheckpointError,
    check_weights,
    feature_extractor_from_original,
    native_config_from_original,
    read_checkpoint,
    resolve_model_dir,
)
from ..prompt import PromptTokenError, diarize_prompt_ids
from ..types import SAMPLE_RATE
from . import features, projection
from .base import DecoderError, WindowAudio, check_dtype
from .threads import OwnThread

DEFAULT_MODEL = "syvai/cohere-transcribe-diarize"
REPETITION_PENALTY = 1.2  # required by the card: without it 4-speaker outputs loop on one speaker token
MIN_CLIP_S = 1.0  # shorter clips are padded with silence: the mel front end and conv subsampling need frames
TOKENS_PER_SECOND = 13.5  # the card's max_new_tokens=400 for a 30 s clip, scaled to the window

CPU_BATCH_SIZE = 4  # on the CPU bigger batches only add padding: the cores are busy either way
MAX_AUTO_BATCH = 512
FEATURE_FRAMES_PER_SECOND = 100  # the mel front end's 10 ms hop

LogitsProcessorFactory = Callable[[Sequence[WindowAudio]], list[Any]]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SpeedOptions:
    """Speed-ups of the transformers backend. Each keeps the plain path's token ids (tests/test_fast.py).

    `generate()` already runs the encoder once per window: the decoder's cross-attention keys and values are
    computed at the first step and cached. `project_once` (on by default) does the same for the projection of
    the encoder's output to the decoder's width, which transformers repeats at every step (see projection.py).
    """

    attention: str | None = None  # attn_implementation ("sdpa", "eager"); None: transformers' default (sdpa)
    static_cache: bool = False  # a preallocated KV cache (generate's cache_implementation="static")
    compile: bool = False  # torch.compile the decoding step (generate's auto-compile; needs static_cache)
    # Log-mel features on the model's device, as whisper computes them (features.py). On the CPU they cost ~2.6 s
    # per hour of audio on one core, which the scheduler thread would spend between batches while the GPU waits.
    # The same features up to FFT rounding. False: always on the CPU.
    features_on_device: bool = True
    project_once: bool = True  # the encoder→decoder projection once per window, not at every step

    @classmethod
    def fast(cls, device: str) -> SpeedOptions:
        """The fast preset: SDPA everywhere; on CUDA also a static cache and a compiled step."""
        cuda = device.startswith("cuda")
        return cls(attention="sdpa", static_cache=cuda, compile=cuda)

    def __post_init__(self) -> None:
        if self.compile and not self.static_cache:
            raise ValueError("compile needs static_cache: generate() compiles only with a static KV cache")


@dataclass(frozen=True)
class WindowMemory:
    """Bytes one window adds to a batch's peak GPU memory, by where it goes (estimates, see window_memory)."""

    features: int
    subsampling: int
    encoder_layer: int
    decoder_cache: int

    @property
    def total(self) -> int:
        return self.features + self.subsampling + self.encoder_layer + self.decoder_cache


def window_memory(
    config: Any, *, window_s: float = 30.0, new_tokens: int | None = None, prompt_len: int = 9, dtype_bytes: int = 2
) -> WindowMemory:
    """Peak activation memory per window of a `CohereAsrConfig` model in inference (weights not included).

    The largest tensors: the conv subsampling's first feature maps (channels × time/2 × mels/2, input, output and
    mask alive at once), one conformer layer's feed-forward and attention scores at 1/8 of the frame rate, and
    the decoder's self- and cross-attention KV cache.
    """
    enc = config.encoder_config
    frames = math.ceil(window_s * FEATURE_FRAMES_PER_SECOND)
    steps = prompt_len + (new_tokens if new_tokens is not None else max_new_tokens_for(window_s))
    encoded = math.ceil(frames / enc.subsampling_factor)
    features = frames * enc.num_mel_bins * 4  # float32 before the cast
    subsampling = 3 * enc.subsampling_conv_channels * (frames // 2) * (enc.num_mel_bins // 2) * dtype_bytes
    encoder_layer = (
        encoded * (enc.intermediate_size + 4 * enc.hidden_size) * dtype_bytes
        + 2 * enc.num_attention_heads * encoded * encoded * 4  # content and position scores, float32 softmax
    )
    kv = 2 * config.num_hidden_layers * config.hidden_size * dtype_bytes
    decoder_cache = kv * (steps + encoded) + encoded * config.hidden_size * dtype_bytes + config.vocab_size * 4
    return WindowMemory(features, subsampling, encoder_layer, decoder_cache)


def batch_size_for_memory(
    free_bytes: int, per_window_bytes: int, *, headroom: float = 0.7, maximum: int = MAX_AUTO_BATCH
) -> int:
    """Windows per batch that fit in `headroom` of the free memory (allocator slack, fragmentation, the
    embedder), at least 1 and at most `maximum`."""
    if per_window_bytes <= 0:
        raise ValueError("per_window_bytes must be positive")
    return max(1, min(maximum, int(free_bytes * headroom) // per_window_bytes))


def pick_device(device: str = "auto") -> str:
    """'auto' is CUDA when there is a GPU, else the CPU. A CUDA device that PyTorch does not see is refused here,
    before anything loads: moving the weights there fails only once they are loaded (for a second copy, after the
    first), with an AssertionError or a RuntimeError that nothing reports as a user error."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except RuntimeError as e:  # "gpu", "cuda:x": torch's message lists twenty device types and never "auto"
        raise ValueError(f"device {device!r} is not a device name: use auto, cpu, cuda or cuda:N") from e
    if parsed.type == "cuda":
        _check_cuda_device(device)
    return device


def pick_dtype(device: str, dtype: str = "auto") -> Any:
    """The torch dtype to run the model in on `device` (as `pick_device` gives it). 'auto' is bfloat16 on a GPU
    that computes in it (compute capability 8.0, Ampere, and later), float16 on an older one (a T4, a V100:
    bfloat16 is emulated there, many times slower), float32 on the CPU."""
    import torch

    if check_dtype(dtype) != "auto":
        return getattr(torch, dtype)
    if not device.startswith("cuda"):
        return torch.float32
    return torch.bfloat16 if torch.cuda.get_device_capability(device)[0] >= 8 else torch.float16


def _check_cuda_device(device: str) -> None:
    import torch

    index = torch.device(device).index or 0
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if index >= count:
        seen = (
            f"{count} CUDA GPU(s), cuda:0 to cuda:{count - 1}"
            if count
            else "no CUDA GPU (no driver, or a CPU-only torch)"
        )
        raise ValueError(f"device {device!r}: PyTorch sees {seen}")


def max_new_tokens_for(duration_s: float) -> int:
    return math.ceil(duration_s * TOKENS_PER_SECOND) + 16


class TransformersDecoder:
    name = "transformers"

    def __init__(
        self,
        model: str | os.PathLike[str] = DEFAULT_MODEL,
        *,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int | None = None,
        max_new_tokens: int | None = None,
        trust_remote_code: bool = False,
        revision: str | None = None,
        logits_processor_factory: LogitsProcessorFactory | None = None,
        speed: SpeedOptions | None = None,
        loaded: tuple[Any, Any] | None = None,
    ) -> None:
        """`dtype`: see `pick_dtype`. `batch_size=None`: sized from free GPU memory on CUDA, CPU_BATCH_SIZE on the
        CPU. `loaded`: a
        (processor, model) pair already on `device` (benchmarks, tests), instead of loading `model`."""
        self.model_id = str(model)
        self.max_new_tokens = max_new_tokens  # None: sized to the longest window of each batch
        self.device = pick_device(device)
        self.dtype = pick_dtype(self.device, dtype)
        self.speed = speed or SpeedOptions()
        # Tests force scripted outputs through a logits processor; users may add their own constraints.
        self.logits_processor_factory = logits_processor_factory
        self.processor, self.model = loaded or load_model(
            model, self.device, self.dtype, trust_remote_code, revision, self.speed.attention
        )
        if loaded:  # features go in as the weights are (a float32 model in training, say, on a GPU)
            self.dtype = next(self.model.parameters()).dtype
        self.batch_size = batch_size or self.auto_batch_size()
        # Dither adds random noise to the features: fine in training, non-deterministic at inference.
        if hasattr(self.processor.feature_extractor, "dither"):
            self.processor.feature_extractor.dither = 0.0
        self.prompt_ids = cache(self._prompt_ids)
        self.prompt_ids("en")  # fail now, not at every window of every file, if tokenizer or weights do not fit
        self._view: projection.ProjectedView | None = None
        self._compiled_thread = (
            OwnThread("turnscribe-compiled", functools.partial(_use_device, self.device))
            if self.speed.compile
            else None
        )

    @property
    def generating_model(self) -> Any:
        """The module whose generate() `generate` calls: with `project_once` a view of `model` (its weights, the
        projection bypassed, see projection.py), else `model` itself."""
        if not (self.speed.project_once and projection.supports(self.model)):
            return self.model
        if self._view is None or self._view.source is not self.model or not self._view.current():
            self._view = projection.ProjectedView(self.model)
        return self._view.module

    def _prompt_ids(self, language: str) -> tuple[int, ...]:
        """The diarize prompt, refused if the weights have no row for one of its tokens: a tokenizer from another
        checkpoint (the diarize one with the base model's weights) would crash generate() with an IndexError on the
        CPU and, on CUDA, a device-side assert that breaks every later call in the process."""
        tok = self.processor.tokenizer
        ids = tuple(diarize_prompt_ids(language, tok.convert_tokens_to_ids, tok.unk_token_id))
        rows = _embedding_rows(self.model)
        if rows is not None and (outside := [i for i in ids if i >= rows]):
            raise PromptTokenError(
                f"The tokenizer and the weights of {self.model_id} do not match: the prompt tokens "
                f"{', '.join(tok.convert_ids_to_tokens(outside))} have ids {', '.join(map(str, outside))}, but the "
                f"weights hold only {rows} token rows. Are the tokenizer files and the weights from one checkpoint?"
            )
        return ids

    def auto_batch_size(self) -> int:
        """On CUDA the windows that fit in free memory (see window_memory); CPU_BATCH_SIZE elsewhere."""
        import torch

        if not self.device.startswith("cuda"):
            return CPU_BATCH_SIZE
        free, _ = torch.cuda.mem_get_info(torch.device(self.device))
        per_window = window_memory(self.model.config, dtype_bytes=torch.finfo(self.dtype).bits // 8).total
        return batch_size_for_memory(free, per_window)

    def decode(self, windows: Sequence[WindowAudio], language: str) -> list[str]:
        """The windows' token streams. A batch the GPU has no memory for is decoded in halves, and later batches
        are no larger than what fitted (`batch_size` drops; the scheduler reads it live): the memory estimate
        behind the automatic batch size is an estimate, and other processes may share the GPU."""
        import torch

        if not windows:
            return []
        try:
            new_tokens = self.generate_ids(windows, language)
        except Exception as error:
            if len(windows) == 1 or not _out_of_memory(error):
                raise
        else:
            return list(self.processor.tokenizer.batch_decode(new_tokens, skip_special_tokens=False))
        # Outside the except block, so that the traceback no longer holds the failed batch's tensors.
        half = (len(windows) + 1) // 2  # both halves at most this
        self.batch_size = min(self.batch_size, half)
        log.warning(
            "Out of GPU memory for a batch of %d windows; batches of at most %d from now on",
            len(windows),
            self.batch_size,
        )
        torch.cuda.empty_cache()  # the failed batch's cached blocks, for the halves and whoever shares the GPU
        return self.decode(windows[:half], language) + self.decode(windows[half:], language)

    def generate_ids(self, windows: Sequence[WindowAudio], language: str) -> Any:
        """The new token ids per window (prompt removed), as a CPU tensor padded with the pad id."""
        return self.generate(windows, language)[:, len(self.prompt_ids(language)) :].cpu()

    def _encode(self, inputs: dict[str, Any], options: dict[str, Any]) -> Any:
        """The encoder's projected outputs (projection.py), refused if they hold NaN or infinities.

        NaN anywhere, padded frames included, reaches every token: the decoder's cross-attention gives padded
        frames a weight of exactly 0, and 0 × NaN is NaN. Padded frames are fully masked rows of the encoder's
        attention, for which a fused SDPA kernel may return NaN where the math kernel returns zeros; with SDPA,
        such a kernel is turned off (`_turn_off_a_fused_attention_kernel`) and the batch encoded again."""
        import torch

        sdpa = self.model.get_encoder().config._attn_implementation == "sdpa"
        while True:
            encoded = projection.encode_projected(self.model, **inputs, **options)
            if bool(torch.isfinite(encoded.last_hidden_state).all()):
                return encoded
            if not (sdpa and _turn_off_a_fused_attention_kernel()):
                raise DecoderError(
                    "the encoder's output holds NaN or infinite values. transformers before 5.18 gives NaN for "
                    "padded frames with attn_implementation='eager' (use 'sdpa', the default, or a newer "
                    "transformers); with 'sdpa', every fused attention kernel was turned off and the math kernel "
                    "gave NaN too."
                )

    def log_mel(self, clips: Sequence[np.ndarray]) -> tuple[Any, Any]:
        """(input_features, attention_mask) of 16 kHz clips, padded on the right to the longest; on the model's
        device with `features_on_device` (see features.py), else on the CPU."""
        extractor = self.processor.feature_extractor
        device = self.device if self.speed.features_on_device else "cpu"
        if features.supports(extractor):
            return features.log_mel(extractor, clips, device)  # refuses clips the extractor would cut in chunks
        # Another extractor (remote code, dither on): its own __call__, on the CPU where every one works.
        out = extractor(
            clips, sampling_rate=SAMPLE_RATE, return_tensors="pt", padding="longest", return_attention_mask=True
        )
        return out["input_features"], out["attention_mask"]

    def generate(self, windows: Sequence[WindowAudio], language: str, **generate_options: Any) -> Any:
        """`model.generate()` on the windows with the diarize prompt, as `decode` runs it; `generate_options`
        go to it too (e.g. output_logits=True, return_dict_in_generate=True). With `compile`, on the decoder's
        own thread, whichever thread calls: the CUDA graphs of a compiled step belong to the thread that captured
        them, and torch before 2.12 replays them from another thread silently wrong (pytorch#123177); schedulers,
        benchmarks and copies on several GPUs call from threads of their own."""
        if self._compiled_thread is None:
            return self._generate(windows, language, **generate_options)
        return self._compiled_thread.run(self._generate, windows, language, **generate_options)

    def _generate(self, windows: Sequence[WindowAudio], language: str, **generate_options: Any) -> Any:
        import torch
        from transformers import LogitsProcessorList

        prompt = self.prompt_ids(language)
        min_len = int(MIN_CLIP_S * SAMPLE_RATE)
        clips = [
            w.samples if len(w.samples) >= min_len else np.pad(w.samples, (0, min_len - len(w.samples)))
            for w in windows
        ]
        input_features, attention_mask = self.log_mel(clips)
        longest = max(len(c) for c in clips) / SAMPLE_RATE
        budget = self.model.config.max_position_embeddings - len(prompt)
        if self.max_new_tokens is None:
            # A static cache keeps one size for every batch (no reallocation, no recompilation): a full window's.
            wanted = max_new_tokens_for(30.0 if self.speed.static_cache else longest)
        else:
            wanted = self.max_new_tokens
        # Decoder positions ignore padding, so every row shares the same prompt (no left padding).
        decoder_input_ids = torch.tensor([prompt] * len(windows), device=self.device)
        processors = self.logits_processor_factory(windows) if self.logits_processor_factory else []
        options: dict[str, Any] = {}
        if self.speed.static_cache:
            options["cache_implementation"] = "static"
            if not self.speed.compile:
                options["disable_compile"] = True  # generate() would compile on its own on a GPU
            elif not self.device.startswith("cuda"):
                options["compile_config"] = _compile_everywhere()
        model = self.generating_model
        with torch.inference_mode():
            inputs: dict[str, Any] = {
                "input_features": input_features.to(self.device, self.dtype),
                "attention_mask": attention_mask.to(self.device),
            }
            if model is not self.model:
                # The encoder and the projection once here; generate() then skips its own encoder call.
                wanted_outputs = ("output_attentions", "output_hidden_states")
                encoder_options = {k: v for k, v in generate_options.items() if k in wanted_outputs}
                inputs = {"encoder_outputs": self._encode(inputs, encoder_options)}
            out = model.generate(
                **inputs,
                decoder_input_ids=decoder_input_ids,
                # The card's prompt starts with <|startofcontext|>; saying so stops generate() prepending
                # the config's decoder_start_token_id in front of it.
                decoder_start_token_id=prompt[0],
                max_new_tokens=min(wanted, budget),
                do_sample=False,
                num_beams=1,
                repetition_penalty=REPETITION_PENALTY,
                logits_processor=LogitsProcessorList(processors),
                **options,
                **generate_options,
            )
        return out


# Allocation failures that do not come through PyTorch's allocator (which raises torch.OutOfMemoryError).
_OTHER_OUT_OF_MEMORY = ("out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED")


def _out_of_memory(error: Exception) -> bool:
    import torch

    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and any(text in str(error) for text in _OTHER_OUT_OF_MEMORY)


def _embedding_rows(model: Any) -> int | None:
    """How many token ids the model embeds; None for remote code that does not expose its embedding."""
    try:
        return int(model.get_input_embeddings().num_embeddings)
    except (AttributeError, NotImplementedError):
        return None


def _use_device(device: str) -> None:
    """The model's GPU as the thread's current device: graph capture and the static cache allocate there."""
    import torch

    if device.startswith("cuda:"):
        torch.cuda.set_device(torch.device(device))


def _turn_off_a_fused_attention_kernel() -> bool:
    """Turns off the next of PyTorch's fused SDPA kernels that is on (cuDNN, then memory-efficient; flash takes no
    mask, so padded batches never reach it), for the whole process, with a warning; False when none is left."""
    import torch

    kernels = (
        ("cuDNN", torch.backends.cuda.cudnn_sdp_enabled, torch.backends.cuda.enable_cudnn_sdp),
        (
            "memory-efficient",
            torch.backends.cuda.mem_efficient_sdp_enabled,
            torch.backends.cuda.enable_mem_efficient_sdp,
        ),
    )
    for name, enabled, enable in kernels:
        if enabled():
            enable(False)
            log.warning(
                "NaN in the encoder's output: PyTorch's %s attention kernel is now off in this process (it may "
                "return NaN for fully masked rows, which padded frames are); encoding the batch again",
                name,
            )
            return True
    return False


def _compile_everywhere() -> Any:
    """generate() compiles only on accelerators; this config asks it to on the CPU too (for tests)."""
    from transformers import CompileConfig

    config = CompileConfig(fullgraph=False, mode="default")
    config._compile_all_devices = True  # type: ignore[assignment]  # transformers: "for testing purposes"
    return config


def load_model(
    model: str | os.PathLike[str],
    device: str,
    dtype: Any,
    trust_remote_code: bool,
    revision: str | None,
    attention: str | None = None,
) -> tuple[Any, Any]:
    """Processor and model from a hub id or a folder, in either checkpoint layout (see checkpoint.py)."""
    from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor

    path = resolve_model_dir(model, revision)
    options: dict[str, Any] = {"dtype": dtype}
    if attention:
        options["attn_implementation"] = attention
    try:
        if trust_remote_code:
            processor, loaded = _load_with_remote_code(path, options)
        else:
            checkpoint = read_checkpoint(path)
            check_weights(path)
            if checkpoint.layout == "native":
                processor = AutoProcessor.from_pretrained(path)
                loaded, info = AutoModelForSpeechSeq2Seq.from_pretrained(path, output_loading_info=True, **options)
            else:
                processor = _original_processor(path, checkpoint.config)
                config = native_config_from_original(checkpoint.config, path)
                loaded, info = AutoModelForSpeechSeq2Seq.from_pretrained(
                    path, config=config, output_loading_info=True, **options
                )
            _check_loading_info(path, info)
    except CheckpointError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as e:
        raise CheckpointError(f"Could not load the model from {path}: {type(e).__name__}: {e}") from e
    return processor, loaded.to(device).eval()


def _load_with_remote_code(path: Path, options: dict[str, Any]) -> tuple[Any, Any]:
    """Processor and model from the checkpoint's own classes. That code is anyone's: whatever it raises (an
    ImportError for a package it needs, an AttributeError from a transformers release it was not written for)
    is a load error, with a hint where the native classes load the folder."""
    from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
        return processor, AutoModelForSpeechSeq2Seq.from_pretrained(path, trust_remote_code=True, **options)
    except Exception as e:
        try:
            hint = f" (turnscribe loads its {read_checkpoint(path).layout} layout without --trust-remote-code)"
        except CheckpointError:
            hint = ""
        raise CheckpointError(
            f"Could not load the model from {path} with its own code (--trust-remote-code){hint}: "
            f"{type(e).__name__}: {e}"
        ) from e


def _original_processor(path: Any, config: dict[str, Any]) -> Any:
    from transformers import AutoTokenizer, CohereAsrProcessor, PreTrainedTokenizerFast

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, KeyError, TypeError) as e:
        # A tokenizer_config naming a remote-code class: the tokenizer.json itself is all we need.
        log.info("AutoTokenizer failed (%s); reading tokenizer.json directly", e)
        tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(path / "tokenizer.json"))
    return CohereAsrProcessor(feature_extractor=feature_extractor_from_original(config), tokenizer=tokenizer)


def _check_loading_info(path: Any, info: dict[str, Any]) -> None:
    missing = [k for k in info.get("missing_keys", []) if "num_batches_tracked" not in k]
    mismatched = info.get("mismatched_keys", [])
    if missing or mismatched:
        raise CheckpointError(
            f"The weights in {path} do not fit the model its config describes: "
            f"{len(missing)} missing (e.g. {sorted(missing)[:3]}), {len(mismatched)} of another shape. "
            "Is this a Cohere Transcribe checkpoint?"
        )
