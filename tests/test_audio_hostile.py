"""Audio that lies or is out of the ordinary: decoded, or a clear AudioError; never a crash or a memory bomb."""

from __future__ import annotations

import math
import os
import signal
import struct
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from test_audio import alive, encode, tone, worker_pid

from turnscribe import audio
from turnscribe.audio import AudioError, AudioProcesses, AudioTooLong, audio_duration, load_audio
from turnscribe.types import SAMPLE_RATE


def wav_bytes(samples: bytes, *, tag: int = 1, channels: int = 1, bits: int = 16, rate: int = SAMPLE_RATE) -> bytes:
    """A RIFF WAVE file with any format tag and channel count (the wave module writes only 16-bit PCM, ≤ 2 ways)."""
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * block, block, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(samples)) + samples
    return b"RIFF" + struct.pack("<I", len(body)) + body


def pcm16(samples: np.ndarray) -> bytes:
    return (samples * 32767).astype("<i2").tobytes()


def mp3_claiming_frames(path: Path, seconds: float, frames: int) -> Path:
    """An mp3 of `seconds` whose Xing/Info header claims `frames` frames (FFmpeg's duration comes from it)."""
    encode(path, "libmp3lame", tone(440, seconds, 44100)[None], 44100)
    data = bytearray(path.read_bytes())
    at = max(data.find(b"Xing"), data.find(b"Info"))
    assert at >= 0 and struct.unpack(">I", data[at + 4 : at + 8])[0] & 1, "no frame count in the Xing header"
    data[at + 8 : at + 12] = struct.pack(">I", frames)
    path.write_bytes(data)
    return path


def test_a_codec_ffmpeg_cannot_decode_is_an_audio_error_in_processes_too(tmp_path: Path) -> None:
    # Deciding whether to decode in pieces read the codec's name from a codec context FFmpeg never made.
    path = tmp_path / "unknown.wav"
    path.write_bytes(wav_bytes(pcm16(tone(440, 3, SAMPLE_RATE)), tag=0x1234))
    with pytest.raises(AudioError, match="Decoder not found"):
        load_audio(path)
    with AudioProcesses(2, min_piece_s=1) as processes, pytest.raises(AudioError, match="Decoder not found"):
        processes.load(path)


def test_a_header_that_claims_years_does_not_allocate_them(tmp_path: Path) -> None:
    path = mp3_claiming_frames(tmp_path / "years.mp3", 3, 0x7FFFFFFF)
    assert audio_duration(path) > 3600 * 24 * 365  # what the header says
    tracemalloc.start()
    try:
        samples = load_audio(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert abs(len(samples) / SAMPLE_RATE - 3) < 0.1
    assert peak < 64 * 2**20


def test_running_out_of_memory_is_an_audio_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "tone.wav"
    path.write_bytes(wav_bytes(pcm16(tone(440, 1, SAMPLE_RATE))))

    def no_memory(*args: object, **kwargs: object) -> None:
        raise MemoryError

    monkeypatch.setattr(audio, "_SampleBuffer", no_memory)
    with pytest.raises(AudioError, match="not enough memory"):
        load_audio(path)


@pytest.mark.parametrize("processes", [0, 2])
def test_max_seconds_stops_a_file_whose_header_understates_its_length(tmp_path: Path, processes: int) -> None:
    # The server checks the header's duration first; a header claiming 0.3 s must not get 60 s decoded.
    path = mp3_claiming_frames(tmp_path / "short_claim.mp3", 60, 10)
    assert audio_duration(path) < 1
    tracemalloc.start()
    try:
        with pytest.raises(AudioTooLong, match=r"short_claim.mp3 runs longer than 20 s"):
            if processes:
                with AudioProcesses(processes, min_piece_s=0.1) as pool:
                    pool.load(path, max_seconds=20)
            else:
                load_audio(path, max_seconds=20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 30 * SAMPLE_RATE * 4 * 2  # stopped at the limit: not the whole minute (and its growth)
    assert len(load_audio(path, max_seconds=61)) / SAMPLE_RATE == pytest.approx(60, abs=0.1)


def test_max_seconds_in_pieces_and_for_arrays(tmp_path: Path) -> None:
    path = tmp_path / "long.wav"
    path.write_bytes(wav_bytes(pcm16(tone(440, 8, SAMPLE_RATE))))
    with AudioProcesses(2, min_piece_s=2) as processes:
        assert len(processes.load(path, max_seconds=9)) == 8 * SAMPLE_RATE
        with pytest.raises(AudioTooLong):
            processes.load(path, max_seconds=7.9)
    with pytest.raises(AudioTooLong, match="audio array"):
        load_audio(np.zeros((2, 8 * 8000), np.int16), sampling_rate=8000, max_seconds=7.9)
    assert len(load_audio(np.zeros((2, 8 * 8000), np.int16), sampling_rate=8000, max_seconds=8)) == 8 * SAMPLE_RATE
    with pytest.raises(ValueError, match="max_seconds"):
        load_audio(path, max_seconds=0)


def test_a_file_with_no_samples_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "header_only.wav"
    path.write_bytes(wav_bytes(b""))
    with pytest.raises(AudioError, match="No audio in .*header_only.wav"):
        load_audio(path)
    with pytest.raises(AudioError, match="No audio in <bytes>"):
        load_audio(path.read_bytes())


def test_channels_without_positions_are_averaged(tmp_path: Path) -> None:
    # A WAV of 9 channels names no positions; FFmpeg cannot downmix those ("Invalid argument").
    channels = np.stack([tone(440, 1, SAMPLE_RATE, amplitude=0.1 * (i + 1)) for i in range(9)])
    path = tmp_path / "nine.wav"
    path.write_bytes(wav_bytes(pcm16(channels.T.ravel()), channels=9))
    samples = load_audio(path)
    np.testing.assert_allclose(samples, channels.mean(axis=0), atol=1e-3)


@pytest.mark.parametrize("source", ["file", "array"])
def test_samples_far_beyond_full_scale_are_rejected(tmp_path: Path, source: str) -> None:
    # Finite but absurd (1e38) samples made the model's features overflow into NaN, blamed on attention kernels.
    loud = np.full(SAMPLE_RATE, 1e38, np.float32)
    path = tmp_path / "loud.wav"
    path.write_bytes(wav_bytes(loud.astype("<f4").tobytes(), tag=3, bits=32))
    with pytest.raises(AudioError, match="far beyond full scale"):
        load_audio(path) if source == "file" else load_audio(loud, sampling_rate=SAMPLE_RATE)


def test_floats_on_an_integer_scale_still_load() -> None:
    int_scaled = tone(440, 1, SAMPLE_RATE) * 32767
    np.testing.assert_array_equal(load_audio(int_scaled, sampling_rate=SAMPLE_RATE), int_scaled)


@pytest.mark.parametrize("rate", [math.inf, math.nan, -math.inf])
def test_a_rate_that_is_not_a_number_is_an_audio_error(rate: float) -> None:
    with pytest.raises(AudioError, match="positive whole number"):
        load_audio(np.zeros(10, np.float32), sampling_rate=rate)  # type: ignore[arg-type]


@pytest.mark.parametrize("processes", [0, 2])
def test_a_named_pipe_is_read(tmp_path: Path, processes: int) -> None:
    # `turnscribe transcribe <(sox ... -t wav -)`: a pipe reports size 0 and can be read only once.
    data = wav_bytes(pcm16(tone(440, 2, SAMPLE_RATE)))
    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)
    writer = threading.Thread(target=fifo.write_bytes, args=(data,))
    writer.start()
    try:
        if processes:
            with AudioProcesses(processes, min_piece_s=0.5) as pool:
                samples = pool.load(fifo)
        else:
            samples = load_audio(fifo)
    finally:
        writer.join(timeout=30)
    assert len(samples) == 2 * SAMPLE_RATE


def test_audio_workers_leave_ctrl_c_to_the_parent() -> None:
    # Ctrl-C signals the whole process group: a worker interrupted mid-task printed a traceback and could die
    # holding the pool's queue lock, so that the parent hung on shutdown.
    with AudioProcesses(1, load=worker_pid) as processes:
        worker = int(processes.load("any.wav")[0])
        os.kill(worker, signal.SIGINT)
        time.sleep(0.2)
        assert alive(worker)
        assert int(processes.load("any.wav")[0]) == worker
