"""The command line: outputs, progress, per-file failures, clear errors without tracebacks."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import typer
from test_pipeline import tone, write_wav
from typer.testing import CliRunner

from turnscribe import __version__
from turnscribe.cli import _parse_formats, app
from turnscribe.formats import format_names

runner = CliRunner()


@pytest.fixture()
def clip(tmp_path):
    path = tmp_path / "clip.wav"
    write_wav(path, tone(3.0))
    return path


def run(*args):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


def flat(result) -> str:
    """Rich wraps long lines at the terminal width; compare text with whitespace collapsed."""
    return " ".join(result.output.translate(str.maketrans("", "", "│╭╮╰╯─")).split())


def test_version_and_languages():
    assert run("--version").output.strip() == f"turnscribe {__version__}"
    listing = run("languages").output
    assert "en\tEnglish" in listing and "ja\tJapanese" in listing and len(listing.splitlines()) == 14


def test_transcribe_writes_every_requested_format(tiny_native, clip, tmp_path):
    out = tmp_path / "out"
    result = run("transcribe", clip, "--model", tiny_native, "--device", "cpu", "--format", "all", "-o", out)
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        [
            "clip.json",
            "clip.diarized.json",
            "clip.txt",
            "clip.srt",
            "clip.vtt",
            "clip.rttm",
            "clip.TextGrid",
            "clip.seglst.json",
        ]
    )
    data = json.loads((out / "clip.json").read_text())
    assert data["duration"] == pytest.approx(3.0) and data["metadata"]["windows"] == 1
    speakers, segments = len(data["speakers"]), len(data["segments"])
    said = f"{speakers} speaker{'' if speakers == 1 else 's'}, {segments} segment{'' if segments == 1 else 's'} →"
    assert "done" in result.output and said in flat(result)


@pytest.mark.parametrize("concurrency", [[], ["--files-at-once", "1", "--audio-processes", "0"]])
def test_one_bad_file_does_not_stop_the_others(tiny_native, clip, tmp_path, concurrency):
    corrupt = tmp_path / "corrupt.mp3"
    corrupt.write_bytes(os.urandom(4096))
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    out = tmp_path / "out"
    result = run(
        "transcribe",
        corrupt,
        clip,
        empty,
        tmp_path / "missing.wav",
        tmp_path,
        "--model",
        tiny_native,
        "--device",
        "cpu",
        "-f",
        "txt",
        "-o",
        out,
        *concurrency,
    )
    assert result.exit_code == 1
    assert sorted(p.name for p in out.iterdir()) == ["clip.txt"]
    text = flat(result)
    assert "4 of 5 files failed" in text
    assert "missing.wav: no such file" in text and "is a directory" in text and "Empty file" in text
    assert "corrupt.mp3" in text and "Traceback" not in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--language", "xx"], "Unknown language 'xx'"),
        (["--format", "docx"], "unknown format 'docx'"),
        (["--window", "40"], "window must be in"),
        (["--overlap", "20"], "overlap must be in"),
        (["--files-at-once", "-1"], "--files-at-once"),
        (["--audio-processes", "-1"], "--audio-processes"),
    ],
)
def test_bad_options_are_usage_errors(clip, tmp_path, args, message):
    result = run("transcribe", clip, "--model", tmp_path, *args)
    assert result.exit_code == 2
    assert message in flat(result)


def test_file_names_are_printed_as_they_are_not_as_markup(tmp_path):
    # '[final]' would vanish as an unknown style, and '[/]' closes nothing: Rich raised MarkupError.
    result = run("transcribe", tmp_path / "[final].wav", tmp_path / "a[/]b.wav", "--model", tmp_path / "none")
    assert result.exit_code == 1, result.output
    assert "[final].wav: no such file" in flat(result) and "a[/]b.wav: no such file" in flat(result)


def test_results_name_their_files_as_they_are(tiny_native, clip, tmp_path):
    renamed = clip.rename(tmp_path / "[bold]take 2.wav")
    corrupt = tmp_path / "a[" / "]b.mp3"  # printed as '…/a[/]b.mp3'
    corrupt.parent.mkdir()
    corrupt.write_bytes(os.urandom(4096))
    result = run("transcribe", renamed, corrupt, "--model", tiny_native, "--device", "cpu", "-f", "txt", "-o", tmp_path)
    assert result.exit_code == 1, result.output
    text = flat(result).replace(f"{tmp_path}/", "")
    assert "done [bold]take 2.wav:" in text and "error a[/]b.mp3:" in text


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes on this platform")
def test_a_pipe_is_an_input_not_a_missing_file(tmp_path):
    # What `turnscribe transcribe <(cat f.wav)` passes: the CLI lets the audio loader read it, so here the
    # (unloadable) model is the first error, not the input.
    pipe = tmp_path / "pipe.wav"
    os.mkfifo(pipe)
    result = run("transcribe", pipe, "--model", tmp_path / "no-such-model")
    assert result.exit_code == 2 and "neither a folder" in flat(result)
    assert "no such file" not in flat(result)


def test_unloadable_model_is_a_clear_error_and_writes_nothing(clip, tmp_path):
    out = tmp_path / "out"
    result = run("transcribe", clip, "--model", tmp_path / "no-such-model", "-o", out)
    assert result.exit_code == 2 and "neither a folder" in flat(result)
    assert not out.exists() or not any(out.iterdir())


def test_console_script_has_no_traceback_on_bad_input(tmp_path):
    bad = tmp_path / "notes.wav"
    bad.write_text("this is not audio")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "turnscribe", "transcribe", str(bad), "--model", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "error" in proc.stderr


def test_numpy_signal_is_not_mistaken_for_speech_in_silence(tiny_native, tmp_path):
    path = tmp_path / "silence.wav"
    write_wav(path, np.zeros(16000 * 2, dtype=np.float32))
    out = tmp_path / "out"
    result = run("transcribe", path, "--model", tiny_native, "--device", "cpu", "-f", "txt,rttm", "-o", out)
    assert result.exit_code == 0, result.output
    assert (out / "silence.rttm").read_text() == ""


def test_one_transcript_may_go_to_stdout(tiny_native, clip, tmp_path):
    # `-o -` made a folder named '-'; now the transcript is stdout's only content, reports stay on stderr.
    command = [sys.executable, "-m", "turnscribe", "transcribe", clip, "--model", tiny_native, "--device", "cpu"]
    to_stdout = [*map(str, command), "-f", "json", "-o", "-"]
    done = subprocess.run(to_stdout, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["duration"] == pytest.approx(3.0) and "done" in done.stderr
    assert not (tmp_path / "-").exists()
    for more in (["-f", "json,srt"], ["-f", "json", "--skip-existing"]):
        refused = run("transcribe", clip, "--model", tmp_path / "none", *more, "-o", "-")
        assert refused.exit_code == 2 and "-o - writes one file's transcript in one format" in flat(refused)
    # A reader that left (`| head`) is a failed file, said in one line, not a BrokenPipeError traceback at exit.
    gone = subprocess.Popen(to_stdout, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    gone.stdout.close()  # type: ignore[union-attr]
    _, errors = gone.communicate()
    assert gone.returncode == 1 and b"stdout was closed before the transcript was written" in errors
    assert b"Traceback" not in errors and b"BrokenPipeError" not in errors


def test_a_recording_named_twice_is_transcribed_once(tiny_native, clip, tmp_path):
    # `turnscribe transcribe *.wav clip.wav`: it was refused as two inputs of the same name.
    out = tmp_path / "out"
    again = clip.parent / "." / clip.name
    result = run("transcribe", clip, again, "--model", tiny_native, "--device", "cpu", "-f", "txt", "-o", out)
    assert result.exit_code == 0, result.output
    assert [p.name for p in out.iterdir()] == ["clip.txt"] and flat(result).count("clip.wav") == 1
    # A link of another name to it is a recording of its own: its outputs were never written.
    linked = clip.parent / "linked.wav"
    linked.symlink_to(clip)
    result = run("transcribe", clip, linked, "--model", tiny_native, "--device", "cpu", "-f", "txt", "-o", out)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["clip.txt", "linked.txt"]
    # The same with `-o -`: one file named twice is one transcript on stdout, not "give one file".
    result = run("transcribe", clip, again, "--model", tiny_native, "--device", "cpu", "-f", "json", "-o", "-")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["duration"] == pytest.approx(3.0)


def test_inputs_with_the_same_name_are_refused_before_any_work(clip, tmp_path):
    other = tmp_path / "sub"
    other.mkdir()
    (other / "clip.wav").write_bytes(clip.read_bytes())
    result = run("transcribe", clip, other / "clip.wav", "--model", tmp_path / "none")
    assert result.exit_code == 2 and "several inputs are named clip" in flat(result)


@pytest.mark.parametrize(
    ("speakers", "message"),
    [
        (["Alice"], "expected NAME=FILE"),
        (["A={clip}", "A={clip}"], "named once"),
        (["A={clip}", " A ={clip}"], "named once"),  # the same name once stripped
        ([" ={clip}"], "expected NAME=FILE"),  # empty once stripped
        (["Al\tice={clip}"], "control character"),
        (["Al\nice={clip}"], "control character"),
        (["x" * 101 + "={clip}"], "at most 100"),
    ],
)
def test_known_speaker_options_are_checked_before_loading(clip, tmp_path, speakers, message):
    options = [arg for item in speakers for arg in ("--speaker", item.format(clip=clip))]
    result = run("transcribe", clip, "--model", tmp_path / "none", *options)
    assert result.exit_code == 2 and "--speaker" in flat(result) and message in flat(result)


def test_known_speaker_names_label_the_transcript(tiny_native, clip, tmp_path):
    out = tmp_path / "out"
    result = run(
        "transcribe",
        clip,
        "--model",
        tiny_native,
        "--device",
        "cpu",
        "-f",
        "json",
        "-o",
        out,
        "--speaker",
        f"Alice={clip}",
        "--linker",
        "slots",
    )
    assert result.exit_code == 0, result.output
    assert json.loads((out / "clip.json").read_text())["duration"] == pytest.approx(3.0)
    bad = run("transcribe", clip, "--model", tiny_native, "--device", "cpu", "--linker", "magic", "-o", out)
    assert bad.exit_code == 2 and "Unknown linker 'magic'" in flat(bad)


# What the [server] extra brings; the base install (the README's run command) has none of them.
SERVER_EXTRA = ["fastapi", "uvicorn", "starlette", "multipart", "python_multipart", "prometheus_client"]


def without_server_extra(*args: object) -> subprocess.CompletedProcess[str]:
    """The CLI in a fresh interpreter where importing any of the server extra's modules fails."""
    script = (
        "import sys\n"
        f"for name in {SERVER_EXTRA!r}: sys.modules[name] = None  # import fails, as if not installed\n"
        "from turnscribe.cli import app\n"
        "app(sys.argv[1:], prog_name='turnscribe')\n"
    )
    return subprocess.run(
        [sys.executable, "-c", script, *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"},
        timeout=300,
    )


def test_transcribe_runs_without_the_server_extra(tiny_native, clip, tmp_path):
    out = tmp_path / "out"
    proc = without_server_extra("transcribe", clip, "--model", tiny_native, "--device", "cpu", "-f", "txt", "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert (out / "clip.txt").is_file()
    serve = without_server_extra("serve", "--port", "0")
    assert serve.returncode == 2 and "pip install 'turnscribe[server]'" in " ".join(serve.stderr.split())


def test_shards_split_the_file_list_and_skip_existing_resumes(tiny_native, tmp_path):
    clips = []
    for i in range(5):
        clips.append(tmp_path / f"c{i}.wav")
        write_wav(clips[-1], tone(2.0) * (0.3 + 0.1 * i))
    out = tmp_path / "out"
    common = ("--model", tiny_native, "--device", "cpu", "-f", "txt,json", "-o", out)
    first = run("transcribe", *clips, *common, "--shard", "1/2")
    assert first.exit_code == 0, first.output
    assert sorted(p.name for p in out.iterdir()) == ["c1.json", "c1.txt", "c3.json", "c3.txt"]
    (out / "c3.json").unlink()  # as if that job had been stopped before writing its last output
    before = (out / "c1.json").stat().st_mtime_ns
    again = run("transcribe", *clips, *common, "--skip-existing")
    assert again.exit_code == 0, again.output
    assert "skipped" in again.output and f"{clips[1]}: its outputs exist" in flat(again)
    assert (out / "c1.json").stat().st_mtime_ns == before
    assert len(list(out.glob("*.json"))) == len(list(out.glob("*.txt"))) == 5
    nothing_left = run("transcribe", *clips, *common, "--skip-existing")
    assert nothing_left.exit_code == 0 and nothing_left.output.count("skipped") == 5
    idle = run("transcribe", *clips, *common, "--shard", "6/8")  # more jobs than files
    assert idle.exit_code == 0 and "none of the 5 files falls to it" in flat(idle)


@pytest.mark.parametrize("shard", ["2/2", "1", "a/3", "-1/2"])
def test_bad_shards_are_usage_errors(clip, shard):
    result = run("transcribe", clip, "--shard", shard)
    assert result.exit_code == 2 and "--shard" in flat(result)


@pytest.mark.parametrize("where", ["file", "file/sub"])
def test_an_output_dir_that_cannot_be_written_stops_before_the_model_loads(clip, tmp_path, where):
    (tmp_path / "file").write_text("not a folder")
    result = run("transcribe", clip, "--model", tmp_path / "no-such-model", "-o", tmp_path / where)
    assert result.exit_code == 2, result.output
    assert f"--output-dir {tmp_path / where}: cannot write files there" in flat(result)
    assert "Traceback" not in result.output and "neither a folder" not in flat(result)


def test_an_output_that_cannot_be_saved_fails_its_file_only(tiny_native, clip, tmp_path):
    # '<stem>.wav' fits in a file name, '<stem>.diarized.json' does not: the OS refuses that one output.
    long = clip.rename(tmp_path / f"{'x' * 245}.wav")
    other = tmp_path / "other.wav"
    write_wav(other, tone(2.0))
    out = tmp_path / "out"
    result = run("transcribe", long, other, "--model", tiny_native, "--device", "cpu", "-f", "diarized_json", "-o", out)
    assert result.exit_code == 1, result.output
    text = flat(result)
    assert "File name too long" in text and "1 of 2 files failed" in text and "done" in text
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert sorted(p.name for p in out.iterdir()) == ["other.diarized.json"]


def test_a_format_list_names_each_format_once_and_may_hold_all():
    assert _parse_formats("srt, srt,vtt") == ["srt", "vtt"]
    assert _parse_formats("all,srt") == format_names()
    with pytest.raises(typer.BadParameter, match="unknown format 'docx'"):
        _parse_formats("all,docx")


@pytest.mark.skipif(sys.platform != "linux", reason="other systems refuse a file name that is not UTF-8")
def test_a_file_name_that_is_not_utf8_is_transcribed_like_any_other(tiny_native, clip, tmp_path):
    # Python holds the name's stray byte 0xe9 as the lone surrogate '\udce9', which no UTF-8 file can hold: writing
    # it as the JSON's source raised UnicodeEncodeError, a traceback that lost the transcripts of the files after it.
    latin1 = clip.rename(tmp_path / os.fsdecode(b"caf\xe9.wav"))
    other = tmp_path / "other.wav"
    write_wav(other, tone(2.0))
    out = tmp_path / "out"
    one_by_one = ("--files-at-once", "1", "--audio-processes", "0")  # the odd name first, the other after it
    common = ("--model", tiny_native, "--device", "cpu", "-f", "json,rttm", "-o", out, *one_by_one)
    result = run("transcribe", latin1, other, *common)
    assert result.exit_code == 0, result.output
    assert json.loads((out / "caf\udce9.json").read_bytes())["metadata"]["source"] == f"{tmp_path}/caf\ufffd.wav"
    assert (out / "caf\udce9.rttm").read_text(encoding="utf-8").startswith("SPEAKER caf\ufffd 1 ")
    assert json.loads((out / "other.json").read_text())["duration"] == pytest.approx(2.0)


def test_inputs_whose_outputs_would_share_a_name_are_refused_before_any_work(clip, tmp_path):
    # Different stems, one output name: clip.wav's diarized_json and clip.diarized.wav's json. The second written
    # replaced the first, and the run ended with status 0.
    twin = tmp_path / "clip.diarized.wav"
    twin.write_bytes(clip.read_bytes())
    result = run("transcribe", clip, twin, "--model", tmp_path / "none", "-f", "json,diarized_json")
    assert result.exit_code == 2 and "several inputs would write clip.diarized.json" in flat(result)
    apart = run("transcribe", clip, twin, "--model", tmp_path / "none", "-f", "json,srt")
    assert apart.exit_code == 2 and "neither a folder" in flat(apart)  # no clash: on to loading the model


def test_skip_existing_takes_time_in_proportion_to_the_list(tmp_path, monkeypatch):
    # The README's job array restarted over a long list: the skipped inputs were struck from it by a search of the
    # list of skipped ones, 2 * 10^8 path comparisons (70 s) for 20,000 recordings before the model began to load.
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    out.mkdir()
    files = [inputs / f"rec{i:04d}.wav" for i in range(1000)]
    for i, f in enumerate(files):
        f.touch()
        if i % 2:
            (out / f"{f.stem}.txt").touch()
    comparisons = 0
    compare = pathlib.PurePath.__eq__

    def counted(self: pathlib.PurePath, other: object) -> bool:
        nonlocal comparisons
        comparisons += 1
        return compare(self, other)

    monkeypatch.setattr(pathlib.PurePath, "__eq__", counted)
    result = run("transcribe", *files, "-f", "txt", "-o", out, "--skip-existing", "--model", tmp_path / "none")
    assert result.exit_code == 2 and result.output.count("skipped") == 500 and "neither a folder" in flat(result)
    assert comparisons < 5 * len(files)
