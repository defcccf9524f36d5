"""The README as a user reads it: its Python examples run, its option tables match the CLI, and
`turnscribe serve --pipeline-factory` finds a factory module in the current directory.

The examples run as written against the tiny random model (tests/tiny_model.py) on a generated mp3; only
what cannot exist here is substituted (the hub model, a GPU, the names of the user's own files).
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

import turnscribe
from turnscribe.cli import app

README = Path(__file__).resolve().parents[1] / "README.md"
HUB_MODEL = '"syvai/cohere-transcribe-diarize"'


def _section(title: str) -> str:
    """The README's text from the heading `title` to the next heading of the same level."""
    text = README.read_text()
    level = title.split(" ")[0]
    start = text.index(f"\n{title}\n")
    end = text.find(f"\n{level} ", start + len(title) + 2)
    return text[start : end if end >= 0 else len(text)]


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def _runnable_here(block: str) -> bool:
    """Blocks that need a running server (the OpenAI client) or vLLM on a GPU are left to their own tests."""
    return "OpenAI(" not in block and "vllm" not in block.lower()


def _write_mp3(path: Path, seconds: float = 4.0) -> None:
    rate = 16_000
    t = np.arange(int(seconds * rate)) / rate
    samples = (0.3 * np.sin(2 * np.pi * 220 * t) * (np.sin(2 * np.pi * 0.5 * t) > 0)).astype(np.float32)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libmp3lame", rate=rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(samples[None, :], format="flt", layout="mono")
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="the synthetic-meeting example needs espeak-ng")
def test_the_readmes_python_examples_run_as_written(tiny_native, tmp_path, monkeypatch):
    blocks = [b for b in _python_blocks() if _runnable_here(b)]
    # transcribe, build_pipeline + write, transcribe_many, evaluate, synthetic meetings: a new example is run too
    assert len(blocks) == 5, [b.splitlines()[0] for b in blocks]
    monkeypatch.chdir(tmp_path)
    _write_mp3(tmp_path / "meeting.mp3")
    (tmp_path / "meeting.stm").write_text("meeting 1 A 0.0 2.0 good morning\nmeeting 1 B 2.0 4.0 thanks\n")
    # `turnscribe.transcribe(...)` without model= loads the hub model: the tiny one stands in for it.
    monkeypatch.setitem(turnscribe.build_pipeline.__kwdefaults__, "model", str(tiny_native))
    replacements = {
        HUB_MODEL: repr(str(tiny_native)),
        'device="cuda"': 'device="cpu"',
        "duration_s=600": "duration_s=60",  # the shortest meeting the generator makes, to stay fast
    }
    # One namespace, as in one session: later examples use `transcript` and `paths` from earlier ones.
    namespace: dict[str, object] = {"paths": ["meeting.mp3"]}
    for block in blocks:
        for old, new in replacements.items():
            block = block.replace(old, new)
        exec(compile(block, str(README), "exec"), namespace)
    assert all(any(old in b for b in blocks) for old in replacements)  # each stand-in still has its original

    assert isinstance(namespace["transcript"], turnscribe.Transcript)
    assert (tmp_path / "meeting.srt").read_text().startswith("1\n")  # the build_pipeline example's output
    assert {p.name for p in (tmp_path / "data").iterdir()} == {"m1.flac", "m1.rttm", "m1.seglst.json"}


def _options_in_tables(section: str) -> dict[str, str]:
    """`--option` → its default cell, from the rows of the option tables in `section`."""
    defaults: dict[str, str] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        if not line.startswith("| `-") or len(cells) < 3:
            continue
        names = re.findall(r"`(--[a-z-]+)", cells[0])
        values = cells[1].split(" / ")
        for i, name in enumerate(names):
            defaults[name] = values[i] if len(values) == len(names) else ""
    return defaults


def _same_default(cell: str, default: object) -> bool:
    """A table's default cell against click's; descriptive cells ("–", "calibrated per recording") pass."""
    value = cell.strip("`").removeprefix("./")
    if default is None or default == ():
        return True
    if isinstance(default, bool):
        return value == ("on" if default else "off")
    if isinstance(default, int | float):
        return float(value) == float(default)
    return value == str(default)


@pytest.mark.parametrize(("command", "section"), [("transcribe", "## Command line"), ("serve", "## Server")])
def test_every_cli_option_is_in_the_readmes_table_with_its_default(command, section):
    click_command = typer.main.get_command(app).commands[command]  # type: ignore[attr-defined]
    options = {p.opts[0]: p.default for p in click_command.params if p.param_type_name == "option"}
    options.pop("--help", None)
    table = _options_in_tables(_section(section))
    assert sorted(set(options) - set(table)) == []
    assert sorted(set(table) - set(options)) == []
    wrong = {name: (table[name], default) for name, default in options.items() if table[name]}
    assert {n: v for n, v in wrong.items() if not _same_default(*v)} == {}


def test_serve_imports_a_pipeline_factory_from_the_current_directory(tmp_path, monkeypatch):
    """A console script's sys.path does not hold the current directory; `uvicorn module:app` adds it, and so
    does `--pipeline-factory`, so that `my_factory.py` beside the user is found."""
    (tmp_path / "readme_factory_module.py").write_text("def build():\n    return 'a pipeline'\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    served: list[object] = []
    monkeypatch.setattr("turnscribe.server.app.create_app", lambda settings, factory: factory)
    monkeypatch.setattr("uvicorn.run", lambda factory, **kwargs: served.append(factory()))

    result = CliRunner().invoke(
        app,
        ["serve", "--pipeline-factory", "readme_factory_module:build", "--port", "0", "--data-dir", str(tmp_path)],
    )
    assert result.exit_code == 0, result.output
    assert served == ["a pipeline"]


def test_serve_passes_embedder_options_as_transcribe_does(tmp_path, monkeypatch):
    """Offline, ReDimNet2 needs `--embedder-option hub_dir=...`, which its load error tells the user to pass: the
    server (whose --embedder is "as transcribe") must accept it too."""
    built: list[dict[str, object]] = []
    monkeypatch.setattr("turnscribe.server.cli.build_pipeline", lambda **kwargs: built.append(kwargs))
    monkeypatch.setattr("turnscribe.server.app.create_app", lambda settings, factory: factory)
    monkeypatch.setattr("uvicorn.run", lambda factory, **kwargs: factory())
    serve = ["serve", "--port", "0", "--data-dir", str(tmp_path), "--embedder", "redimnet2"]

    result = CliRunner().invoke(app, [*serve, "--embedder-option", "hub_dir=/models/redimnet2"])
    assert result.exit_code == 0, result.output
    assert built[0]["embedder"] == "redimnet2" and built[0]["embedder_options"] == {"hub_dir": "/models/redimnet2"}

    result = CliRunner().invoke(app, [*serve, "--embedder-option", "hub_dir"])
    assert result.exit_code == 2 and "expected KEY=VALUE" in result.output
