"""`turnscribe bench --tiny --quick`: the CPU smoke test of the benchmark; and the CLI's --fast / auto batch size."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
from test_cli import flat
from test_pipeline import tone, write_wav
from typer.testing import CliRunner
from vllm_fakes import FakeLLM

from turnscribe.bench import render
from turnscribe.cli import app

STAGES = {"audio_decode", "features", "encoder", "decoder", "parse_stitch", "embedder", "linking"}


def test_bench_tiny_quick_reports_every_measurement(tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench", "--tiny", "--quick", "--device", "cpu", "--json", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert {"machine", "settings", "backends", "model_card_3090"} <= set(data)
    backend = data["backends"]["transformers"]
    assert backend["device"] == "cpu" and backend["batch_size"] == 4 and backend["largest_batch"] is None
    assert [row["concurrency"] for row in backend["clips"]] == [1, 4]
    for row in backend["clips"]:
        assert row["clips"] == row["concurrency"] and not row["failed"]
        assert row["throughput_x"] > 0 and row["model_s"] > 0
    (long_form,) = backend["long_form"]
    assert long_form["audio_s"] == 60 and long_form["windows"] == 3 and long_form["real_time_x"] > 0
    # Forced streams of 180 tokens per 28 s in 4 s segments: about 7 segments a window, and they parse.
    assert long_form["segments"] >= 10
    assert set(long_form["stages_s"]) == STAGES
    for stage in ("audio_decode", "features", "encoder", "decoder", "embedder"):
        assert long_form["stages_s"][stage] > 0, stage
    assert long_form["stages_s"]["encoder"] < long_form["stages_s"]["decoder"] + long_form["stages_s"]["encoder"]
    many = backend["many_files"]
    assert many["files"] == 2 and many["file_s"] == 30 and not many["failed"] and many["throughput_x"] > 0
    assert many["model_s"] > 0 and many["embedder_s"] > 0
    table = render(data)
    assert table in result.output and "RTX 3090 (model card)" in table and "249×" in table
    assert "| 1 min file, end to end |" in table and "| 4 concurrent |" in table
    assert "| 2 × 30 s files at once, end to end (" in table


def test_transcribe_fast_with_batch_size_from_memory(tiny_native, tmp_path):
    clips = [tmp_path / "a.wav", tmp_path / "b.wav"]
    for path, seconds in zip(clips, (3.0, 40.0)):
        write_wav(path, tone(seconds))
    args = ["transcribe", *map(str, clips), "--model", str(tiny_native), "--device", "cpu", "--fast"]
    result = CliRunner().invoke(app, [*args, "--batch-size", "0", "-f", "json", "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.json", "b.json"]
    assert json.loads((tmp_path / "out" / "b.json").read_text())["metadata"]["windows"] == 2


def test_each_measurement_is_reported_as_it_completes():
    from turnscribe.bench import BenchSettings, run

    snapshots: list[dict] = []
    settings = BenchSettings.quick(size="tiny", device="cpu", long_form_s=(), many_files=0)
    final = run(settings, log=lambda _: None, on_update=lambda r: snapshots.append(json.loads(json.dumps(r))))
    assert [len(s["backends"]["transformers"]["clips"]) for s in snapshots] == [1, 2, 2]
    assert "vllm" not in snapshots[1]["backends"] and "skipped" in snapshots[2]["backends"]["vllm"]
    assert snapshots[-1] == json.loads(json.dumps(final))


def test_the_largest_batch_search_stops_at_the_first_batch_out_of_memory(monkeypatch):
    import torch

    from turnscribe.bench import BenchSettings, find_largest_batch, load

    bench = load(BenchSettings.quick(size="tiny", device="cpu"))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    tried: list[int] = []

    def out_of_memory_above_16(windows, language):
        tried.append(len(windows))
        if len(windows) > 16:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return torch.zeros((len(windows), 1), dtype=torch.long)

    monkeypatch.setattr(bench.decoder, "generate_ids", out_of_memory_above_16)
    monkeypatch.setattr("turnscribe.bench._peak_gib", lambda bench: 1.5)  # what CUDA would report
    largest = find_largest_batch(bench)
    assert largest["largest"] == 16 and tried == [8, 16, 32]
    assert bench.decoder.batch_size == 4  # the search leaves the decoder's batch size alone
    row = largest["tried"][1]
    assert row["batch"] == 16 and row["decode_ms_per_step"] == pytest.approx(1000 * row["wall_s"] / 181)
    # The README table gets a row per batch size tried.
    result = {
        "machine": {"gpu": "NVIDIA H200", "torch": "2.11", "transformers": "5.17", "date": "2026-12-01"},
        "settings": {"tokens_per_28s": 180, "embedder": "resemblyzer"},
        "backends": {
            "transformers": {
                "model": "full-size",
                "dtype": "bfloat16",
                "speed": {},
                "batch_size": 512,
                "clips": [],
                "largest_batch": largest,
                "long_form": [],
            }
        },
    }
    table = render(result)
    assert "| 28 s windows | × real time | features s | encoder s | ms per decoding step |" in table
    assert "| 16 | " in table and f"| {row['decode_ms_per_step']:.1f} | 1.5 |" in table


def test_an_encoder_call_that_raised_is_left_out_of_the_encoder_time(monkeypatch):
    import torch

    from turnscribe.bench import StageClock

    class Event:  # a torch.cuda.Event's elapsed_time, in milliseconds
        def elapsed_time(self, end):
            assert end is not None, "elapsed_time(None) raises TypeError in torch"
            return 1500.0

    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    clock = StageClock(cuda=True, events={"encoder": [(Event(), Event()), (Event(), None)]})
    assert clock.seconds("encoder") == 1.5


def test_the_benchmark_takes_one_device_that_is_there(monkeypatch):
    import torch

    result = CliRunner().invoke(app, ["bench", "--tiny", "--quick", "--device", "cpu,cpu"])
    assert result.exit_code == 2 and "one device" in result.output
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = CliRunner().invoke(app, ["bench", "--tiny", "--quick", "--device", "cuda"])
    assert result.exit_code == 2 and "PyTorch sees no CUDA GPU" in flat(result)


def test_vllm_windows_are_held_at_the_forced_length_with_the_cards_decoding_kept():
    from turnscribe.bench import forced_length
    from turnscribe.decoders.base import WindowAudio
    from turnscribe.decoders.vllm import build_requests
    from turnscribe.types import SAMPLE_RATE, WindowSpan

    windows = [
        WindowAudio(WindowSpan(i, 0, round(s * SAMPLE_RATE)), np.zeros(round(s * SAMPLE_RATE)))
        for i, s in enumerate((28.0, 14.0, 2.5))
    ]
    make = forced_length(dict, tokens_per_28s=180)
    params = [make(**r.sampling_options()) for r in build_requests(windows, [1, 2, 3])]
    assert [(p["min_tokens"], p["max_tokens"]) for p in params] == [(180, 180), (90, 90), (16, 16)]
    assert all(p["temperature"] == 0.0 and p["skip_special_tokens"] is False for p in params)


def fake_vllm(monkeypatch, answer) -> list[FakeLLM]:
    """vLLM "installed": its module a stand-in whose LLM answers from `answer` and whose SamplingParams is a dict."""
    import importlib.util

    engines: list[FakeLLM] = []

    def llm(model: str, **engine_args) -> FakeLLM:
        engines.append(engine := FakeLLM(answer))
        engine.args = {"model": model, **engine_args}
        return engine

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: object() if name == "vllm" else find_spec(name, *a)
    )
    monkeypatch.setattr("turnscribe.decoders.vllm.import_vllm", lambda: SimpleNamespace(LLM=llm, SamplingParams=dict))
    return engines


def test_each_backend_present_is_measured_in_turn_vllm_with_its_own_stages(monkeypatch, tiny_original, tmp_path):
    from turnscribe.bench import BenchSettings, run
    from turnscribe.checkpoint import fix_for_vllm

    model = tmp_path / "fixed"
    shutil.copytree(tiny_original, model)
    fix_for_vllm(model)
    engines = fake_vllm(monkeypatch, lambda prompt: "<|spltoken0|><|t:1.0|> hello there <|t:5.0|><|endoftext|>")
    settings = BenchSettings.quick(model=str(model), device="cpu", long_form_s=(60.0,), many_files=0)
    lines: list[str] = []
    result = run(settings, log=lines.append)
    assert list(result["backends"]) == ["transformers", "vllm"]
    transformers, vllm = result["backends"]["transformers"], result["backends"]["vllm"]
    assert set(transformers["long_form"][0]["stages_s"]) == STAGES
    assert [row["concurrency"] for row in vllm["clips"]] == [1, 4] and not any(r["failed"] for r in vllm["clips"])
    (long_form,) = vllm["long_form"]
    assert set(long_form["stages_s"]) == {"audio_decode", "model", "parse_stitch", "embedder", "linking"}
    assert long_form["stages_s"]["model"] > 0 and long_form["peak_gpu_gib"] is None and long_form["windows"] == 3
    assert vllm["batch_size"] == 64 and vllm["dtype"] == "auto" and vllm["largest_batch"] is None
    # One engine, on the fixed checkpoint; every 28 s clip held at 180 tokens.
    (engine,) = engines
    assert engine.args["model"] == str(model)
    clip_params = [p for _, params, _ in engine.calls for p in params if p["max_tokens"] == 180]
    assert clip_params and all(p["min_tokens"] == 180 for p in clip_params)
    assert any(line.startswith("vllm: 60 s file: ") for line in lines)
    table = render(result)
    assert "transformers float32" in table and "vllm auto" in table and "| model s |" in table


def test_a_backend_that_cannot_run_is_skipped_with_its_reason_or_refused_when_asked_for(monkeypatch):
    from turnscribe.bench import BenchSettings, unavailable

    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    assert "not installed" in unavailable("vllm", BenchSettings())
    result = CliRunner().invoke(app, ["bench", "--tiny", "--quick", "--device", "cpu", "--backend", "vllm"])
    assert result.exit_code == 2 and "not installed" in flat(result)
    fake_vllm(monkeypatch, lambda prompt: "")
    assert "needs --model" in unavailable("vllm", BenchSettings())
    result = CliRunner().invoke(app, ["bench", "--tiny", "--quick", "--device", "cpu", "--backend", "vllm"])
    assert result.exit_code == 2 and "needs --model" in flat(result)
    result = CliRunner().invoke(app, ["bench", "--tiny", "--backend", "nope"])
    assert result.exit_code == 2 and "choose from transformers, vllm" in flat(result)
