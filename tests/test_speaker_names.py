"""Known speakers' names are checked by one rule wherever they enter: the library, the command line, the server."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from test_pipeline import tone, write_wav

from turnscribe import AudioError, build_pipeline
from turnscribe.server.enrollment import PARAM_NAMES, read_known_speakers
from turnscribe.server.errors import APIError
from turnscribe.speakers.names import MAX_SPEAKER_NAME_CHARS, SpeakerNameError, check_speaker_name, check_speaker_names


@pytest.mark.parametrize("name", ["Alice", "Ana María", "李雷", "O'Brien & Söhne", "x" * MAX_SPEAKER_NAME_CHARS])
def test_ordinary_names_pass_unchanged(name: str) -> None:
    assert check_speaker_name(name) == name


def test_surrounding_whitespace_is_stripped() -> None:
    assert check_speaker_name(" \u00a0Alice\t ") == "Alice"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "empty"),
        (" \t\n", "empty"),
        ("Al\nice", "line break"),
        ("Al\rice", "line break"),
        ("Al\tice", "control character"),
        ("Al\x00ice", "control character"),
        ("Al\u2028ice", "line break"),  # a line separator: str.splitlines and many readers break there
        ("Al\ud800ice", "control character"),  # a lone surrogate: no UTF-8 output file can hold it
        ("x" * (MAX_SPEAKER_NAME_CHARS + 1), f"at most {MAX_SPEAKER_NAME_CHARS}"),
    ],
)
def test_names_an_output_format_cannot_carry_are_refused(name: str, message: str) -> None:
    with pytest.raises(SpeakerNameError, match=message):
        check_speaker_name(name)


def test_names_must_be_distinct_once_stripped() -> None:
    assert check_speaker_names(["A", " B "]) == ["A", "B"]
    with pytest.raises(SpeakerNameError, match="named once: 'A'"):
        check_speaker_names(["A", " A"])


def test_an_error_is_a_value_error_for_library_callers() -> None:
    assert issubclass(SpeakerNameError, ValueError)


@pytest.fixture()
def reference(tmp_path: Path) -> str:
    path = tmp_path / "voice.wav"
    write_wav(path, tone(3.0))
    return "data:audio/wav;base64," + base64.b64encode(path.read_bytes()).decode()


@pytest.mark.parametrize("names", [["Al\nice"], ["Alice", "Alice "], ["\t"], ["x" * (MAX_SPEAKER_NAME_CHARS + 1)]])
def test_the_server_answers_a_bad_name_with_a_400_on_the_names(names: list[str], reference: str) -> None:
    with pytest.raises(APIError) as error:
        read_known_speakers(names, [reference] * len(names), limit=4)
    assert error.value.status_code == 400 and error.value.body.param == PARAM_NAMES


def test_the_server_strips_the_names(reference: str) -> None:
    assert list(read_known_speakers([" Alice "], [reference], limit=4)) == ["Alice"]


def test_the_library_checks_names_and_references_before_loading_anything(tmp_path):
    # Neither the embedder nor the model exists: had either been loaded first, its error would come instead.
    with pytest.raises(SpeakerNameError, match="empty"):
        build_pipeline(model=str(tmp_path / "none"), embedder="no-such-embedder", known_speakers={" ": "a.wav"})
    with pytest.raises(AudioError, match="missing.wav"):
        build_pipeline(
            model=str(tmp_path / "none"), embedder="no-such-embedder", known_speakers={"Ana": tmp_path / "missing.wav"}
        )


def test_a_reference_in_memory_comes_with_its_rate(tmp_path):
    from turnscribe.decoders import ScriptedDecoder
    from turnscribe.types import SAMPLE_RATE

    voice = tone(3.0)  # at 16 kHz
    decoder = ScriptedDecoder(lambda window: "")
    pipeline = build_pipeline(decoder=decoder, known_speakers={"Ana": (voice, SAMPLE_RATE)})
    assert list(pipeline.speakers.known_speakers) == ["Ana"]
    assert len(pipeline.speakers.known_speakers["Ana"]) == len(voice)
    with pytest.raises(AudioError, match=r"known speaker 'Ana': sampling_rate is required.*\(samples, sampling_rate\)"):
        build_pipeline(decoder=decoder, known_speakers={"Ana": voice})
