"""Checkpoint layouts of Cohere Transcribe models and how to load each with native transformers classes.

Two layouts exist:

* ``native``: what transformers' ``cohere_asr`` writes: ``encoder_config``, ``vocab_size``, …
* ``original``: the base model's NeMo-style layout (the form the model card's ``fix_for_vllm.py``
  edits and its remote code reads): config keys ``encoder``, ``transf_decoder``, ``head``,
  ``preprocessor``; original weight names; the extended vocabulary recorded in ``head.num_classes``.
  Native ``CohereAsrConfig`` ignores those keys and would build a 16384-token model: a size
  mismatch on load. We translate the config here; transformers' conversion mapping for
  ``cohere_asr`` renames the weights.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .types import TurnscribeError

Layout = Literal["native", "original"]
ORIGINAL_KEYS = ("encoder", "transf_decoder", "head")
# Names of the token-embedding tensor in each layout (with or without a wrapper's "model." prefix).
_EMBEDDING_NAMES = (
    "model.decoder.embed_tokens.weight",
    "decoder.embed_tokens.weight",
    "transf_decoder._embedding.token_embedding.weight",
    "model.transf_decoder._embedding.token_embedding.weight",
)


class CheckpointError(TurnscribeError):
    pass


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    layout: Layout
    config: dict[str, Any]


def resolve_model_dir(model: str | os.PathLike[str], revision: str | None = None) -> Path:
    """A local folder as is; anything else is a hub id, downloaded (or found in the cache) as a snapshot."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    text = str(model)
    if path.exists() or text.startswith((".", "/", "~")) or text.count("/") != 1:
        raise CheckpointError(f"Model {text!r} is neither a folder with a checkpoint nor a hub id like 'org/name'.")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(text, revision=revision))
    except Exception as e:  # the hub client raises many types: offline, not found, gated, …
        raise CheckpointError(
            f"Could not fetch model {text!r} from the hub ({type(e).__name__}: {e}). "
            "Check the id and your network, or download it once and pass the local folder with --model PATH."
        ) from e


def read_checkpoint(path: Path) -> Checkpoint:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{path} has no config.json: not a transformers checkpoint folder.")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{config_file} is not valid JSON: {e}") from e
    return Checkpoint(path, detect_layout(config, path), config)


def detect_layout(config: dict[str, Any], path: Path | str = "") -> Layout:
    if "encoder_config" in config and config.get("model_type") == "cohere_asr":
        return "native"
    if all(k in config for k in ORIGINAL_KEYS) and "config_dict" in (config.get("transf_decoder") or {}):
        return "original"
    raise CheckpointError(
        f"{path or 'The checkpoint'} is neither a native transformers `cohere_asr` checkpoint (config with "
        "`encoder_config`) nor a Cohere Transcribe checkpoint in its original layout (config with `encoder`, "
        f"`transf_decoder`, `head`). Found config keys: {', '.join(sorted(config)) or 'none'}. "
        "For a model with its own code, pass trust_remote_code (--trust-remote-code)."
    )


@contextmanager
def open_weights(file: Path) -> Iterator[Any]:
    """`safe_open` of a *.safetensors file; one that is not readable as such is a CheckpointError that says why
    it may be (safetensors' own words, "header too large", do not)."""
    from safetensors import SafetensorError, safe_open

    try:
        handle = safe_open(str(file), framework="pt")
    except (SafetensorError, OSError) as e:
        raise CheckpointError(
            f"{file} is not readable as safetensors ({e}): a Git LFS pointer (a clone without git-lfs: run "
            "`git lfs pull` in the folder) or a cut-off download? Fetch the file again."
        ) from e
    with handle as f:
        yield f


def check_weights(path: Path) -> None:
    """Every *.safetensors file in `path` opens (headers only): refused here, not by a traceback from the loader."""
    for file in sorted(path.glob("*.safetensors")):
        with open_weights(file):
            pass


def embedding_rows(path: Path) -> int | None:
    """Vocabulary size as the weights have it (the only number that cannot be stale)."""
    files = sorted(path.glob("*.safetensors"))
    for file in files:
        with open_weights(file) as f:
            for name in _EMBEDDING_NAMES:
                if name in f.keys():  # noqa: SIM118 (safe_open has no __contains__)
                    return int(f.get_slice(name).get_shape()[0])
    return None


def _generation_ids(path: Path) -> dict[str, Any]:
    file = path / "generation_config.json"
    if not file.is_file():
        return {}
    data = json.loads(file.read_text())
    keys = ("pad_token_id", "eos_token_id", "bos_token_id", "decoder_start_token_id")
    return {k: data[k] for k in keys if isinstance(data.get(k), int)}


def native_config_from_original(config: dict[str, Any], path: Path) -> Any:
    """Translate the original layout's config into a transformers ``CohereAsrConfig``."""
    from transformers import CohereAsrConfig

    try:
        enc = config["encoder"]
        dec = config["transf_decoder"]["config_dict"]
        pre = config.get("preprocessor") or {}
        vocab: int = (
            embedding_rows(path) or config["head"].get("num_classes") or dec.get("vocab_size") or config["vocab_size"]
        )
        d_model = int(enc["d_model"])
        encoder_config = {
            "hidden_size": d_model,
            "num_hidden_layers": int(enc["n_layers"]),
            "num_attention_heads": int(enc["n_heads"]),
            "intermediate_size": d_model * int(enc.get("ff_expansion_factor", 4)),
            "conv_kernel_size": int(enc.get("conv_kernel_size", 9)),
            "subsampling_factor": int(enc.get("subsampling_factor", 8)),
            "subsampling_conv_channels": int(enc.get("subsampling_conv_channels", 256)),
            "num_mel_bins": int(enc.get("feat_in") or pre.get("features", 128)),
            "max_position_embeddings": int(enc.get("pos_emb_max_len", 5000)),
        }
        return CohereAsrConfig(
            vocab_size=int(vocab),
            hidden_size=int(dec["hidden_size"]),
            num_hidden_layers=int(dec["num_layers"]),
            num_attention_heads=int(dec["num_attention_heads"]),
            intermediate_size=int(dec["inner_size"]),
            hidden_act=str(dec.get("hidden_act", "relu")).lower(),
            max_position_embeddings=int(dec.get("max_sequence_length", 1024)),
            encoder_config=encoder_config,
            **_generation_ids(path),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}/config.json is in the original layout but incomplete: {e!r}") from e


def feature_extractor_from_original(config: dict[str, Any]) -> Any:
    """The mel front end from the original ``preprocessor`` section (no remote code needed)."""
    from transformers import CohereAsrFeatureExtractor

    pre = config.get("preprocessor") or {}
    rate = int(pre.get("sample_rate", 16000))
    return CohereAsrFeatureExtractor(
        feature_size=int(pre.get("features", 128)),
        sampling_rate=rate,
        hop_length=round(float(pre.get("window_stride", 0.01)) * rate),
        win_length=round(float(pre.get("window_size", 0.025)) * rate),
        n_fft=int(pre.get("n_fft", 512)),
    )


# --- fix-checkpoint: the model card's three edits that make an original-layout checkpoint servable by vLLM ---

_WEIGHT_PREFIX = "model."
_WEIGHT_INDEX = "model.safetensors.index.json"


@dataclass(frozen=True)
class CheckpointFix:
    file: str
    change: str


def plan_vllm_fixes(path: Path) -> list[CheckpointFix]:
    """What `fix_for_vllm` would change; empty when the checkpoint is already fixed (the edits are idempotent)."""
    fixes: list[CheckpointFix] = []
    tokenizer_config = _read_json(path / "tokenizer_config.json")
    if isinstance(tokenizer_config.get("extra_special_tokens"), list):
        fixes.append(CheckpointFix("tokenizer_config.json", "drop the legacy extra_special_tokens list"))
    checkpoint = read_checkpoint(path)
    if checkpoint.layout != "original":
        raise CheckpointError(f"{path} is in the native layout already; fix-checkpoint edits original-layout ones")
    vocab = embedding_rows(path)
    if vocab is None:
        raise CheckpointError(f"{path} has no token-embedding tensor in its *.safetensors files")
    for key, current in _vocab_fields(checkpoint.config):
        if current != vocab:
            fixes.append(CheckpointFix("config.json", f"set {key} from {current} to {vocab}"))
    for file in sorted(path.glob("*.safetensors")):
        with open_weights(file) as f:
            names = list(f.keys())
        prefixed = sum(n.startswith(_WEIGHT_PREFIX) for n in names)
        counters = sum(n.endswith("num_batches_tracked") for n in names)
        if prefixed:
            fixes.append(CheckpointFix(file.name, f"strip the '{_WEIGHT_PREFIX}' prefix from {prefixed} tensor names"))
        if counters:
            fixes.append(CheckpointFix(file.name, f"drop {counters} BatchNorm num_batches_tracked tensors"))
    # Checked on its own: a run interrupted after the last shard was rewritten leaves only the index to do.
    weight_map = _read_json(path / _WEIGHT_INDEX).get("weight_map", {})
    if stale := [n for n in weight_map if _fixed_name(n) != n or n.endswith("num_batches_tracked")]:
        fixes.append(CheckpointFix(_WEIGHT_INDEX, f"rename or drop {len(stale)} tensor names"))
    return fixes


def fix_for_vllm(path: Path, *, dry_run: bool = False) -> list[CheckpointFix]:
    """Apply the card's `fix_for_vllm.py` edits in place: each file is written to a temporary file, checked
    against the original, then swapped in, so an interrupted run leaves every file whole."""
    fixes = plan_vllm_fixes(path)
    if dry_run or not fixes:
        return fixes
    files = {fix.file for fix in fixes}
    if "tokenizer_config.json" in files:
        data = _read_json(path / "tokenizer_config.json")
        del data["extra_special_tokens"]
        _replace_json(path / "tokenizer_config.json", data)
    if "config.json" in files:
        config = read_checkpoint(path).config
        vocab = embedding_rows(path)
        config["head"]["num_classes"] = vocab
        config["transf_decoder"]["config_dict"]["vocab_size"] = vocab
        _replace_json(path / "config.json", config)
    for name in sorted(files - {"tokenizer_config.json", "config.json", _WEIGHT_INDEX}):
        _rewrite_weights(path / name)
    if _WEIGHT_INDEX in files:
        _update_weight_index(path)
    if remaining := plan_vllm_fixes(path):
        raise CheckpointError(f"fix-checkpoint did not converge; still to do: {remaining}")
    return fixes


def _vocab_fields(config: dict[str, Any]) -> list[tuple[str, Any]]:
    return [
        ("head.num_classes", (config.get("head") or {}).get("num_classes")),
        ("transf_decoder.config_dict.vocab_size", config["transf_decoder"]["config_dict"].get("vocab_size")),
    ]


def _fixed_name(name: str) -> str:
    return name.removeprefix(_WEIGHT_PREFIX)


def _rewrite_weights(file: Path) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with open_weights(file) as f:
        metadata = f.metadata() or {}
        kept = [n for n in f.keys() if not n.endswith("num_batches_tracked")]  # noqa: SIM118
        if len({_fixed_name(n) for n in kept}) != len(kept):  # "model.x" next to "x": one would be lost
            raise CheckpointError(f"{file.name}: stripping '{_WEIGHT_PREFIX}' would make two tensors share a name")
        tensors = {_fixed_name(n): f.get_tensor(n) for n in kept}
    with _swapped_in(file) as tmp:
        save_file(tensors, str(tmp), metadata={**metadata, "format": "pt"})
        with safe_open(str(tmp), framework="pt") as written:
            same = set(written.keys()) == set(tensors) and all(  # noqa: SIM118
                written.get_tensor(n).equal(t) for n, t in tensors.items()
            )
        if not same:
            raise CheckpointError(f"{file.name}: the rewritten weights did not read back identical; nothing changed")


def _update_weight_index(path: Path) -> None:
    """Sharded checkpoints name every tensor in model.safetensors.index.json: rename there too."""
    index_file = path / _WEIGHT_INDEX
    index = _read_json(index_file)
    weight_map = index.get("weight_map", {})
    index["weight_map"] = {
        _fixed_name(n): shard for n, shard in weight_map.items() if not n.endswith("num_batches_tracked")
    }
    if index["weight_map"] != weight_map:
        _replace_json(index_file, index)


def _read_json(file: Path) -> dict[str, Any]:
    if not file.is_file():
        return {}
    try:
        data = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{file} is not valid JSON: {e}") from e
    return data if isinstance(data, dict) else {}


def _replace_json(file: Path, data: dict[str, Any]) -> None:
    with _swapped_in(file) as tmp:
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        if json.loads(tmp.read_text()) != data:
            raise CheckpointError(f"{file.name}: the rewritten file did not read back identical; nothing changed")


@contextmanager
def _swapped_in(file: Path) -> Iterator[Path]:
    """A temporary file next to `file` for the block to write; it replaces `file` (a symlink into the hub cache
    itself, never the shared file it points to) when the block succeeds, and is removed when anything fails: a
    read-only folder, a full disk (a copy of the weights is as large as they are)."""
    tmp = file.with_name(f".{file.name}.tmp")
    try:
        yield tmp
        os.replace(tmp, file)
    except OSError as e:
        raise CheckpointError(
            f"Could not rewrite {file}: {e}. It is unchanged; run fix-checkpoint again once that is solved "
            "(the edits already done are kept: a second run does only what is left)."
        ) from e
    finally:
        tmp.unlink(missing_ok=True)
