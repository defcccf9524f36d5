"""load_audio: every input kind decodes to mono float32 at 16 kHz, bad input fails with AudioError."""

from __future__ import annotations

import gc
import logging
import os
import struct
import subprocess
import sys
import time
import tracemalloc
import wave
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from turnscribe import audio
from turnscribe.audio import AudioError, audio_duration, load_audio
from turnscribe.types import SAMPLE_RATE

TONE_HZ = 440.0
TONE_S = 1.5
# mp3/aac/opus add encoder priming and padding, so decoded lengths differ slightly from the source.
DURATION_TOLERANCE_S = 0.06


def tone(freq: float, seconds: float, rate: int, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def dominant_hz(samples: np.ndarray, rate: int = SAMPLE_RATE) -> float:
    spectrum = np.abs(np.fft.rfft(samples))
    return float(np.fft.rfftfreq(samples.size, 1 / rate)[spectrum.argmax()])


def encode(
    path: Path,
    codec: str,
    channels: np.ndarray,
    rate: int,
    *,
    video: bool = False,
    options: dict[str, str] | None = None,
) -> Path:
    """Write (channels, n) float samples with PyAV; the codec context converts format and frame size itself."""
    layout = {1: "mono", 2: "stereo"}[channels.shape[0]]
    with av.open(str(path), "w") as out:
        if video:
            picture = out.add_stream("mpeg4", rate=10)
            picture.width = picture.height = 32
            picture.pix_fmt = "yuv420p"
        sound = out.add_stream(codec, rate=rate, options=options or {})
        sound.layout = layout
        for start in range(0, channels.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(channels[:, start : start + 1024]), format="fltp", layout=layout
            )
            frame.sample_rate = rate
            frame.pts = start
            out.mux(sound.encode(frame))
        out.mux(sound.encode(None))
        if video:
            write_video_frames(out, picture, int(TONE_S * 10))
    return path


def write_video_frames(out: av.container.OutputContainer, stream: av.video.stream.VideoStream, count: int) -> None:
    for index in range(count):
        frame = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
        frame.pts = index
        out.mux(stream.encode(frame))
    out.mux(stream.encode(None))


def write_wav(path: Path, samples: np.ndarray, rate: int) -> Path:
    """Fast 16-bit mono wav writer for the long file, where encoding through PyAV would dominate the test."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((samples * 32767).astype(np.int16).tobytes())
    return path


# (file name, encoder, source rate, encoder options, with a video stream)
FORMATS = [
    ("tone.wav", "pcm_s16le", 44100, None, False),
    ("tone.flac", "flac", 44100, None, False),
    ("tone.mp3", "libmp3lame", 44100, None, False),
    ("tone.m4a", "aac", 44100, None, False),
    # PyAV's bundled FFmpeg has no libvorbis; its native Vorbis encoder is marked experimental.
    ("tone.ogg", "vorbis", 44100, {"strict": "experimental"}, False),
    ("opus.ogg", "libopus", 48000, None, False),
    ("tone.opus", "libopus", 48000, None, False),
    ("tone.webm", "libopus", 48000, None, False),
    ("tone.mp4", "aac", 44100, None, True),
    ("tone.mkv", "libmp3lame", 22050, None, True),
]


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("media")
    for name, codec, rate, options, video in FORMATS:
        channels = np.stack([tone(TONE_HZ, TONE_S, rate)] * 2)
        encode(folder / name, codec, channels, rate, video=video, options=options)
    return folder


@pytest.fixture
def wav(media: Path) -> Path:
    return media / "tone.wav"


def assert_tone(samples: np.ndarray, seconds: float = TONE_S, freq: float = TONE_HZ) -> None:
    assert samples.dtype == np.float32
    assert samples.ndim == 1
    assert samples.flags["C_CONTIGUOUS"]
    assert abs(samples.size / SAMPLE_RATE - seconds) <= DURATION_TOLERANCE_S
    assert abs(dominant_hz(samples) - freq) <= 5


@pytest.mark.parametrize("name", [f[0] for f in FORMATS])
def test_formats_decode_to_16k_mono(media: Path, name: str) -> None:
    assert_tone(load_audio(media / name))


def test_bytes_file_object_and_str_path_match_path(wav: Path) -> None:
    expected = load_audio(wav)
    np.testing.assert_array_equal(load_audio(wav.read_bytes()), expected)
    with wav.open("rb") as handle:
        np.testing.assert_array_equal(load_audio(handle), expected)
    np.testing.assert_array_equal(load_audio(str(wav)), expected)


def test_8k_stereo_file_mixes_both_channels(tmp_path: Path) -> None:
    rate = 8000
    path = encode(tmp_path / "two.wav", "pcm_s16le", np.stack([tone(300, 2, rate), tone(1000, 2, rate)]), rate)
    samples = load_audio(path)
    assert samples.size == 2 * SAMPLE_RATE
    spectrum = np.abs(np.fft.rfft(samples))
    freqs = np.fft.rfftfreq(samples.size, 1 / SAMPLE_RATE)
    low, high = (spectrum[np.abs(freqs - f) < 5].max() for f in (300, 1000))
    assert low > 0.5 * spectrum.max()
    assert high > 0.5 * spectrum.max()


def test_short_clip_and_silence(tmp_path: Path) -> None:
    clip = encode(tmp_path / "clip.wav", "pcm_s16le", tone(TONE_HZ, 0.2, 44100)[None], 44100)
    assert_tone(load_audio(clip), seconds=0.2)
    silence = encode(tmp_path / "silence.flac", "flac", np.zeros((1, 16000), np.float32), 16000)
    samples = load_audio(silence)
    assert samples.size == SAMPLE_RATE
    assert not samples.any()


def test_rate_and_layout_change_midstream(tmp_path: Path) -> None:
    # Raw mp3 frames can simply be concatenated: the decoder then switches 44.1 kHz mono -> 22.05 kHz stereo.
    first = encode(tmp_path / "a.mp3", "libmp3lame", tone(TONE_HZ, TONE_S, 44100)[None], 44100)
    second = encode(tmp_path / "b.mp3", "libmp3lame", np.stack([tone(TONE_HZ, TONE_S, 22050)] * 2), 22050)
    joined = tmp_path / "joined.mp3"
    joined.write_bytes(first.read_bytes() + second.read_bytes())
    samples = load_audio(joined)
    assert abs(samples.size / SAMPLE_RATE - 2 * TONE_S) <= 2 * DURATION_TOLERANCE_S
    assert abs(dominant_hz(samples) - TONE_HZ) <= 5


def test_damaged_packets_are_skipped_with_warning(
    media: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = bytearray((media / "tone.mp3").read_bytes())
    middle = len(data) // 2
    data[middle : middle + 400] = np.random.default_rng(0).bytes(400)
    damaged = tmp_path / "damaged.mp3"
    damaged.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="turnscribe.audio"):
        samples = load_audio(damaged)
    assert "undecodable" in caplog.text
    assert 0 < samples.size < TONE_S * SAMPLE_RATE
    assert abs(dominant_hz(samples) - TONE_HZ) <= 5


def test_short_duration_estimate_grows_buffer(wav: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audio, "_estimated_seconds", lambda container, stream: 0.1)
    monkeypatch.setattr(audio, "_MARGIN_SAMPLES", 0)
    assert_tone(load_audio(wav))


def test_audio_duration(media: Path) -> None:
    assert audio_duration(media / "tone.wav") == pytest.approx(TONE_S)
    assert audio_duration(media / "tone.mp4") == pytest.approx(TONE_S, abs=DURATION_TOLERANCE_S)
    with pytest.raises(AudioError, match="No such file"):
        audio_duration(media / "missing.wav")


def test_long_file_holds_one_copy(tmp_path: Path) -> None:
    rate = 16000
    path = write_wav(tmp_path / "long.wav", tone(TONE_HZ, 600, rate, amplitude=0.3), rate)
    tracemalloc.start()
    try:
        samples = load_audio(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert samples.size == 600 * SAMPLE_RATE
    owner = samples
    while isinstance(owner.base, np.ndarray):
        owner = owner.base
    assert owner.nbytes <= 1.1 * samples.nbytes
    assert peak < 1.5 * samples.nbytes


# --- arrays and tensors


def test_int16_interleaved_stereo_array() -> None:
    rate = 44100
    left = tone(TONE_HZ, TONE_S, rate)
    pcm = (np.stack([left, left], axis=1) * 32767).astype(np.int16)
    samples = load_audio(pcm, sampling_rate=rate)
    assert samples.size == int(TONE_S * SAMPLE_RATE)
    assert_tone(samples)
    assert 0.45 < np.abs(samples).max() <= 0.51


@pytest.mark.parametrize("dtype", [np.float64, np.int32, np.uint8])
def test_array_dtypes_scale_to_unit_range(dtype: type) -> None:
    source = tone(TONE_HZ, TONE_S, 22050)
    if np.dtype(dtype).kind == "i":
        source = source * np.iinfo(dtype).max
    elif np.dtype(dtype).kind == "u":
        source = source * 127 + 128
    samples = load_audio(np.stack([source, source]).astype(dtype), sampling_rate=22050)
    assert_tone(samples)
    assert 0.45 < np.abs(samples).max() <= 0.51


def test_torch_tensor_input() -> None:
    source = torch.from_numpy(tone(TONE_HZ, TONE_S, 48000))[None]
    assert_tone(load_audio(source, sampling_rate=48000))
    assert_tone(load_audio(source.to(torch.bfloat16), sampling_rate=48000))


def test_16k_mono_float32_array_is_not_copied() -> None:
    source = tone(TONE_HZ, TONE_S, SAMPLE_RATE)
    assert load_audio(source, sampling_rate=SAMPLE_RATE) is source


def test_degenerate_arrays() -> None:
    empty = load_audio(np.zeros(0, np.float32), sampling_rate=44100)
    assert empty.dtype == np.float32
    assert empty.shape == (0,)
    assert load_audio(np.zeros((2, 0), np.int16), sampling_rate=8000).shape == (0,)
    single = load_audio(np.array([0.25]), sampling_rate=44100)
    assert single.dtype == np.float32
    assert single.shape == (1,)


@pytest.mark.parametrize(
    ("data", "rate", "match"),
    [
        (np.zeros(100, np.float32), None, "sampling_rate is required"),
        (np.zeros(100, np.float32), 0, "positive whole number"),
        (np.zeros(100, np.float32), 44100.5, "positive whole number"),
        (np.array([0.0, np.nan, 0.0]), 16000, "NaN or infinite"),
        (np.array([0.0, np.inf], np.float32), 16000, "NaN or infinite"),
        (np.array([0.0, 1e300]), 16000, "NaN or infinite"),
        (np.zeros((2, 2, 100), np.float32), 16000, "1-D or 2-D"),
        (np.zeros(100, np.complex64), 16000, "Unsupported audio array dtype"),
        (torch.tensor([0.0, float("nan")]), 16000, "NaN or infinite"),
        ([0.0, 0.1], 16000, "Unsupported audio input"),
    ],
)
def test_invalid_arrays(data: object, rate: float | None, match: str) -> None:
    with pytest.raises(AudioError, match=match):
        load_audio(data, sampling_rate=rate)  # type: ignore[arg-type]


# --- bad files


def test_sampling_rate_with_file_is_rejected(wav: Path) -> None:
    with pytest.raises(AudioError, match="only to array"):
        load_audio(wav, sampling_rate=16000)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match="No such file.*missing.wav"):
        load_audio(tmp_path / "missing.wav")


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match="Is a directory"):
        load_audio(tmp_path)


def test_empty_file_and_bytes(tmp_path: Path) -> None:
    empty = tmp_path / "empty.wav"
    empty.touch()
    with pytest.raises(AudioError, match=r"Empty file \(0 bytes\).*empty.wav"):
        load_audio(empty)
    with pytest.raises(AudioError, match="Empty audio data"):
        load_audio(b"")


def test_random_bytes(tmp_path: Path) -> None:
    noise = np.random.default_rng(1).bytes(20_000)
    path = tmp_path / "noise.mp3"
    path.write_bytes(noise)
    with pytest.raises(AudioError, match="Not a readable audio or video file.*noise.mp3"):
        load_audio(path)
    with pytest.raises(AudioError, match="<bytes>"):
        load_audio(noise)


def test_text_named_wav(tmp_path: Path) -> None:
    path = tmp_path / "notes.wav"
    path.write_text("these are meeting notes, not a recording\n" * 50)
    with pytest.raises(AudioError, match="notes.wav"):
        load_audio(path)


def test_tags_that_are_not_utf8_do_not_make_a_file_unreadable(tmp_path: Path) -> None:
    # A RIFF INFO title in Latin-1, as old Windows tools write them; FFmpeg passes its bytes through unchanged.
    path = write_wav(tmp_path / "latin1.wav", tone(TONE_HZ, TONE_S, SAMPLE_RATE), SAMPLE_RATE)
    title = "Café réunion".encode("latin-1") + b"\0"
    info = b"INFO" + b"INAM" + struct.pack("<I", len(title)) + title
    data = bytearray(path.read_bytes() + b"LIST" + struct.pack("<I", len(info)) + info)
    struct.pack_into("<I", data, 4, len(data) - 8)
    path.write_bytes(data)
    with av.open(str(path), **audio._OPEN_OPTIONS) as container:
        assert container.metadata["title"].startswith("Caf")  # the tag is there to trip over

    assert_tone(load_audio(path))
    assert_tone(load_audio(path.read_bytes()))
    assert audio_duration(path) == pytest.approx(TONE_S)


def test_video_without_audio(tmp_path: Path) -> None:
    path = tmp_path / "silent_film.mp4"
    with av.open(str(path), "w") as out:
        picture = out.add_stream("mpeg4", rate=10)
        picture.width = picture.height = 32
        picture.pix_fmt = "yuv420p"
        write_video_frames(out, picture, 5)
    with pytest.raises(AudioError, match=r"No audio stream in .*silent_film.mp4 \(streams: video\)"):
        load_audio(path)
    with pytest.raises(AudioError, match="No audio stream"):
        audio_duration(path)


@pytest.mark.parametrize("at_s", [0.5, 70.0])
def test_nan_in_a_float_file_is_an_error(tmp_path: Path, at_s: float) -> None:
    # Decoded samples are checked in blocks of 2**20 (65.5 s): a NaN in a full block (0.5 s) and one in the last,
    # partial block (70 s), which only the final check sees.
    samples = tone(TONE_HZ, 72.0, SAMPLE_RATE)
    samples[int(at_s * SAMPLE_RATE)] = np.nan
    path = encode(tmp_path / "float.wav", "pcm_f32le", samples[None], SAMPLE_RATE)
    with pytest.raises(AudioError, match="float.wav contains NaN or infinite samples"):
        load_audio(path)


# --- decoding in worker processes -------------------------------------------------------------------------------
# Loaders for AudioProcesses run in its workers, so they are module-level functions of this file.


def worker_pid(source: object, sampling_rate: int | None) -> np.ndarray:
    time.sleep(0.3)  # long enough that two loads at once overlap
    return np.array([os.getpid()], np.float32)


def dies_on_crash(source: object, sampling_rate: int | None) -> np.ndarray:
    if "crash" in str(source):
        os._exit(1)  # as a worker killed for memory would
    time.sleep(0.3)  # still in flight when the crashing file kills the pool
    return load_audio(source, sampling_rate)


def test_audio_processes_decode_like_load_audio(media: Path, wav: Path) -> None:
    with audio.AudioProcesses(2) as processes:
        for name, *_ in FORMATS[:4]:
            np.testing.assert_array_equal(processes.load(media / name), load_audio(media / name))
        np.testing.assert_array_equal(processes.load(wav.read_bytes()), load_audio(wav))
        samples = tone(TONE_HZ, 1.0, 8000)
        np.testing.assert_array_equal(processes.load(samples, 8000), load_audio(samples, 8000))
        # The worker's AudioError reaches the caller unchanged.
        with pytest.raises(AudioError, match=r"No such file: .*missing\.wav"):
            processes.load(media / "missing.wav")
        with pytest.raises(AudioError, match="sampling_rate applies only to array"):
            processes.load(wav, 16000)


def test_audio_processes_decode_files_in_parallel_in_other_processes(wav: Path) -> None:
    with audio.AudioProcesses(2, load=worker_pid) as processes, ThreadPoolExecutor(2) as threads:
        pids = [int(p[0]) for p in threads.map(processes.load, [wav, wav])]
        # Arrays are not sent to a worker: they are read where they are.
        assert processes.load(np.zeros(4, np.float32), SAMPLE_RATE).tolist() == [0, 0, 0, 0]
    assert os.getpid() not in pids
    assert len(set(pids)) == 2  # the two loads overlapped, each in its own worker


def test_a_dying_audio_process_loses_only_its_own_file(wav: Path, caplog: pytest.LogCaptureFixture) -> None:
    with audio.AudioProcesses(2, load=dies_on_crash) as processes, ThreadPoolExecutor(3) as threads:
        good = threads.submit(processes.load, wav)
        time.sleep(0.1)  # the good file is being decoded when the other one kills the pool
        crash = threads.submit(processes.load, "crash.wav")
        with pytest.raises(AudioError, match=r"process decoding crash\.wav died .* also when retried alone"):
            crash.result(timeout=60)
        np.testing.assert_array_equal(good.result(timeout=60), load_audio(wav))
        # The pool was replaced: later files decode as before.
        np.testing.assert_array_equal(processes.load(wav), load_audio(wav))
    assert "died while reading" in caplog.text


def test_pools_started_from_many_threads_at_once_all_start() -> None:
    # filelock (imported by transformers and torch) refuses, on Python 3.12+, a fork while another thread forks:
    # two files retried at once, or a retry beside a new pool, lost a file to that RuntimeError.
    import filelock  # noqa: F401  # its fork guard is what the pools must not trip

    def start(_: int) -> int:
        with audio.AudioProcesses(2) as processes:
            return processes.processes

    with ThreadPoolExecutor(8) as threads:
        assert list(threads.map(start, range(32))) == [2] * 32


def collect_then_load(source: object, sampling_rate: int | None) -> np.ndarray:
    gc.collect()
    return load_audio(source, sampling_rate)


def test_a_worker_does_not_free_the_parents_decoders(wav: Path) -> None:
    # The parent's cyclic garbage is forked into every worker; a worker that freed a PyAV 19 resampler from it
    # waited for ever on FFmpeg threads that exist only in the parent. A subprocess, so that a hang is killed.
    script = (
        "import gc, sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from test_audio import collect_then_load\n"
        "from turnscribe.audio import AudioProcesses, load_audio\n"
        "gc.disable()  # keeps the parent's resampler as garbage until the fork\n"
        "expected = load_audio(sys.argv[1])\n"
        "with AudioProcesses(1, load=collect_then_load) as processes:\n"
        "    assert (processes.load(sys.argv[1]) == expected).all()\n"
        "print('decoded')\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(wav)], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "decoded", done.stderr


def test_audio_processes_die_with_a_killed_parent(tmp_path: Path) -> None:
    # A worker that outlived its parent would hold every descriptor forked into it (a server's database lock,
    # its listening socket), so that the server could not restart; it also waits forever for work.
    script = (
        "import sys, time\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from test_audio import worker_pid\n"
        "from turnscribe.audio import AudioProcesses\n"
        "processes = AudioProcesses(1, load=worker_pid)\n"
        "print(int(processes.load('any.wav')[0]), flush=True)\n"
        "time.sleep(120)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    worker = int(parent.stdout.readline())
    assert alive(worker)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while alive(worker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(worker), f"audio worker {worker} outlived its killed parent"


def alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped by whoever adopted it counts as dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


# --- long files in pieces ---------------------------------------------------------------------------------------
# (file name, encoder, rate, options): every codec decoded in pieces, then the ones that must not be.
PIECEWISE = [
    ("long.wav", "pcm_s16le", 44100, None),
    ("long.flac", "flac", 44100, None),
    ("long.mp3", "libmp3lame", 44100, None),
    ("long.ogg", "vorbis", 44100, {"strict": "experimental"}),
    ("long.opus", "libopus", 48000, None),
]
ONE_PASS = [
    ("long.m4a", "aac", 44100, None),  # AAC's noise substitution decodes differently after a seek
    ("long.webm", "libopus", 48000, None),  # millisecond timestamps cannot place a piece to the sample
]
LONG_S = 12.0


@pytest.fixture(scope="module")
def long_media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("long")
    for name, codec, rate, options in PIECEWISE + ONE_PASS:
        # A warbling tone with a little noise: a piece out of place by one sample would not match.
        t = np.arange(int(LONG_S * rate)) / rate
        wave_ = 0.3 * np.sin(2 * np.pi * (300 + 40 * np.sin(2 * np.pi * 0.5 * t)) * t)
        noise = 0.01 * np.random.default_rng(0).standard_normal(len(t))
        mono = (wave_ + noise).astype(np.float32)
        encode(folder / name, codec, np.stack([mono, 0.5 * mono]), rate, options=options)
    return folder


@pytest.mark.parametrize("name", [entry[0] for entry in PIECEWISE])
def test_pieces_join_up_exactly_with_one_pass(long_media: Path, name: str) -> None:
    path = long_media / name
    whole = load_audio(path)
    starts = [0, 40_000, 95_111, 150_000]  # arbitrary sample positions, not on any frame boundary
    pieces = [audio.decode_piece(str(path), a, b) for a, b in zip(starts, [*starts[1:], None])]
    np.testing.assert_array_equal(np.concatenate([samples for samples, _ in pieces]), whole)
    for start, (_, check) in zip(starts[1:], pieces[1:]):
        np.testing.assert_array_equal(check, whole[start - len(check) : start])
    assert len(pieces[0][1]) == 0 and all(len(check) == SAMPLE_RATE // 4 for _, check in pieces[1:])


@pytest.mark.parametrize("name", [entry[0] for entry in PIECEWISE + ONE_PASS])
def test_audio_processes_decode_long_files_in_pieces_where_they_join_up(
    long_media: Path, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="turnscribe.audio")
    with audio.AudioProcesses(2, min_piece_s=LONG_S / 4) as processes:
        samples = processes.load(long_media / name)
        assert processes._reserved == 0  # the shared memory went back
    np.testing.assert_array_equal(samples, load_audio(long_media / name))
    in_pieces = "decoded in 2 pieces" in caplog.text
    assert in_pieces == (name in [entry[0] for entry in PIECEWISE]), caplog.text


def test_pieces_that_do_not_join_up_are_decoded_in_one_pass(
    long_media: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Every piece but the first placed one sample late (the workers are forked after the patch, so they see it).
    aligned = audio._aligned
    monkeypatch.setattr(audio, "_aligned", lambda *args: (lambda frame, at: (frame, at + (at > 0)))(*aligned(*args)))
    caplog.set_level(logging.INFO, logger="turnscribe.audio")
    with audio.AudioProcesses(2, min_piece_s=LONG_S / 4) as processes:
        samples = processes.load(long_media / "long.flac")
    np.testing.assert_array_equal(samples, load_audio(long_media / "long.flac"))
    assert "do not join up" in caplog.text and "decoded in 2 pieces" not in caplog.text


def test_a_piece_that_cannot_be_placed_falls_back_to_one_pass(
    long_media: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def unplaceable(*args: object) -> None:
        raise audio._NotSplittable("frames without timestamps")

    monkeypatch.setattr(audio, "_aligned", unplaceable)
    caplog.set_level(logging.INFO, logger="turnscribe.audio")
    with audio.AudioProcesses(2, min_piece_s=LONG_S / 4) as processes:
        samples = processes.load(long_media / "long.mp3")
    np.testing.assert_array_equal(samples, load_audio(long_media / "long.mp3"))
    assert "decoding in one pass (frames without timestamps)" in caplog.text


def test_a_short_duration_estimate_still_gives_every_sample(long_media: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The last piece runs past the shared buffer sized from the estimate; what does not fit comes back with it.
    monkeypatch.setattr(audio, "_estimated_seconds", lambda container, stream: LONG_S * 0.8)
    with audio.AudioProcesses(2, min_piece_s=LONG_S / 4) as processes:
        samples = processes.load(long_media / "long.flac")
    np.testing.assert_array_equal(samples, load_audio(long_media / "long.flac"))


def test_pieces_meeting_in_silence_are_not_trusted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # A misplaced piece would match its neighbour in digital silence: there the file is decoded in one pass.
    samples = tone(TONE_HZ, LONG_S, 44100)
    samples[int(5.5 * 44100) : int(6.5 * 44100)] = 0.0  # around the cut at 6 s
    path = encode(tmp_path / "gap.flac", "flac", samples[None], 44100)
    caplog.set_level(logging.INFO, logger="turnscribe.audio")
    with audio.AudioProcesses(2, min_piece_s=LONG_S / 2) as processes:
        decoded = processes.load(path)
    np.testing.assert_array_equal(decoded, load_audio(path))
    assert "too quiet where pieces meet" in caplog.text


def no_shared_memory(*args: object, **kwargs: object) -> None:
    raise FileNotFoundError("/dev/shm")


@pytest.mark.parametrize(
    ("name", "replacement", "message"),
    [
        # Docker's default /dev/shm is 64 MB: a piece written past it would kill its worker with SIGBUS.
        ("_free_shared_memory", lambda: 1_000_000, "too little free shared memory"),
        ("SharedMemory", no_shared_memory, "no shared memory"),
    ],
    ids=["too-little", "none"],
)
def test_without_room_in_shared_memory_a_long_file_is_decoded_in_one_pass(
    long_media: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, name, replacement, message
) -> None:
    monkeypatch.setattr(audio, name, replacement)
    caplog.set_level(logging.INFO, logger="turnscribe.audio")
    with audio.AudioProcesses(2, min_piece_s=LONG_S / 4) as processes:
        samples = processes.load(long_media / "long.flac")
        assert processes._reserved == 0
    np.testing.assert_array_equal(samples, load_audio(long_media / "long.flac"))
    assert message in caplog.text


def test_audio_processes_by_default_only_where_they_are_forked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(sys, "platform", "linux")
    assert audio.audio_process_count() == 16 and audio.audio_process_count(3) == 3
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert audio.audio_process_count() == 0
    # Spawned workers would re-run an unguarded script: elsewhere only when asked for.
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.setattr(sys, "platform", "darwin")
    assert audio.audio_process_count() == 0 and audio.audio_process_count(4) == 4
