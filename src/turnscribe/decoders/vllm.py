"""Decoder backend on vLLM's Python engine: the windows of a batch go to the engine together, which batches them.

Checked against vLLM 0.33.0's source (see the README's vLLM section for what ran); only its public API is used:

* ``vllm.LLM(model=..., trust_remote_code=..., hf_overrides=..., **engine_args)``; ``LLM.get_tokenizer()``;
  ``LLM.generate(prompts, sampling_params, use_tqdm=False)`` with one ``SamplingParams`` per prompt, which returns
  one ``RequestOutput`` per prompt in prompt order (``RequestOutput.outputs[0].text``).
* ``vllm.inputs.TokensPrompt``: a TypedDict of ``prompt_token_ids`` and ``multi_modal_data``, audio given as
  ``{"audio": (samples, sampling_rate)}`` — what vLLM's own ``CohereAsrForConditionalGeneration.
  get_generation_prompt`` builds for its (non-diarize) prompt. Its multimodal processor sets
  ``skip_decoder_start_token``, so the ids reach the decoder exactly as given, and the audio becomes the encoder
  input. Being a TypedDict, it is a plain dict at run time.
* ``vllm.SamplingParams(temperature, repetition_penalty, skip_special_tokens, spaces_between_special_tokens,
  max_tokens)``.
* The async engine for servers (``AsyncLLM``, the ``EngineClient`` that ``vllm serve`` hands to plugins): the
  tokenizer from ``engine.renderer.get_tokenizer()`` (``renderer`` is an attribute of the ``EngineClient`` ABC;
  ``get_tokenizer`` itself is not), and ``generate(prompt, sampling_params, request_id)``, an async generator of
  ``RequestOutput``s of which the last is the finished one; cancelling the task that iterates it aborts the
  engine request (``AsyncLLM.generate`` catches the cancellation and calls ``abort``). (vLLM 0.33 logs once that
  raw prompts to the engine are deprecated in favour of prompts rendered by ``engine.renderer``; it still accepts
  them.)

vLLM's Cohere ASR feature extractor dithers its input (``preprocessor.dither``, 1e-5 unless the config says
otherwise), so the same window would not give the same features twice; ``from_pretrained`` switches it off with
``hf_overrides``, as the transformers backend does.

vLLM is imported only when a decoder is built from a checkpoint; request building, token budgets and output
extraction are plain functions, tested without vLLM.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from ..checkpoint import CheckpointError, plan_vllm_fixes, read_checkpoint, resolve_model_dir
from ..prompt import tokenizer_prompt_ids
from ..types import SAMPLE_RATE
from .base import DecoderError, WindowAudio
from .transformers import DEFAULT_MODEL, MIN_CLIP_S, REPETITION_PENALTY, max_new_tokens_for

VLLM_MISSING = (
    "The vLLM backend needs vLLM, which is not installed: pip install 'turnscribe[vllm]' "
    "(Linux, Python >= 3.11, an NVIDIA GPU)."
)
DEFAULT_BATCH_SIZE = 64
"""Windows handed to the engine per call; vLLM schedules them itself, so more is better, up to memory for results."""
GPU_MEMORY_UTILIZATION = 0.55
"""The model card's launch setting: leaves room on a 24 GB card for the speaker embedder on the same GPU."""

SamplingParamsFactory = Callable[..., Any]


def import_vllm() -> ModuleType:
    try:
        import vllm
    except ImportError as e:
        raise DecoderError(f"{VLLM_MISSING} ({e})") from e
    return vllm


@dataclass(frozen=True)
class WindowRequest:
    """One window as the engine gets it: the diarize prompt, the audio and a token budget."""

    prompt_token_ids: tuple[int, ...]
    samples: np.ndarray
    max_tokens: int

    def prompt(self) -> dict[str, Any]:
        """A ``vllm.inputs.TokensPrompt``: the decoder prompt as ids, the audio for the encoder."""
        return {
            "prompt_token_ids": list(self.prompt_token_ids),
            "multi_modal_data": {"audio": (self.samples, SAMPLE_RATE)},
        }

    def sampling_options(self) -> dict[str, Any]:
        """Keyword arguments of ``vllm.SamplingParams``: the model card's decoding (greedy, penalty 1.2)."""
        return {
            "temperature": 0.0,
            "repetition_penalty": REPETITION_PENALTY,
            # The speaker and timestamp tokens are the output; vLLM's default would strip them.
            "skip_special_tokens": False,
            # Tokens written back to back, as transformers decodes them (vLLM's default puts spaces between).
            "spaces_between_special_tokens": False,
            "max_tokens": self.max_tokens,
        }


def build_requests(
    windows: Sequence[WindowAudio], prompt_token_ids: Sequence[int], max_tokens: int | None = None
) -> list[WindowRequest]:
    """One request per window; each window's budget sized to its own length (13.5 tokens/s) unless fixed."""
    min_len = int(MIN_CLIP_S * SAMPLE_RATE)
    requests = []
    for window in windows:
        samples = np.asarray(window.samples, dtype=np.float32)
        if len(samples) < min_len:  # the mel front end and the conv subsampling need frames
            samples = np.pad(samples, (0, min_len - len(samples)))
        budget = max_tokens or max_new_tokens_for(window.span.duration)
        requests.append(WindowRequest(tuple(prompt_token_ids), samples, budget))
    return requests


def output_text(output: Any) -> str:
    """The generated text of a ``RequestOutput`` (special tokens kept): its one completion."""
    completions = getattr(output, "outputs", None)
    if not completions:
        raise DecoderError(f"vLLM returned no completion for a window: {output!r}")
    return str(completions[0].text)


def servable_checkpoint(model: str | os.PathLike[str], revision: str | None = None) -> Path:
    """The checkpoint folder, if vLLM can load it: vLLM's Cohere ASR model reads the original layout, with the
    model card's three edits applied (`turnscribe fix-checkpoint`)."""
    path = resolve_model_dir(model, revision)
    if read_checkpoint(path).layout != "original":
        raise CheckpointError(
            f"vLLM's Cohere ASR model loads original-layout checkpoints only: {path} is in the native layout"
        )
    fixes = plan_vllm_fixes(path)  # its other errors (unreadable weights, no embedding tensor) name their cause
    if fixes:
        todo = "; ".join(f"{f.file}: {f.change}" for f in fixes)
        raise CheckpointError(
            f"{path} needs the model card's vLLM edits first: turnscribe fix-checkpoint {path} ({todo})"
        )
    return path


def no_dither_overrides(path: Path) -> dict[str, Any]:
    """``hf_overrides`` for ``vllm.LLM`` that switch the mel front end's dither off. vLLM replaces a dict-valued
    config entry whole, so this is the checkpoint's own ``preprocessor`` with ``dither`` set to 0."""
    preprocessor = json.loads((path / "config.json").read_text()).get("preprocessor", {})
    return {"preprocessor": {**preprocessor, "dither": 0.0}}


class _EngineRequests:
    """What both engines share: the diarize prompt from the engine's tokenizer, and the requests for a batch."""

    def __init__(
        self,
        tokenizer: Any,
        *,
        model_id: str,
        batch_size: int,
        max_tokens: int | None,
        sampling_params: SamplingParamsFactory | None,
    ) -> None:
        self.model_id = model_id
        self.batch_size = batch_size
        self.max_tokens = max_tokens  # None: sized to each window
        # vllm.SamplingParams unless given (tests record the options instead).
        self._sampling_params = sampling_params
        self.prompt_ids = cache(lambda language: tuple(tokenizer_prompt_ids(tokenizer, language)))
        self.prompt_ids("en")  # fail now, not at the first request, if this is not a diarize checkpoint

    def requests(self, windows: Sequence[WindowAudio], language: str) -> list[tuple[dict[str, Any], Any]]:
        make = self._sampling_params or import_vllm().SamplingParams
        return [
            (r.prompt(), make(**r.sampling_options()))
            for r in build_requests(windows, self.prompt_ids(language), self.max_tokens)
        ]


class VllmDecoder(_EngineRequests):
    """The Decoder Protocol on ``vllm.LLM``: all windows of a batch in one ``generate`` call."""

    name = "vllm"

    def __init__(
        self,
        llm: Any,
        *,
        model_id: str,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_tokens: int | None = None,
        sampling_params: SamplingParamsFactory | None = None,
    ) -> None:
        super().__init__(
            llm.get_tokenizer(),
            model_id=model_id,
            batch_size=batch_size,
            max_tokens=max_tokens,
            sampling_params=sampling_params,
        )
        self.llm = llm

    @classmethod
    def from_pretrained(
        cls,
        model: str | os.PathLike[str] = DEFAULT_MODEL,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_tokens: int | None = None,
        trust_remote_code: bool = False,
        revision: str | None = None,
        sampling_params: SamplingParamsFactory | None = None,
        **engine_args: Any,
    ) -> VllmDecoder:
        """Start vLLM's engine on a (fixed) checkpoint; `engine_args` go to ``vllm.LLM`` (e.g. max_num_seqs).
        `sampling_params` builds each window's ``SamplingParams`` from turnscribe's options (the benchmark fixes
        the output length with it)."""
        vllm = import_vllm()
        path = servable_checkpoint(model, revision)
        engine_args.setdefault("gpu_memory_utilization", GPU_MEMORY_UTILIZATION)
        engine_args.setdefault("hf_overrides", no_dither_overrides(path))
        llm = vllm.LLM(model=str(path), trust_remote_code=trust_remote_code, **engine_args)
        return cls(
            llm, model_id=str(model), batch_size=batch_size, max_tokens=max_tokens, sampling_params=sampling_params
        )

    def decode(self, windows: Sequence[WindowAudio], language: str) -> list[str]:
        if not windows:
            return []
        prompts, params = zip(*self.requests(windows, language))
        outputs = self.llm.generate(list(prompts), list(params), use_tqdm=False)
        if len(outputs) != len(windows):
            raise DecoderError(f"vLLM returned {len(outputs)} outputs for {len(windows)} windows")
        return [output_text(o) for o in outputs]


class AsyncVllmDecoder(_EngineRequests):
    """The same requests on vLLM's async engine (``AsyncLLM``, the ``EngineClient`` of ``vllm serve``).

    Each window is its own engine request, so vLLM batches the windows of every recording in flight together.
    ``generate`` is a coroutine for the engine's event loop; ``decode`` is the Decoder Protocol's blocking call,
    for a worker thread (the turnscribe Pipeline is synchronous): it runs ``generate`` on that loop and waits.
    The Pipeline itself uses ``submit`` (a future per window): a failed window is lost alone, and a stopped run
    cancels its windows in flight, which vLLM aborts.
    """

    name = "vllm-async"

    def __init__(
        self,
        engine: Any,
        tokenizer: Any,
        loop: asyncio.AbstractEventLoop,
        *,
        model_id: str,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_tokens: int | None = None,
        sampling_params: SamplingParamsFactory | None = None,
    ) -> None:
        super().__init__(
            tokenizer, model_id=model_id, batch_size=batch_size, max_tokens=max_tokens, sampling_params=sampling_params
        )
        self.engine = engine
        self.loop = loop

    @classmethod
    async def for_engine(cls, engine: Any, *, model_id: str, **options: Any) -> AsyncVllmDecoder:
        """Bound to the running loop (the server's), with the engine's own tokenizer."""
        tokenizer = engine.renderer.get_tokenizer()
        return cls(engine, tokenizer, asyncio.get_running_loop(), model_id=model_id, **options)

    async def generate(self, windows: Sequence[WindowAudio], language: str) -> list[str]:
        requests = [asyncio.ensure_future(self._generate_one(*r)) for r in self.requests(windows, language)]
        try:
            return list(await asyncio.gather(*requests))
        finally:
            # A failed window fails the batch (the pipeline then retries its windows alone): cancelling the others
            # makes vLLM abort their engine requests instead of decoding them for nobody.
            for request in requests:
                request.cancel()

    async def _generate_one(self, prompt: dict[str, Any], params: Any) -> str:
        final = None
        async for output in self.engine.generate(prompt, params, f"turnscribe-{uuid.uuid4().hex}"):
            final = output  # outputs are cumulative: the last one is the finished request
        if final is None:
            raise DecoderError("vLLM ended a request without any output")
        return output_text(final)

    def decode(self, windows: Sequence[WindowAudio], language: str) -> list[str]:
        self._refuse_the_loops_thread()
        return asyncio.run_coroutine_threadsafe(self.generate(windows, language), self.loop).result()

    def submit(self, windows: Sequence[WindowAudio], language: str) -> list[Future[str]]:
        """One future per window (the `StreamingDecoder` protocol), for a worker thread: the pipeline then keeps
        windows flowing and, when its run stops (a client that left), cancels those in flight, which vLLM aborts."""
        self._refuse_the_loops_thread()
        return [
            asyncio.run_coroutine_threadsafe(self._generate_one(*r), self.loop)
            for r in self.requests(windows, language)
        ]

    def _refuse_the_loops_thread(self) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            # Waiting here for a coroutine scheduled on this very loop would never return.
            raise DecoderError("AsyncVllmDecoder blocks: call decode/submit from a worker thread, or await generate()")
