"""Decoder backend on transformers: AutoProcessor + AutoModelForSpeechSeq2Seq, several windows per generate()."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

import numpy as np

from ..checkpoint import (
    CheckpointError,
    feature_extractor_from_original,
    native_config_from_original,
    read_checkpoint,
    resolve_model_dir,
)
from ..prompt import diarize_prompt_ids
from ..types import SAMPLE_RATE
from .base import WindowAudio

DEFAULT_MODEL = "syvai/cohere-transcribe-diarize"
REPETITION_PENALTY = 1.2  # required by the card: without it 4-speaker outputs loop on one speaker token
MIN_CLIP_S = 1.0  # shorter clips are padded with silence: the mel front end and conv subsampling need frames
TOKENS_PER_SECOND = 13.5  # the card's max_new_tokens=400 for a 30 s clip, scaled to the window

LogitsProcessorFactory = Callable[[Sequence[WindowAudio]], list[Any]]
log = logging.getLogger(__name__)


def pick_device(device: str = "auto") -> tuple[str, Any]:
    """'auto' is CUDA in bfloat16 when there is a GPU, else the CPU in float32."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    return device, dtype


def max_new_tokens_for(duration_s: float) -> int:
    return math.ceil(duration_s * TOKENS_PER_SECOND) + 16


class TransformersDecoder:
    name = "transformers"

    def __init__(
        self,
        model: str | os.PathLike[str] = DEFAULT_MODEL,
        *,
        device: str = "auto",
        batch_size: int = 4,
        max_new_tokens: int | None = None,
        trust_remote_code: bool = False,
        revision: str | None = None,
        logits_processor_factory: LogitsProcessorFactory | None = None,
        loaded: tuple[Any, Any] | None = None,
    ) -> None:
        """`loaded`: (processor, model) already in memory on `device` (a model being trained); nothing is loaded."""
        self.model_id = str(model)
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens  # None: sized to the longest window of each batch
        self.device, self.dtype = pick_device(device)
        # Tests force scripted outputs through a logits processor; users may add their own constraints.
        self.logits_processor_factory = logits_processor_factory
        self.processor, self.model = loaded or load_model(model, self.device, self.dtype, trust_remote_code, revision)
        # Dither adds random noise to the features: fine in training, non-deterministic at inference.
        if hasattr(self.processor.feature_extractor, "dither"):
            self.processor.feature_extractor.dither = 0.0
        self.prompt_ids = cache(self._prompt_ids)

    def _prompt_ids(self, language: str) -> tuple[int, ...]:
        tok = self.processor.tokenizer
        return tuple(diarize_prompt_ids(language, tok.convert_tokens_to_ids, tok.unk_token_id))

    def decode(self, windows: Sequence[WindowAudio], language: str) -> list[str]:
        import torch
        from transformers import LogitsProcessorList

        if not windows:
            return []
        prompt = self.prompt_ids(language)
        min_len = int(MIN_CLIP_S * SAMPLE_RATE)
        clips = [
            w.samples if len(w.samples) >= min_len else np.pad(w.samples, (0, min_len - len(w.samples)))
            for w in windows
        ]
        # The feature extractor pads on the right and returns the attention mask the encoder needs.
        features = self.processor.feature_extractor(
            clips, sampling_rate=SAMPLE_RATE, return_tensors="pt", padding="longest", return_attention_mask=True
        )
        longest = max(len(c) for c in clips) / SAMPLE_RATE
        budget = self.model.config.max_position_embeddings - len(prompt)
        # Decoder positions ignore padding, so every row shares the same prompt (no left padding).
        decoder_input_ids = torch.tensor([prompt] * len(windows), device=self.device)
        processors = self.logits_processor_factory(windows) if self.logits_processor_factory else []
        with torch.inference_mode():
            out = self.model.generate(
                input_features=features["input_features"].to(self.device, self.dtype),
                attention_mask=features["attention_mask"].to(self.device),
                decoder_input_ids=decoder_input_ids,
                # The card's prompt starts with <|startofcontext|>; saying so stops generate() prepending
                # the config's decoder_start_token_id in front of it.
                decoder_start_token_id=prompt[0],
                max_new_tokens=min(self.max_new_tokens or max_new_tokens_for(longest), budget),
                do_sample=False,
                num_beams=1,
                repetition_penalty=REPETITION_PENALTY,
                logits_processor=LogitsProcessorList(processors),
            )
        new_tokens = out[:, len(prompt) :].cpu()
        return list(self.processor.tokenizer.batch_decode(new_tokens, skip_special_tokens=False))


def load_model(
    model: str | os.PathLike[str], device: str, dtype: Any, trust_remote_code: bool, revision: str | None
) -> tuple[Any, Any]:
    """Processor and model from a hub id or a folder, in either checkpoint layout (see checkpoint.py)."""
    from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor

    path = resolve_model_dir(model, revision)
    try:
        if trust_remote_code:
            processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
            loaded = AutoModelForSpeechSeq2Seq.from_pretrained(path, trust_remote_code=True, dtype=dtype)
        else:
            checkpoint = read_checkpoint(path)
            if checkpoint.layout == "native":
                processor = AutoProcessor.from_pretrained(path)
                loaded, info = AutoModelForSpeechSeq2Seq.from_pretrained(path, dtype=dtype, output_loading_info=True)
            else:
                processor = _original_processor(path, checkpoint.config)
                config = native_config_from_original(checkpoint.config, path)
                loaded, info = AutoModelForSpeechSeq2Seq.from_pretrained(
                    path, config=config, dtype=dtype, output_loading_info=True
                )
            _check_loading_info(path, info)
    except CheckpointError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as e:
        raise CheckpointError(f"Could not load the model from {path}: {type(e).__name__}: {e}") from e
    return processor, loaded.to(device).eval()


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
