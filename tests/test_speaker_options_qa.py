"""Speaker options as a pyannote / WhisperX / OpenAI user sets them (counts, threshold, device, embedder options,
known speakers), through `build_pipeline`, `transcribe`, the linkers and the server's enrollment: a value of the
wrong kind is an error that names the option and says what to pass, before anything loads, not a traceback from
deep inside once every window is decoded; and a value of the right kind reaches the output."""

import base64
import io
import json
import wave

import numpy as np
import pytest
import torch

import turnscribe
from turnscribe.decoders import ScriptedDecoder
from turnscribe.formats import render
from turnscribe.server.enrollment import read_known_speakers
from turnscribe.server.errors import APIError
from turnscribe.speakers import ClusteringLinker, EmbedderError, SlotLinker, load_embedder
from turnscribe.speakers.names import SpeakerNameError
from turnscribe.speakers.slots import KnownSpeakerError


class FakeEmbedder:
    name = "fake"
    default_threshold = 0.5

    def embed(self, clips):
        return np.array([[1.0, 0.0] if c.mean() >= 0 else [0.0, 1.0] for c in clips], dtype=np.float32)


@pytest.fixture
def nothing_loads(monkeypatch):
    monkeypatch.setattr("turnscribe.speakers.load_embedder", lambda *a, **k: pytest.fail("the embedder loaded"))


def decoder() -> ScriptedDecoder:
    return ScriptedDecoder(lambda span: "<|spltoken0|><|t:1.0|> hello <|t:2.0|>")


@pytest.mark.parametrize("option", ["num_speakers", "min_speakers", "max_speakers"])
@pytest.mark.parametrize("value", ["2", 2.5, 2.0, True], ids=["str", "float", "whole-float", "bool"])
def test_a_speaker_count_that_is_no_int_is_a_value_error_naming_it_before_anything_loads(option, value, nothing_loads):
    # "2" was a bare TypeError ('<' not supported between str and int); 2.5 and 2.0 passed and failed with a
    # TypeError in the slots linker after every window was decoded; True was taken as one speaker.
    with pytest.raises(ValueError, match=f"{option} must be a whole number.*got {value!r}"):
        turnscribe.build_pipeline(decoder=decoder(), **{option: value})


@pytest.mark.parametrize("value", ["0.5", True], ids=["str", "bool"])
def test_a_threshold_that_is_no_number_is_a_value_error_naming_it_before_anything_loads(value, nothing_loads):
    # threshold=True passed and came back as metadata.threshold: true in the json output.
    with pytest.raises(ValueError, match=f"threshold must be a number.*got {value!r}"):
        turnscribe.build_pipeline(decoder=decoder(), threshold=value)


@pytest.mark.parametrize("linker", [SlotLinker, ClusteringLinker])
def test_the_linkers_built_by_hand_check_the_kind_of_count_too_and_take_numpy_ints(linker):
    with pytest.raises(ValueError, match="num_speakers must be a whole number"):
        linker(FakeEmbedder(), num_speakers=2.0)
    linker(FakeEmbedder(), num_speakers=np.int64(2), max_speakers=np.int32(3), threshold=np.float32(0.4))


@pytest.mark.parametrize("device", ["gpu", "CUDA", "cuda:x"])
def test_a_device_that_is_no_device_name_is_refused_in_the_callers_terms_before_anything_loads(device, nothing_loads):
    # "gpu" reached the embedder, whose error quoted torch's list of twenty device types and told a Python
    # caller to "try --device cpu".
    with pytest.raises(ValueError, match=f"device {device!r} is not a device name: use auto, cpu, cuda") as error:
        turnscribe.build_pipeline(decoder=decoder(), device=device)
    assert "--device" not in str(error.value)


@pytest.mark.parametrize(
    "known, error, message",
    [
        (["alice.wav"], ValueError, "known_speakers must map names to references.*got a list"),
        ({1: "alice.wav"}, SpeakerNameError, r"must be text, got 1 \(int\)"),
        ({"Ana": (np.zeros(8), 16000, 1)}, turnscribe.AudioError, r"'Ana': give a reference, or \(samples,"),
    ],
    ids=["list", "name-not-text", "three-tuple"],
)
def test_known_speakers_of_the_wrong_shape_are_an_error_naming_what_to_pass(known, error, message, nothing_loads):
    # Each was a bare AttributeError / unpacking ValueError from inside build_pipeline.
    with pytest.raises(error, match=message):
        turnscribe.build_pipeline(decoder=decoder(), known_speakers=known)


def wav_data_url(seconds: float, rate: int) -> str:
    t = np.arange(round(seconds * rate)) / rate
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(rate)
        w.writeframes((0.3 * np.sin(2 * np.pi * 200 * t) * 32767).astype(np.int16).tobytes())
    return "data:audio/wav;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_a_server_reference_just_under_two_seconds_is_not_reported_as_two_seconds_long():
    # 1.99 s was "is 2.0 s long; it must be 2 to 10 s": a refusal that contradicts itself.
    with pytest.raises(APIError, match=r"is 1\.99 s long; it must be 2 to 10 s"):
        read_known_speakers(["Ana"], [wav_data_url(1.99, 48000)], limit=4)


@pytest.mark.parametrize("linker", ["slots", "baseline"])
def test_a_numpy_float32_threshold_is_written_to_the_json_output(linker):
    # It was kept as given in metadata.threshold, and json.dumps failed on it after the whole file was transcribed.
    two_windows = np.sign(np.sin(np.arange(40 * 16000) / 50)).astype(np.float32) * 0.3
    transcript = turnscribe.transcribe(
        two_windows, sampling_rate=16000, decoder=decoder(), threshold=np.float32(0.25), linker=linker
    )
    assert json.loads(render(transcript, "json"))["metadata"]["threshold"] == 0.25


def test_redimnet2_without_its_checkout_says_how_to_pass_hub_dir_from_python_too(tmp_path):
    # It told Python callers to "pass --embedder-option hub_dir=...", an option only the command line has.
    with pytest.raises(EmbedderError, match="has no hubconf.py") as error:
        load_embedder("redimnet2", device="cpu", hub_dir=str(tmp_path))
    assert "embedder_options={'hub_dir': '/path/to/it'}" in str(error.value) and "--embedder-option" in str(error.value)


def test_a_reference_file_given_with_a_rate_is_told_to_come_alone(tmp_path, nothing_loads):
    # The answer was load_audio's "(pass sampling_rate=None)", an argument the caller never gave.
    path = tmp_path / "ana.wav"
    path.write_bytes(base64.b64decode(wav_data_url(3.0, 16000).partition(",")[2]))
    with pytest.raises(turnscribe.AudioError, match=r"'Ana': a file is decoded at its own rate; give it alone") as e:
        turnscribe.build_pipeline(decoder=decoder(), known_speakers={"Ana": (path, 16000)})
    assert "sampling_rate=None" not in str(e.value)


@pytest.mark.parametrize("shape", ["(n, 2)", "(2, n)"])
def test_a_stereo_reference_given_to_the_slot_linker_is_refused_not_flattened(shape):
    # Flattened, (n, 2) interleaved its channels (the voice at double speed) and (2, n) played them in turn.
    mono = np.sin(np.arange(3 * 16000) / 7).astype(np.float32)
    stereo = np.stack([mono, mono], axis=1 if shape == "(n, 2)" else 0)
    with pytest.raises(KnownSpeakerError, match=r"'Ana': the reference must be mono samples at 16000 Hz"):
        SlotLinker(FakeEmbedder(), known_speakers={"Ana": stereo})
    linker = SlotLinker(FakeEmbedder(), known_speakers={"Ana": mono[None, :], "Bo": mono[:, None]})
    assert [clip.shape for clip in linker.known_speakers.values()] == [mono.shape, mono.shape]


def test_a_torch_device_is_taken_by_its_name_and_no_device_at_all_is_a_value_error(monkeypatch):
    # Both were an AttributeError ('torch.device' / 'NoneType' object has no attribute 'strip').
    loaded_on: list[str] = []
    monkeypatch.setattr("turnscribe.speakers.load_embedder", lambda name, device, **o: loaded_on.append(device))
    turnscribe.build_pipeline(decoder=decoder(), device=torch.device("cpu"))
    assert loaded_on == ["cpu"]
    with pytest.raises(ValueError, match="device must be a name such as 'auto', 'cpu' or 'cuda:0', got None"):
        turnscribe.build_pipeline(decoder=decoder(), device=None)
