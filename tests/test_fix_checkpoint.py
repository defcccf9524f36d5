"""fix-checkpoint: the model card's vLLM edits on a tiny original-layout checkpoint."""

import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from test_cli import flat, run

from turnscribe.checkpoint import CheckpointError, fix_for_vllm, plan_vllm_fixes
from turnscribe.decoders.transformers import load_model


@pytest.fixture()
def as_downloaded(tiny_original, tmp_path):
    """The original layout as the hub has it: 'model.' prefixes, BatchNorm counters, a legacy token list."""
    path = tmp_path / "ckpt"
    shutil.copytree(tiny_original, path)
    weights = load_file(str(path / "model.safetensors"))
    save_file({f"model.{k}": v for k, v in weights.items()}, str(path / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((path / "tokenizer_config.json").read_text())
    config["extra_special_tokens"] = ["<|spltoken0|>", "<|t:0.0|>"]
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    return path


def names(path):
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        return set(f.keys())


def test_dry_run_lists_the_three_edits_and_changes_nothing(as_downloaded):
    before = {p.name: p.read_bytes() for p in as_downloaded.iterdir()}
    fixes = fix_for_vllm(as_downloaded, dry_run=True)
    assert {f.file for f in fixes} == {"tokenizer_config.json", "config.json", "model.safetensors"}
    assert any("num_batches_tracked" in f.change for f in fixes) and any("'model.'" in f.change for f in fixes)
    assert {p.name: p.read_bytes() for p in as_downloaded.iterdir()} == before


def test_fix_is_applied_verified_and_idempotent(as_downloaded, tiny_native):
    vocab = json.loads((as_downloaded / "config.json").read_text())["head"]["num_classes"]
    assert fix_for_vllm(as_downloaded)
    config = json.loads((as_downloaded / "config.json").read_text())
    assert config["transf_decoder"]["config_dict"]["vocab_size"] == config["head"]["num_classes"] == vocab
    assert "extra_special_tokens" not in json.loads((as_downloaded / "tokenizer_config.json").read_text())
    fixed = names(as_downloaded)
    assert not any(n.startswith("model.") or n.endswith("num_batches_tracked") for n in fixed)
    assert not list(as_downloaded.glob(".*.tmp"))
    # Idempotent: a second run finds nothing to do and changes no byte.
    before = {p.name: p.read_bytes() for p in as_downloaded.iterdir()}
    assert plan_vllm_fixes(as_downloaded) == [] and fix_for_vllm(as_downloaded) == []
    assert {p.name: p.read_bytes() for p in as_downloaded.iterdir()} == before
    # The fixed checkpoint still loads to the same weights.
    _, native = load_model(tiny_native, "cpu", torch.float32, False, None)
    _, loaded = load_model(as_downloaded, "cpu", torch.float32, False, None)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in native.state_dict().items())


def test_native_checkpoints_are_refused(tiny_native):
    with pytest.raises(CheckpointError, match="native layout already"):
        fix_for_vllm(tiny_native, dry_run=True)


def test_command_line(as_downloaded):
    dry = run("fix-checkpoint", as_downloaded, "--dry-run")
    assert dry.exit_code == 0 and "would config.json: set transf_decoder.config_dict.vocab_size from 16384" in flat(dry)
    assert run("fix-checkpoint", as_downloaded).exit_code == 0
    assert "nothing to change" in flat(run("fix-checkpoint", as_downloaded))
    bad = run("fix-checkpoint", as_downloaded / "missing")
    assert bad.exit_code == 2 and "no config.json" in flat(bad)
