"""Loading and decoding QA: checkpoints whose parts do not fit together, and fix-checkpoint on awkward folders."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from test_cli import flat, run
from test_pipeline import tone, write_wav
from tiny_model import DIARIZE_ONLY_TOKENS, build_checkpoint
from transformers import PreTrainedTokenizerFast

from turnscribe.checkpoint import CheckpointError, fix_for_vllm, plan_vllm_fixes
from turnscribe.decoders import backends
from turnscribe.decoders.base import WindowAudio
from turnscribe.decoders.transformers import TransformersDecoder, pick_device, pick_dtype
from turnscribe.prompt import PromptTokenError
from turnscribe.types import SAMPLE_RATE, WindowSpan


def test_a_checkpoint_without_the_diarize_tokens_is_refused_when_loaded(tmp_path):
    """Not at every window of every file (or every request of a server that started healthy)."""
    base = build_checkpoint(tmp_path / "base", "native", diarize_vocabulary=False)
    with pytest.raises(PromptTokenError, match=r"<\|diarize\|>: this is not a diarize checkpoint"):
        TransformersDecoder(base, device="cpu")


def test_a_tokenizer_with_tokens_the_weights_lack_is_refused_when_loaded(tmp_path):
    """The diarize tokens added to the base model's tokenizer only: prompt ids past the embedding's rows crashed
    generate() (IndexError on the CPU, a device-side assert on CUDA)."""
    base = build_checkpoint(tmp_path / "base", "native", diarize_vocabulary=False)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(base)
    rows = len(tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": sorted(DIARIZE_ONLY_TOKENS)})
    tokenizer.save_pretrained(base)
    with pytest.raises(PromptTokenError, match=rf"do not match: .*<\|diarize\|>.* only {rows} token rows"):
        TransformersDecoder(base, device="cpu")


def with_remote_code(source: Path, folder: Path) -> Path:
    """`source` with the card's kind of remote code: an auto_map to a module that needs a package not installed."""
    shutil.copytree(source, folder)
    (folder / "modeling_custom.py").write_text(
        "import package_this_environment_lacks\n"
        "from transformers import CohereAsrForConditionalGeneration\n\n\n"
        "class Model(CohereAsrForConditionalGeneration):\n    pass\n"
    )
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(
        json.dumps({**config, "auto_map": {"AutoModelForSpeechSeq2Seq": "modeling_custom.Model"}})
    )
    return folder


def test_remote_code_that_fails_is_a_clear_error_that_names_the_native_way(tiny_native, tiny_original, tmp_path):
    """An ImportError from the checkpoint's code was a traceback; a failure now says the layout loads natively."""
    needs_a_package = with_remote_code(tiny_native, tmp_path / "remote")
    with pytest.raises(CheckpointError, match=r"loads its native layout without --trust-remote-code\): ImportError"):
        TransformersDecoder(needs_a_package, device="cpu", trust_remote_code=True)
    with pytest.raises(CheckpointError, match=r"loads its original layout without --trust-remote-code\): OSError"):
        TransformersDecoder(tiny_original, device="cpu", trust_remote_code=True)  # no code of its own at all


def test_a_cuda_device_pytorch_does_not_see_is_refused_before_any_copy_loads(monkeypatch):
    """`--device cuda:0,cuda:1` on a one-GPU machine loaded the first copy, then moving the second one's weights
    raised a RuntimeError traceback (an AssertionError where torch has no CUDA at all)."""
    loaded: list[str] = []
    monkeypatch.setitem(backends.BACKENDS, "transformers", lambda options: loaded.append(options.device))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert pick_device("cuda:0") == "cuda:0" and pick_device("cuda") == "cuda"
    with pytest.raises(ValueError, match=r"'cuda:1': PyTorch sees 1 CUDA GPU\(s\), cuda:0 to cuda:0"):
        backends.load_decoder("transformers", backends.DecoderOptions("m", "cuda:0,cuda:1", None))
    assert loaded == []
    with pytest.raises(ValueError, match="'cuda:x' is not a device name"):
        pick_device("cuda:x")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="'cuda': PyTorch sees no CUDA GPU"):
        pick_device("cuda")


def test_auto_precision_is_bfloat16_only_on_gpus_that_compute_in_it(monkeypatch):
    """bfloat16 was chosen on every GPU: on a T4 or a V100 (before Ampere) it is emulated, many times slower."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    capability = {0: (9, 0), 1: (7, 5)}  # an H100 and a T4
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: capability[torch.device(device).index])
    assert pick_dtype("cuda:0") == torch.bfloat16 and pick_dtype("cuda:1") == torch.float16
    assert pick_dtype("cuda:1", "bfloat16") == torch.bfloat16 and pick_dtype("cuda:0", "float32") == torch.float32
    assert pick_dtype("cpu") == torch.float32 and pick_dtype("cpu", "bfloat16") == torch.bfloat16
    with pytest.raises(ValueError, match="Unknown dtype 'fp16'; choose from auto, bfloat16, float16, float32"):
        pick_dtype("cpu", "fp16")


def test_the_model_runs_in_the_precision_asked_for(tiny_native, tmp_path):
    decoder = TransformersDecoder(tiny_native, device="cpu", dtype="bfloat16")
    assert {p.dtype for p in decoder.model.parameters()} == {torch.bfloat16}
    window = WindowAudio(WindowSpan(0, 0, 2 * SAMPLE_RATE), np.zeros(2 * SAMPLE_RATE, dtype=np.float32))
    (text,) = decoder.decode([window], "en")  # features go in as bfloat16 too: a float32 input would fail here
    assert isinstance(text, str)
    write_wav(tmp_path / "a.wav", tone(1))
    result = run("transcribe", tmp_path / "a.wav", "--model", tiny_native, "--dtype", "half")
    assert result.exit_code == 2 and "Unknown dtype 'half'" in flat(result)  # before anything loads


def test_the_vllm_backend_is_started_in_the_precision_asked_for(monkeypatch):
    from turnscribe.decoders.vllm import VllmDecoder

    started: list[dict] = []
    monkeypatch.setattr(VllmDecoder, "from_pretrained", lambda model, **options: started.append(options))
    backends.load_decoder("vllm", backends.DecoderOptions("m", "cpu", None, dtype="float16"))
    assert started[0]["dtype"] == "float16"  # vLLM's engine argument of the same name and values


def lfs_pointer(file: Path) -> None:
    """What a `git clone` without git-lfs leaves in place of the weights."""
    file.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:4d7a2146\nsize 8123456789\n")


def cut_off(file: Path) -> None:
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("damage", [lfs_pointer, cut_off], ids=["lfs-pointer", "cut-off-download"])
@pytest.mark.parametrize("layout", ["native", "original"])
def test_weights_that_are_not_safetensors_are_a_clear_error(request, tmp_path, damage, layout):
    """Was a SafetensorError traceback ("header too large") from transcribe, serve and fix-checkpoint."""
    path = tmp_path / "ckpt"
    shutil.copytree(request.getfixturevalue(f"tiny_{layout}"), path)
    damage(path / "model.safetensors")
    with pytest.raises(CheckpointError, match="model.safetensors is not readable as safetensors .*`git lfs pull`"):
        TransformersDecoder(path, device="cpu")
    if layout == "original":
        result = run("fix-checkpoint", path, "--dry-run")
        assert result.exit_code == 2 and "is not readable as safetensors" in flat(result)


# --- fix-checkpoint ---


@pytest.fixture()
def as_downloaded(tiny_original, tmp_path) -> Path:
    """The original layout as the hub has it: 'model.' prefixes and BatchNorm counters in the weights."""
    path = tmp_path / "ckpt"
    shutil.copytree(tiny_original, path)
    weights = load_file(str(path / "model.safetensors"))
    save_file({f"model.{k}": v for k, v in weights.items()}, str(path / "model.safetensors"), metadata={"format": "pt"})
    return path


def shard(path: Path, *, fixed: bool) -> list[str]:
    """Splits model.safetensors in two shards with an index naming every tensor as the hub has it; `fixed`: the
    shards as fix-checkpoint leaves them (a run interrupted before it reached the index). The shards' names."""
    weights = load_file(str(path / "model.safetensors"))
    (path / "model.safetensors").unlink()
    names = sorted(weights)
    files = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, part in files.items():
        kept = [n for n in part if not (fixed and n.endswith("num_batches_tracked"))]
        save_file({n.removeprefix("model.") if fixed else n: weights[n] for n in kept}, str(path / file))
    index = {"metadata": {}, "weight_map": {n: file for file, part in files.items() for n in part}}
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    return list(files)


def tensor_names(path: Path, files: list[str]) -> set[str]:
    names: set[str] = set()
    for file in files:
        with safe_open(str(path / file), framework="pt") as f:
            names |= set(f.keys())  # noqa: SIM118
    return names


@pytest.mark.parametrize("shards_fixed", [False, True], ids=["as-downloaded", "interrupted-before-the-index"])
def test_a_sharded_checkpoints_index_is_fixed_even_when_only_the_index_is_left(as_downloaded, shards_fixed):
    """A run interrupted after the last shard left the index naming 'model.' tensors that no longer exist, and
    fix-checkpoint (and vLLM's check) called the folder fixed."""
    files = shard(as_downloaded, fixed=shards_fixed)
    plan = {f.file for f in plan_vllm_fixes(as_downloaded)}
    assert "model.safetensors.index.json" in plan and (set(files) <= plan) != shards_fixed
    fix_for_vllm(as_downloaded)
    index = json.loads((as_downloaded / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == tensor_names(as_downloaded, files)
    assert not any(n.startswith("model.") for n in index["weight_map"])
    assert plan_vllm_fixes(as_downloaded) == []


def test_symlinked_files_are_replaced_not_written_through(as_downloaded, tmp_path):
    """The hub cache's snapshot folders hold symlinks to shared blobs: those must stay as they were."""
    blobs, snapshot = tmp_path / "blobs", tmp_path / "snapshot"
    blobs.mkdir(), snapshot.mkdir()
    for file in as_downloaded.iterdir():
        shutil.copy(file, blobs / file.name)
        (snapshot / file.name).symlink_to(blobs / file.name)
    before = {b.name: b.read_bytes() for b in blobs.iterdir()}
    assert fix_for_vllm(snapshot)
    assert {b.name: b.read_bytes() for b in blobs.iterdir()} == before
    assert not (snapshot / "model.safetensors").is_symlink() and (snapshot / "tokenizer.json").is_symlink()
    assert plan_vllm_fixes(snapshot) == []


def refuse_to_write(*args, **kwargs):
    raise PermissionError(13, "Permission denied")


def fill_the_disk(tensors, filename, metadata=None):
    Path(filename).write_bytes(b"\0" * 1000)  # part of the copy made it to disk
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize(
    ("target", "failure", "says"),
    [
        ("pathlib.Path.write_text", refuse_to_write, "Permission denied"),  # a read-only folder (run as root here)
        ("safetensors.torch.save_file", fill_the_disk, "No space left on device"),
    ],
    ids=["read-only", "disk-full"],
)
def test_a_write_that_fails_is_a_clear_error_and_leaves_no_temporary_file(
    as_downloaded, monkeypatch, target, failure, says
):
    """It was an OSError traceback, and a full disk left a partial copy of the weights next to them."""
    weights = (as_downloaded / "model.safetensors").read_bytes()
    monkeypatch.setattr(target, failure)
    result = run("fix-checkpoint", as_downloaded)
    assert result.exit_code == 2 and f"{says}. It is unchanged" in flat(result)
    assert (as_downloaded / "model.safetensors").read_bytes() == weights
    assert sorted(p.name for p in as_downloaded.iterdir() if p.name.endswith(".tmp")) == []


def test_a_prefix_that_would_merge_two_tensors_is_refused_not_one_of_them_lost(as_downloaded):
    weights = load_file(str(as_downloaded / "model.safetensors"))
    name = "model.encoder.layers.0.conv.batch_norm.bias"
    weights[name.removeprefix("model.")] = weights[name] + 1  # "model.x" and "x", different tensors
    save_file(weights, str(as_downloaded / "model.safetensors"))
    with pytest.raises(CheckpointError, match="two tensors share a name"):
        fix_for_vllm(as_downloaded)
    assert load_file(str(as_downloaded / "model.safetensors")).keys() == weights.keys()
