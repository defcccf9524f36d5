"""Turn any audio input (file, bytes, array, tensor) into mono float32 samples at 16 kHz."""

from __future__ import annotations

import ctypes
import io
import logging
import math
import multiprocessing
import numbers
import os
import signal
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from types import TracebackType
from typing import BinaryIO, TypeAlias

import av
import av.error
import numpy as np
import torch
from scipy.signal import resample_poly

from turnscribe.types import SAMPLE_RATE, TurnscribeError

__all__ = ["AudioError", "AudioInput", "AudioLoader", "AudioProcesses", "audio_duration", "load_audio"]

logger = logging.getLogger(__name__)

AudioInput: TypeAlias = str | os.PathLike | bytes | BinaryIO | np.ndarray | torch.Tensor
# What the pipeline calls to read its input: `load_audio` itself, or `AudioProcesses.load`.
AudioLoader: TypeAlias = Callable[[AudioInput, "int | None"], np.ndarray]

# Preallocation slack over the container's duration estimate: estimates (mp3 bitrate guesses, codec priming)
# can be slightly short, and growing the buffer later is the slow path.
_ESTIMATE_MARGIN = 1.01
_MARGIN_SAMPLES = SAMPLE_RATE
# Starting size when the container reports no duration (pipes, some streamed formats); grows from there.
_UNKNOWN_CAPACITY = 60 * SAMPLE_RATE
_GROWTH = 1.5
# Decoded samples are checked for NaN/inf in blocks of this many (4 MB of float32, 1 MB of mask).
_CHECK_BLOCK = 1 << 20

# Errors PyAV raises for unreadable input; several FFmpegError subclasses are also OSError/ValueError,
# and metadata or I/O problems surface as the plain builtins.
_DECODE_ERRORS = (av.error.FFmpegError, OSError, ValueError, EOFError)


class AudioError(TurnscribeError):
    """The audio input could not be read; the message names the input and the reason."""


def load_audio(source: AudioInput, sampling_rate: int | None = None) -> np.ndarray:
    """Return mono float32 samples at 16 kHz (1-D, C-contiguous).

    ``source`` is a path, the bytes of a file, a binary file object, or samples as a numpy array or torch tensor.
    Files are decoded with FFmpeg (through PyAV), so every format it reads works, including the first audio
    track of a video file; ``sampling_rate`` must then be None, since the file says its own rate. Arrays and
    tensors need ``sampling_rate``; they may be shaped (n,), (channels, n) or (n, channels) (the smaller
    dimension is taken as channels), integer samples are scaled to [-1, 1], and channels are averaged.
    An array that already is mono float32 at 16 kHz is returned without a copy.

    Memory: decoding holds about one float32 copy of the audio at its peak. The output buffer is allocated
    once from the container's duration estimate (plus a small margin) and decoded frames are written straight
    into it; if the estimate was short it grows in place (``realloc``, which for large buffers remaps pages
    rather than copying), and at the end it is shrunk in place to the decoded length. The result owns its
    memory: no list of chunks, no ``np.concatenate``, and no oversized parent buffer kept alive behind a view.

    Raises AudioError with the path and a short reason for missing, empty, corrupt or audio-less files and
    for invalid arrays (no rate, NaN/inf, unsupported shape or dtype). Undecodable packets inside an otherwise
    readable file are skipped with a warning, as the ffmpeg command line does, so one damaged frame does not
    lose a long recording.
    """
    if isinstance(source, (np.ndarray, torch.Tensor)):
        return _from_array(source, sampling_rate)
    if isinstance(source, (str, os.PathLike, bytes, bytearray, memoryview)) or hasattr(source, "read"):
        if sampling_rate is not None:
            raise AudioError(
                f"sampling_rate applies only to array and tensor input; {_label(source)} is a file and is "
                "decoded at its own rate (pass sampling_rate=None)"
            )
        return _from_file(source)
    raise AudioError(
        f"Unsupported audio input of type {type(source).__name__}: pass a path, bytes, a binary file object, "
        "a numpy array or a torch tensor"
    )


def audio_duration(source: str | os.PathLike) -> float | None:
    """Return the container's duration estimate in seconds without decoding, or None if it does not say."""
    path = _checked_path(source)
    with _open(path, path) as container:
        return _estimated_seconds(container, _first_audio_stream(container, path))


class AudioProcesses:
    """Decode files in worker processes, so that several files decode at once on several cores.

    PyAV holds the GIL while it decodes and resamples, so files read in threads take turns on one core (two
    threads here were slower than one after the other) and stall every other Python thread meanwhile, such as
    the one that drives the GPU. Arrays, tensors and open file objects are read in the calling process: there
    is nothing to decode, or they cannot be sent to another process.

    The workers start here, all at once, before the caller's threads get busy. On Linux they are forked, as
    PyTorch's DataLoader workers are: they only run FFmpeg and never touch CUDA or torch's thread pools, and
    "spawn" would re-run a user's unguarded script in every worker. Elsewhere they are spawned (the platform's
    default; scripts then need the usual ``if __name__ == "__main__":``).

    A worker that dies (out of memory on a huge file, a crash inside FFmpeg) breaks the pool for every file in
    flight: each is retried once, alone in a process of its own, and only a file that kills that one too gets an
    AudioError; later files get a fresh pool. Use as a context manager, or call `close()`.
    """

    def __init__(self, processes: int, *, load: AudioLoader = load_audio) -> None:
        if processes < 1:
            raise ValueError(f"processes must be at least 1, got {processes}")
        self.processes = processes
        self._load = load  # runs in the workers: a module-level function, so that it can be pickled
        self._forked = sys.platform == "linux"
        self._context = multiprocessing.get_context("fork" if self._forked else "spawn")
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None
        self._current_pool()

    def load(self, source: AudioInput, sampling_rate: int | None = None) -> np.ndarray:
        if not isinstance(source, (str, os.PathLike, bytes, bytearray)):
            return load_audio(source, sampling_rate)
        pool = self._current_pool()
        try:
            return pool.submit(self._load, source, sampling_rate).result()
        except BrokenProcessPool:
            self._discard(pool)
            logger.warning("an audio decoding process died while reading %s; retrying it alone", _label(source))
        # Alone in a process of its own, so that another file that kills its worker cannot take this one along.
        try:
            with self._new_pool(1) as alone:
                return alone.submit(self._load, source, sampling_rate).result()
        except BrokenProcessPool as error:
            raise AudioError(
                f"The process decoding {_label(source)} died (out of memory, or a crash in FFmpeg), also when "
                "retried alone; the file was not read"
            ) from error

    def _current_pool(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = self._new_pool(self.processes)
                # The first task starts every worker (a forking pool starts them all at once).
                self._pool.submit(int).result()
            return self._pool

    def _new_pool(self, processes: int) -> ProcessPoolExecutor:
        if not self._forked:
            return ProcessPoolExecutor(processes, mp_context=self._context)
        return ProcessPoolExecutor(
            processes, mp_context=self._context, initializer=_die_with_parent, initargs=(os.getpid(),)
        )

    def _discard(self, pool: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is pool:  # the first caller to see it broken drops it; the next load starts a fresh one
                self._pool = None
        pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> AudioProcesses:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _die_with_parent(parent: int) -> None:
    """Initializer of a forked worker: be killed as soon as the parent dies, however it dies.

    Workers would otherwise outlive a parent killed with SIGKILL (or by the OOM killer), waiting forever on
    their task queue and holding every file descriptor forked into them: a server's database lock and listening
    socket, so that the server could not restart. The kernel sends the signal when the thread that forked the
    worker ends; the caller's long-lived thread creates the pool, and a worker lost early is retried (see
    `AudioProcesses`).
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
        logger.warning("audio worker: prctl(PR_SET_PDEATHSIG) failed (errno %d)", ctypes.get_errno())
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)


def _label(source: object) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fsdecode(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "<bytes>"
    return str(getattr(source, "name", "<file object>"))


def _reason(error: BaseException) -> str:
    # FFmpeg errors carry a readable strerror; their str() repeats the path we already print.
    return getattr(error, "strerror", None) or str(error) or type(error).__name__


def _checked_path(source: str | os.PathLike) -> str:
    """Catch the common path mistakes before FFmpeg, whose messages for them are cryptic."""
    path = os.fsdecode(source)
    if not os.path.exists(path):
        raise AudioError(f"No such file: {path}")
    if os.path.isdir(path):
        raise AudioError(f"Is a directory, not an audio file: {path}")
    if os.path.getsize(path) == 0:
        raise AudioError(f"Empty file (0 bytes): {path}")
    return path


def _open(file: str | BinaryIO, label: str) -> av.container.InputContainer:
    try:
        # Non-UTF-8 tags are common in the wild and must not make an otherwise good file unreadable.
        return av.open(file, mode="r", metadata_errors="replace")
    except _DECODE_ERRORS as e:
        raise AudioError(f"Not a readable audio or video file: {label} ({_reason(e)})") from e


def _first_audio_stream(container: av.container.InputContainer, label: str) -> av.audio.stream.AudioStream:
    if not container.streams.audio:
        kinds = ", ".join(s.type for s in container.streams) or "none"
        raise AudioError(f"No audio stream in {label} (streams: {kinds})")
    return container.streams.audio[0]


def _estimated_seconds(container: av.container.InputContainer, stream: av.audio.stream.AudioStream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        seconds = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        seconds = container.duration / av.time_base
    else:
        return None
    return seconds if seconds > 0 else None


def _from_file(source: str | os.PathLike | bytes | bytearray | memoryview | BinaryIO) -> np.ndarray:
    label = _label(source)
    file: str | BinaryIO
    if isinstance(source, (str, os.PathLike)):
        file = _checked_path(source)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise AudioError("Empty audio data (0 bytes)")
        file = io.BytesIO(source)
    else:
        file = source
    with _open(file, label) as container:
        stream = _first_audio_stream(container, label)
        try:
            return _decode(container, stream, label)
        except _DECODE_ERRORS as e:
            raise AudioError(f"Cannot decode audio in {label}: {_reason(e)}") from e


def _decode(container: av.container.InputContainer, stream: av.audio.stream.AudioStream, label: str) -> np.ndarray:
    seconds = _estimated_seconds(container, stream)
    capacity = _UNKNOWN_CAPACITY if seconds is None else math.ceil(seconds * SAMPLE_RATE * _ESTIMATE_MARGIN)
    out = _SampleBuffer(capacity + _MARGIN_SAMPLES, label)
    resampler: av.AudioResampler | None = None
    setup: tuple[str, str, int] | None = None
    skipped = 0
    for packet in container.demux(stream):
        try:
            frames = packet.decode()
        except av.error.InvalidDataError:
            skipped += 1
            continue
        for frame in frames:
            # The resampler is fixed to its first frame's format; some streams (e.g. HE-AAC, concatenated
            # recordings) change rate or channel layout midway, so start a fresh one when that happens.
            frame_setup = (frame.format.name, frame.layout.name, frame.sample_rate)
            if resampler is None or frame_setup != setup:
                if resampler is not None:
                    out.extend(resampler.resample(None))
                resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
                setup = frame_setup
            out.extend(resampler.resample(frame))
    if resampler is not None:
        out.extend(resampler.resample(None))
    if skipped:
        if out.size == 0:
            raise AudioError(f"Cannot decode audio in {label}: no packet of its audio stream could be decoded")
        logger.warning("%s: skipped %d undecodable audio packet(s)", label, skipped)
    return out.finish()


class _SampleBuffer:
    """Growable float32 buffer that holds decoded audio in a single allocation."""

    def __init__(self, capacity: int, label: str) -> None:
        self._buf = np.empty(capacity, dtype=np.float32)
        self._size = 0
        self._checked = 0  # samples before this index are known finite
        self._label = label

    @property
    def size(self) -> int:
        return self._size

    def extend(self, frames: list[av.AudioFrame]) -> None:
        for frame in frames:
            # The resampler's output is packed float32 mono, so its one plane holds the samples (then padding).
            # Read straight from it: per-frame costs add up (an hour of mp3 is ~150,000 frames), and
            # to_ndarray's reshaping cost more than the copy below.
            samples = np.frombuffer(memoryview(frame.planes[0]), dtype=np.float32, count=frame.samples)
            end = self._size + samples.size
            if end > self._buf.size:
                # In-place realloc; safe with refcheck off because no view of the buffer is ever kept.
                self._buf.resize(max(end, int(self._buf.size * _GROWTH)), refcheck=False)
            self._buf[self._size : end] = samples
            self._size = end
            if self._size - self._checked >= _CHECK_BLOCK:
                self._check_finite()

    def _check_finite(self) -> None:
        # Float codecs (pcm_f32, some decoders on damaged input) can yield NaN/inf, which would poison every model
        # downstream. Checked in blocks: per frame was a large part of decoding time, the whole buffer at once
        # would need a mask as large as the audio.
        if not np.isfinite(self._buf[self._checked : self._size]).all():
            raise AudioError(f"Audio in {self._label} contains NaN or infinite samples")
        self._checked = self._size

    def finish(self) -> np.ndarray:
        self._check_finite()
        # Shrinking in place releases the margin without copying, so the result owns exactly its samples.
        self._buf.resize(self._size, refcheck=False)
        return self._buf


def _from_array(data: np.ndarray | torch.Tensor, sampling_rate: int | None) -> np.ndarray:
    rate = _checked_rate(sampling_rate)
    if isinstance(data, torch.Tensor):
        tensor = data.detach().cpu()
        # numpy has no bfloat16, and half precision is not worth keeping for audio.
        if tensor.dtype in (torch.float16, torch.bfloat16):
            tensor = tensor.float()
        data = tensor.numpy()
    array = np.asarray(data)
    if array.ndim not in (1, 2):
        raise AudioError(f"Audio array must be 1-D or 2-D (channels x samples), got shape {array.shape}")
    if array.size == 0:
        return np.zeros(0, dtype=np.float32)
    samples = _to_float32(array)
    if samples.ndim == 2:
        channel_axis = 0 if samples.shape[0] <= samples.shape[1] else 1
        samples = samples.mean(axis=channel_axis, dtype=np.float32)
    if rate != SAMPLE_RATE:
        divisor = math.gcd(SAMPLE_RATE, rate)
        samples = resample_poly(samples, SAMPLE_RATE // divisor, rate // divisor)
    return np.ascontiguousarray(samples, dtype=np.float32)


def _checked_rate(sampling_rate: int | None) -> int:
    if sampling_rate is None:
        raise AudioError("sampling_rate is required for array and tensor input (the samples' rate in Hz)")
    if (
        isinstance(sampling_rate, bool)
        or not isinstance(sampling_rate, numbers.Real)
        or sampling_rate <= 0
        or sampling_rate != int(sampling_rate)
    ):
        raise AudioError(f"sampling_rate must be a positive whole number of Hz, got {sampling_rate!r}")
    return int(sampling_rate)


def _to_float32(array: np.ndarray) -> np.ndarray:
    kind = array.dtype.kind
    if kind == "f":
        # Values beyond float32's range become inf here on purpose, so the check below rejects them too.
        with np.errstate(over="ignore"):
            samples = array.astype(np.float32, copy=False)
        if not np.isfinite(samples).all():
            raise AudioError("Audio array contains NaN or infinite samples")
        return samples
    if kind in "iu":
        full_scale = float(2 ** (array.dtype.itemsize * 8 - 1))
        samples = array.astype(np.float32)
        if kind == "u":
            # Unsigned PCM (e.g. 8-bit wav) is centred on half scale.
            samples -= full_scale
        samples /= full_scale
        return samples
    raise AudioError(f"Unsupported audio array dtype {array.dtype}: use integer or floating-point samples")
