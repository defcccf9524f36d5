"""Turn any audio input (file, bytes, array, tensor) into mono float32 samples at 16 kHz."""

from __future__ import annotations

import ctypes
import gc
import io
import logging
import math
import multiprocessing
import numbers
import os
import shutil
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from fractions import Fraction
from functools import partial
from multiprocessing import resource_tracker
from multiprocessing.shared_memory import SharedMemory
from types import TracebackType
from typing import Any, BinaryIO, TypeAlias

import av
import av.error
import numpy as np
import torch
from scipy.signal import resample_poly

from turnscribe.types import SAMPLE_RATE, SILENCE_PEAK, TurnscribeError

__all__ = [
    "AudioError",
    "AudioInput",
    "AudioLoader",
    "AudioProcesses",
    "AudioTooLong",
    "audio_duration",
    "audio_process_count",
    "load_audio",
]

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
# A damaged or crafted header can claim years (an mp3's Xing frame count): the estimate is believed only as far as
# the file could hold it, 64 output samples per byte (Opus at 6 kbit/s gives 21; what compresses further, such as
# digital silence, grows the buffer), and 4 hours (0.9 GB) at most. Beyond that the buffer grows as samples arrive.
_MAX_SAMPLES_PER_BYTE = 64
_MAX_PREALLOCATED = 4 * 3600 * SAMPLE_RATE
_GROWTH = 1.5
# Decoded samples are checked for NaN/inf and absurd levels in blocks of this many (4 MB of float32).
_CHECK_BLOCK = 1 << 20
# Loudest sample accepted, 100 dB above full scale: float files a little over ±1, or stored on a 16-bit integer scale
# (±32768), still work; beyond this the numbers are not audio, and the model's features overflow into NaN.
MAX_PEAK = 1e5
# Slowest sampling rate accepted for arrays. Below it no speech is left, and what is passed is a rate in kHz (16 for
# 16 kHz), which resampling would turn into a thousand times the samples: 4 GB for a minute of audio.
MIN_SAMPLING_RATE = 1000

# Errors PyAV raises for unreadable input; several FFmpegError subclasses are also OSError/ValueError,
# and metadata or I/O problems surface as the plain builtins.
_DECODE_ERRORS = (av.error.FFmpegError, OSError, ValueError, EOFError)


class AudioError(TurnscribeError):
    """The audio input could not be read; the message names the input and the reason."""


class AudioTooLong(AudioError):
    """The audio runs longer than the caller's `max_seconds`: decoding stopped there, holding no more than that."""


def load_audio(source: AudioInput, sampling_rate: int | None = None, *, max_seconds: float | None = None) -> np.ndarray:
    """Return mono float32 samples at 16 kHz (1-D, C-contiguous).

    ``source`` is a path, the bytes of a file, a binary file object, or samples as a numpy array or torch tensor.
    Files are decoded with FFmpeg (through PyAV), so every format it reads works, including the first audio
    track of a video file; ``sampling_rate`` must then be None, since the file says its own rate. Arrays and
    tensors need ``sampling_rate``; they may be shaped (n,), (channels, n) or (n, channels) (the smaller
    dimension is taken as channels), integer samples of 8 to 32 bits are scaled to [-1, 1] by their type's full
    scale (64-bit ones are refused: they have none), and channels are averaged.
    An array that already is mono float32 at 16 kHz is returned without a copy.

    Memory: decoding holds about one float32 copy of the audio at its peak. The output buffer is allocated
    once from the container's duration estimate (plus a small margin) and decoded frames are written straight
    into it; if the estimate was short it grows in place (``realloc``, which for large buffers remaps pages
    rather than copying), and at the end it is shrunk in place to the decoded length. The result owns its
    memory: no list of chunks, no ``np.concatenate``, and no oversized parent buffer kept alive behind a view.

    ``max_seconds`` caps the length: longer audio raises AudioTooLong as soon as decoding passes it, so a file
    whose header understates its length (a server checks the header first) cannot fill memory.

    Raises AudioError with the path and a short reason for missing, empty, corrupt or audio-less files (a file
    that decodes to no samples included) and for invalid arrays (no rate, NaN/inf or samples far beyond full
    scale, unsupported shape or dtype). Undecodable packets inside an otherwise
    readable file are skipped with a warning, as the ffmpeg command line does, so one damaged frame does not
    lose a long recording.
    """
    if max_seconds is not None and not max_seconds > 0:
        raise ValueError(f"max_seconds must be positive, got {max_seconds!r}")
    if isinstance(source, (np.ndarray, torch.Tensor)):
        return _from_array(source, sampling_rate, max_seconds)
    if isinstance(source, (str, os.PathLike, bytes, bytearray, memoryview)) or hasattr(source, "read"):
        if sampling_rate is not None:
            raise AudioError(
                f"sampling_rate applies only to array and tensor input; {_label(source)} is a file and is "
                "decoded at its own rate (pass sampling_rate=None)"
            )
        return _from_file(source, max_seconds)
    raise AudioError(
        f"Unsupported audio input of type {type(source).__name__}: pass a path, bytes, a binary file object, "
        "a numpy array or a torch tensor"
    )


def audio_duration(source: str | os.PathLike) -> float | None:
    """Return the container's duration estimate in seconds without decoding, or None if it does not say."""
    path = _checked_path(source)
    with _open(path, path) as container:
        return _estimated_seconds(container, _first_audio_stream(container, path))


# The default's cap: 16 pieces decode an hour of mp3 in ~0.4 s, and every process holds the samples of its piece.
MAX_DEFAULT_AUDIO_PROCESSES = 16


def audio_process_count(requested: int | None = None) -> int:
    """`requested`, or the default number of audio processes: on Linux one per core up to 16, none on one core.

    None by default elsewhere: there workers are spawned, which re-runs the caller's script in each of them
    unless it guards its top level with ``if __name__ == "__main__":``; ask for them explicitly there.
    """
    if requested is not None:
        return requested
    cores = min(os.cpu_count() or 1, MAX_DEFAULT_AUDIO_PROCESSES)
    return cores if cores > 1 and sys.platform == "linux" else 0


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

    A file of at least two `min_piece_s` is decoded in pieces, one per process, so that one long recording uses
    every core too. Only where pieces provably join up with one pass over the file: codecs tested to decode
    identically after a seek (PCM, FLAC, mp3, Vorbis, Opus; not AAC, whose noise substitution differs), and
    timestamps fine enough to place a piece to the sample (not WebM/Matroska's milliseconds). Each piece's first
    quarter second is also decoded by the piece before it; if the two differ or are too quiet to tell, or a piece
    fails, the file is decoded in one pass instead.

    A worker that dies (out of memory on a huge file, a crash inside FFmpeg) breaks the pool for every file in
    flight: each is retried once, alone in a process of its own, and only a file that kills that one too gets an
    AudioError; later files get a fresh pool. Use as a context manager, or call `close()`.
    """

    def __init__(
        self, processes: int, *, load: Callable[..., np.ndarray] = load_audio, min_piece_s: float = 60.0
    ) -> None:
        if processes < 1:
            raise ValueError(f"processes must be at least 1, got {processes}")
        self.processes = processes
        self.min_piece_s = min_piece_s
        # Runs in the workers (a module-level function, so that it can be pickled), as load_audio is called.
        self._load = load
        self._forked = sys.platform == "linux"
        self._context = multiprocessing.get_context("fork" if self._forked else "spawn")
        if self._forked:
            # The workers' shared memory (see _in_pieces) must be tracked by this process's resource tracker:
            # started later, each forked worker would start one of its own, which warns about, and unlinks, what it
            # saw. (Spawned workers are handed the parent's tracker, started then if need be.)
            resource_tracker.ensure_running()
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None
        self._reserved = 0  # bytes of shared memory held by pieces in flight
        self._current_pool()

    def load(
        self, source: AudioInput, sampling_rate: int | None = None, *, max_seconds: float | None = None
    ) -> np.ndarray:
        """`load_audio` in a worker process (see the class docstring)."""
        if not isinstance(source, (str, os.PathLike, bytes, bytearray)):
            return load_audio(source, sampling_rate, max_seconds=max_seconds)
        # A module-level function and a partial of one pickle; a caller's `load` need not know max_seconds.
        read = self._load if max_seconds is None else partial(self._load, max_seconds=max_seconds)
        pool = self._current_pool()
        try:
            if (samples := self._in_pieces(pool, source, sampling_rate, max_seconds)) is not None:
                return samples
            return pool.submit(read, source, sampling_rate).result()
        except BrokenProcessPool:
            self._discard(pool)
            logger.warning("an audio decoding process died while reading %s; retrying it alone", _label(source))
        # Alone in a process of its own, so that another file that kills its worker cannot take this one along.
        try:
            with self._new_pool(1) as alone:
                return alone.submit(read, source, sampling_rate).result()
        except BrokenProcessPool as error:
            raise AudioError(
                f"The process decoding {_label(source)} died (out of memory, or a crash in FFmpeg), also when "
                "retried alone; the file was not read"
            ) from error

    def _in_pieces(
        self, pool: ProcessPoolExecutor, source: AudioInput, sampling_rate: int | None, max_seconds: float | None
    ) -> np.ndarray | None:
        """The file decoded in pieces, or None where it cannot be (see the class docstring)."""
        if self.processes < 2 or sampling_rate is not None or not isinstance(source, (str, os.PathLike)):
            return None
        path = os.fsdecode(source)
        if not os.path.isfile(path):  # a pipe can be read once only; the one-pass decode reports a missing file
            return None
        try:
            seconds = _splittable_seconds(path)
        except AudioError:
            return None  # the one-pass decode says what is wrong with it
        if seconds is None or (count := min(self.processes, int(seconds // self.min_piece_s))) < 2:
            return None
        if max_seconds is not None and seconds > max_seconds:
            return None  # the one-pass decode stops at the limit
        starts = [round(seconds * SAMPLE_RATE * i / count) for i in range(count)]
        stops: list[int | None] = [*starts[1:], None]  # the last piece runs to the end, whatever the estimate said
        # The pieces come back through shared memory: through the pool's pipes, an hour of samples took longer
        # to unpickle in this process than the pieces took to decode.
        capacity = math.ceil(seconds * SAMPLE_RATE * _ESTIMATE_MARGIN) + _MARGIN_SAMPLES
        size = capacity * np.dtype(np.float32).itemsize
        if not self._reserve(size):
            logger.info("%s: decoding in one pass (too little free shared memory for it in pieces)", path)
            return None
        try:
            memory = SharedMemory(create=True, size=size)
        except OSError as error:  # no /dev/shm, or it is full
            self._release(size)
            logger.info("%s: decoding in one pass (no shared memory: %s)", path, error)
            return None
        try:
            futures = [
                pool.submit(_decode_piece_into, path, start, stop, memory.name, capacity, max_seconds)
                for start, stop in zip(starts, stops)
            ]
            wait(futures)  # every worker is done with the memory before it goes
            try:
                pieces = [future.result() for future in futures]
            except (BrokenProcessPool, AudioTooLong):
                raise  # a worker died: load() retries the file alone; or the header understated the length
            except Exception as error:  # _NotSplittable, AudioError, or anything else: one pass will tell
                logger.info("%s: decoding in one pass (%s)", path, error)
                return None
            return _joined(path, memory, capacity, starts, pieces)
        finally:
            memory.close()
            memory.unlink()
            self._release(size)

    def _release(self, size: int) -> None:
        with self._lock:
            self._reserved -= size

    def _reserve(self, size: int) -> bool:
        """Room for `size` bytes of shared memory, counting what this instance's other loads hold.

        Shared memory is allocated as it is written: where it runs out (Docker gives /dev/shm 64 MB by default),
        the writing worker is killed with SIGBUS. Half of what is free is used at most, to leave room for others.
        """
        with self._lock:
            free = _free_shared_memory()
            if free is not None and self._reserved + size > free // 2:
                return False
            self._reserved += size
            return True

    def _current_pool(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = self._new_pool(self.processes)
            return self._pool

    def _new_pool(self, processes: int) -> ProcessPoolExecutor:
        """A pool with its workers started: the first task starts them all (a forking pool forks them at once)."""
        if not self._forked:
            pool = ProcessPoolExecutor(processes, mp_context=self._context)
        else:
            pool = ProcessPoolExecutor(
                processes, mp_context=self._context, initializer=_start_forked_worker, initargs=(os.getpid(),)
            )
        with _STARTING_WORKERS:
            pool.submit(int).result()
        return pool

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


# One pool starts its workers at a time, process-wide: filelock (imported by transformers and torch) refuses,
# on Python 3.12+, an os.fork while another thread is forking, so a file retried alone while another pool started
# failed with "os.fork is unsafe while filelock is changing descriptor ownership".
_STARTING_WORKERS = threading.Lock()
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _start_forked_worker(parent: int) -> None:
    """Initializer of a forked worker: leave the parent's objects alone, leave Ctrl-C to it, and die with it.

    The parent's cyclic garbage comes along in the fork, and PyAV 19's resamplers are among it: freeing one
    joins FFmpeg's filter threads, which exist only in the parent, so a worker whose garbage collector got to one
    hung for ever. Frozen, they are never collected here.
    """
    gc.freeze()
    # Ctrl-C in a terminal signals the whole process group: the parent stops the pool; a worker interrupted
    # mid-task printed a traceback and could die holding the pool's queue lock, hanging the parent's shutdown.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(parent)


def _die_with_parent(parent: int) -> None:
    """Be killed as soon as the parent dies, however it dies.

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
    name = getattr(source, "name", None)
    # Not every file object's name is a path: TemporaryFile's is its descriptor, SpooledTemporaryFile's None.
    return os.fsdecode(name) if isinstance(name, (str, bytes, os.PathLike)) else "<file object>"


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
    if os.path.isfile(path) and os.path.getsize(path) == 0:  # a pipe's size says nothing
        raise AudioError(f"Empty file (0 bytes): {path}")
    return path


# Non-UTF-8 tags are common in the wild and must not make an otherwise good file unreadable: PyAV before 19
# decodes them strictly unless told otherwise; 19 dropped the option and always decodes them leniently.
_OPEN_OPTIONS: dict[str, Any] = {"metadata_errors": "replace"} if int(av.__version__.split(".")[0]) < 19 else {}


def _open(file: str | BinaryIO, label: str, hint: str = "") -> av.container.InputContainer:
    try:
        return av.open(file, mode="r", **_OPEN_OPTIONS)
    except _DECODE_ERRORS as e:
        raise AudioError(f"Not a readable audio or video file: {label} ({_reason(e)}){hint}") from e


def _read_from_where_it_stands(file: BinaryIO) -> str:
    """Why a good file object may not open: it is read from where it stands (as soundfile reads one), which is past its
    start once something read it first (an upload's size or type checked before it is transcribed)."""
    try:
        position = file.tell()
    except (AttributeError, OSError, ValueError):  # a pipe or socket: it cannot say, nor be rewound
        return ""
    return f"; it was read from byte {position}, where the file object stood: seek(0) first" if position else ""


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


def _from_file(
    source: str | os.PathLike | bytes | bytearray | memoryview | BinaryIO, max_seconds: float | None
) -> np.ndarray:
    label = _label(source)
    file: str | BinaryIO
    hint = ""
    if isinstance(source, (str, os.PathLike)):
        file = _checked_path(source)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise AudioError("Empty audio data (0 bytes)")
        file = io.BytesIO(source)
    elif isinstance(source, io.TextIOBase):  # PyAV would fail on the first bytes that are not UTF-8
        raise AudioError(f"{label} is open in text mode: open audio files with 'rb'")
    else:
        file = source
        hint = _read_from_where_it_stands(source)
    with _open(file, label, hint) as container:
        stream = _first_audio_stream(container, label)
        try:
            samples = _decode(container, stream, label, max_seconds)
        except _DECODE_ERRORS as e:
            raise AudioError(f"Cannot decode audio in {label}: {_reason(e)}") from e
        except MemoryError as e:
            raise AudioError(f"Cannot decode audio in {label}: not enough memory to hold it") from e
    if samples.size == 0:
        raise AudioError(f"No audio in {label}: its audio stream holds no samples")
    return samples


def _decode(
    container: av.container.InputContainer, stream: av.audio.stream.AudioStream, label: str, max_seconds: float | None
) -> np.ndarray:
    out = _SampleBuffer(_capacity(container, stream) + _MARGIN_SAMPLES, label, max_seconds)
    frames = _Frames(container, stream)
    resampler: av.AudioResampler | None = None
    setup: tuple[str, str, int] | None = None
    for frame in frames:
        # The resampler is fixed to its first frame's format; some streams (e.g. HE-AAC, concatenated
        # recordings) change rate or channel layout midway, so start a fresh one when that happens.
        if resampler is None or _setup(frame) != setup:
            if resampler is not None:
                out.extend(resampler.resample(None))
            resampler, setup = _resampler(frame), _setup(frame)
        out.extend(resampler.resample(frame))
    if resampler is not None:
        out.extend(resampler.resample(None))
    frames.report(label, decoded=out.size)
    return out.finish()


def _capacity(container: av.container.InputContainer, stream: av.audio.stream.AudioStream) -> int:
    """Samples to preallocate: the duration estimate, as far as the file is large enough to hold it."""
    seconds = _estimated_seconds(container, stream)
    if seconds is None:
        return _UNKNOWN_CAPACITY
    estimate = math.ceil(seconds * SAMPLE_RATE * _ESTIMATE_MARGIN)
    plausible = max(_UNKNOWN_CAPACITY, container.size * _MAX_SAMPLES_PER_BYTE) if container.size > 0 else estimate
    return min(estimate, plausible, _MAX_PREALLOCATED)


class _Frames:
    """The stream's decoded frames. Undecodable packets are skipped, as the ffmpeg command line does, and counted."""

    def __init__(self, container: av.container.InputContainer, stream: av.audio.stream.AudioStream) -> None:
        self._container, self._stream = container, stream
        self.skipped = 0

    def __iter__(self) -> Iterator[av.AudioFrame]:
        for packet in self._container.demux(self._stream):
            try:
                frames = packet.decode()
            except av.error.InvalidDataError:
                self.skipped += 1
                continue
            yield from frames

    def report(self, label: str, decoded: int) -> None:
        if not self.skipped:
            return
        if decoded == 0:
            raise AudioError(f"Cannot decode audio in {label}: no packet of its audio stream could be decoded")
        logger.warning("%s: skipped %d undecodable audio packet(s)", label, self.skipped)


def _setup(frame: av.AudioFrame) -> tuple[str, str, int]:
    return frame.format.name, frame.layout.name, frame.sample_rate


def _resampler(frame: av.AudioFrame) -> av.AudioResampler:
    """To packed float32 at 16 kHz, mono; channels without positions (a WAV of 9 channels says none) stay apart.

    FFmpeg downmixes by where each channel sits, and refuses channels that do not say ("Invalid argument"):
    those come out interleaved, and `_samples` averages them. (Packed: PyAV 18 miscounts the planes of a planar
    frame of more than 8 channels.)
    """
    if any(channel.name == "NONE" for channel in frame.layout.channels):
        return av.AudioResampler(format="flt", rate=SAMPLE_RATE)
    return av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)


def _samples(frame: av.AudioFrame) -> np.ndarray:
    """A resampled frame's mono samples: its one plane read in place (float32, then padding), channels averaged.

    Per-frame costs add up (an hour of mp3 is ~150,000 frames), and to_ndarray's reshaping cost more than the copy
    into the sample buffer.
    """
    channels = len(frame.layout.channels)
    samples = np.frombuffer(memoryview(frame.planes[0]), dtype=np.float32, count=frame.samples * channels)
    if channels == 1:
        return samples
    return samples.reshape(-1, channels).mean(axis=1, dtype=np.float32)


class _NotSplittable(Exception):
    """The file's pieces cannot be lined up sample for sample with one pass over it: decode it in one pass."""


# Decoding a long file in pieces (AudioProcesses): each piece is decoded from this far before its start, so that
# the decoder (mp3's bit reservoir, AAC's overlapping transform, Opus's pre-roll) and the resampler have settled
# by its first sample; and it also returns this much audio from before its start, which the previous piece
# decoded as its end: the two must agree, or the file is decoded in one pass after all.
_SEEK_MARGIN_S = 1.0
_CHECK_SAMPLES = SAMPLE_RATE // 4
_CHECK_TOLERANCE = 1e-4
_CHECK_PEAK = 1e-3  # -60 dBFS: a room's noise floor is louder; digital silence and fades are not
# Codecs whose pieces were tested to join up exactly with one pass (tests/test_audio.py), besides pcm_*.
_PIECEWISE_CODECS = frozenset({"flac", "mp3", "mp3float", "vorbis", "opus", "libopus"})


def decode_piece(
    path: str, start: int, stop: int | None, max_seconds: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Output samples [start, stop) of a file (stop None: to its end), and the _CHECK_SAMPLES before `start`.

    Positions are in 16 kHz samples from the stream's first sample, as one pass over the file counts them. The
    piece is found by seeking, and placed by its first frame's timestamp; that frame is cut to the first input
    sample where the input and output sample grids meet (every 441 samples at 44.1 kHz), so the resampler works
    in the same phase as in one pass, and the output equals it once the margin has passed. Raises _NotSplittable
    where that does not hold (no timestamps, the format changing midway, a piece ending early).
    """
    label = _checked_path(path)
    with _open(label, label) as container:
        stream = _first_audio_stream(container, label)
        try:
            return _decode_piece(container, stream, label, start, stop, max_seconds)
        except _DECODE_ERRORS as e:
            raise AudioError(f"Cannot decode audio in {label}: {_reason(e)}") from e


def _decode_piece(
    container: av.container.InputContainer,
    stream: av.audio.stream.AudioStream,
    label: str,
    start: int,
    stop: int | None,
    max_seconds: float | None,
) -> tuple[np.ndarray, np.ndarray]:
    time_base = stream.time_base
    if time_base is None:
        raise _NotSplittable("the stream has no time base")
    check = min(start, _CHECK_SAMPLES)
    keep = start - check  # first output sample kept
    if start > 0:
        seconds = max(0.0, start / SAMPLE_RATE - _SEEK_MARGIN_S)
        container.seek(round(seconds / time_base) + (stream.start_time or 0), stream=stream, backward=True)
    capacity = (stop if stop is not None else start + 600 * SAMPLE_RATE) - keep + _MARGIN_SAMPLES
    out = _SampleBuffer(capacity, label, max_seconds, start=keep)
    frames = _Frames(container, stream)
    resampler: av.AudioResampler | None = None
    setup: tuple[str, str, int] | None = None
    position = 0  # output index of the resampler's next sample
    for frame in frames:
        if resampler is None:
            resampler, setup = _resampler(frame), _setup(frame)
            frame, position = _aligned(frame, stream.start_time or 0, time_base)
            if position > keep:
                raise _NotSplittable(f"seeking landed after the piece's start ({position} > {keep})")
        elif _setup(frame) != setup:
            raise _NotSplittable("the audio format changes midway")
        for resampled in resampler.resample(frame):
            samples = _samples(resampled)
            first, end = max(keep - position, 0), len(samples) if stop is None else min(len(samples), stop - position)
            if end > first:
                out.append(samples[first:end])
            position += len(samples)
        if stop is not None and position >= stop:
            break
    else:  # the end of the file: the resampler's tail belongs to the last piece
        for resampled in resampler.resample(None) if resampler is not None else []:
            out.append(_samples(resampled))
    frames.report(label, decoded=out.size)
    if stop is not None and out.size < stop - keep:
        raise _NotSplittable(f"the file ended before the piece did ({keep + out.size} < {stop})")
    samples = out.finish()
    return samples[check:], samples[:check].copy()  # a view: no second copy of the piece


def _free_shared_memory() -> int | None:
    """Free bytes where POSIX shared memory lives on Linux; None where it is not a size-limited filesystem."""
    return shutil.disk_usage("/dev/shm").free if os.path.isdir("/dev/shm") else None


def _joined(
    path: str, memory: SharedMemory, capacity: int, starts: list[int], pieces: list[tuple[int, np.ndarray, np.ndarray]]
) -> np.ndarray | None:
    """The pieces in shared memory as one array, or None if a piece's check samples disagree with the one before."""
    shared = np.ndarray((capacity,), dtype=np.float32, buffer=memory.buf)
    for start, (_, check, _) in zip(starts[1:], pieces[1:]):
        before = shared[start - len(check) : start]
        if len(check) != _CHECK_SAMPLES or np.max(np.abs(before - check)) > _CHECK_TOLERANCE:
            logger.info("%s: decoding in one pass (pieces do not join up)", path)
            return None
        # Near-silence would match a misplaced piece too: what cannot be checked is not trusted.
        if np.max(np.abs(before)) < _CHECK_PEAK:
            logger.info("%s: decoding in one pass (too quiet where pieces meet to check them)", path)
            return None
    end, _, overflow = pieces[-1]
    kept = min(end, capacity)
    samples = np.empty(kept + len(overflow), dtype=np.float32)
    samples[:kept] = shared[:kept]
    samples[kept:] = overflow
    logger.debug("%s: decoded in %d pieces", path, len(pieces))
    return samples


def _decode_piece_into(
    path: str, start: int, stop: int | None, memory_name: str, capacity: int, max_seconds: float | None
) -> tuple[int, np.ndarray, np.ndarray]:
    """Worker: decode a piece into the shared output at its place; return where it ends, its check samples, and
    what did not fit (the last piece, when the duration estimate was short)."""
    samples, check = decode_piece(path, start, stop, max_seconds)
    end = start + len(samples)
    memory = SharedMemory(name=memory_name)
    try:
        shared = np.ndarray((capacity,), dtype=np.float32, buffer=memory.buf)
        fits = max(0, min(end, capacity) - start)
        shared[start : start + fits] = samples[:fits]
        del shared
        return end, check, samples[fits:].copy()
    finally:
        memory.close()


def _splittable_seconds(path: str) -> float | None:
    """The duration of a file whose pieces can be lined up (see AudioProcesses), else None."""
    path = _checked_path(path)
    with _open(path, path) as container:
        stream = _first_audio_stream(container, path)
        if stream.codec_context is None:  # FFmpeg has no decoder for it: the one-pass decode says so
            return None
        codec, rate = stream.codec_context.name, stream.codec_context.sample_rate
        if not (codec.startswith("pcm_") or codec in _PIECEWISE_CODECS):
            return None
        if stream.time_base is None or not rate or stream.time_base > Fraction(1, rate):
            return None
        return _estimated_seconds(container, stream)


def _aligned(frame: av.AudioFrame, start_time: int, time_base: Fraction) -> tuple[av.AudioFrame, int]:
    """The first frame of a piece, cut to where the input and output sample grids meet, and that output position."""
    if frame.pts is None:
        raise _NotSplittable("frames without timestamps")
    rate = frame.sample_rate
    index = round((frame.pts - start_time) * time_base * rate)  # input sample of this frame
    grid = math.gcd(rate, SAMPLE_RATE)
    in_step, out_step = rate // grid, SAMPLE_RATE // grid
    cut = -index % in_step
    if index < 0 or cut >= frame.samples:
        raise _NotSplittable(f"cannot align a piece starting at input sample {index}")
    if cut:
        channels = len(frame.layout.channels)
        data = frame.to_ndarray()
        data = data[:, cut:] if frame.format.is_planar else data[:, cut * channels :]
        # The frame's own sample format and dtype, which the stubs do not tie together.
        aligned = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(data),  # type: ignore[arg-type]
            format=frame.format.name,
            layout=frame.layout,
        )
        aligned.sample_rate = rate
        frame = aligned
    return frame, (index + cut) // in_step * out_step


class _SampleBuffer:
    """Growable float32 buffer that holds decoded audio in a single allocation."""

    def __init__(self, capacity: int, label: str, max_seconds: float | None = None, *, start: int = 0) -> None:
        self._buf = np.empty(capacity, dtype=np.float32)
        self._size = 0
        self._checked = 0  # samples before this index are known to be audio
        self._label = label
        self._max_seconds = max_seconds
        # Samples this buffer may hold, counting from `start`, its first sample's position in the stream.
        self._room = None if max_seconds is None else math.floor(max_seconds * SAMPLE_RATE) - start

    @property
    def size(self) -> int:
        return self._size

    def extend(self, frames: list[av.AudioFrame]) -> None:
        for frame in frames:
            self.append(_samples(frame))

    def append(self, samples: np.ndarray) -> None:
        end = self._size + samples.size
        if self._room is not None and end > self._room:
            raise _too_long(self._label, self._max_seconds)
        if end > self._buf.size:
            # Reallocated in place where numpy can (before 2.5); refcheck off is safe: no view is kept while it grows.
            self._buf.resize(max(end, int(self._buf.size * _GROWTH)), refcheck=False)
        self._buf[self._size : end] = samples
        self._size = end
        if self._size - self._checked >= _CHECK_BLOCK:
            self._check_finite()

    def _check_finite(self) -> None:
        # Float codecs (pcm_f32, some decoders on damaged input) can yield NaN/inf or absurd levels, which would
        # poison every model downstream. Checked in blocks: per frame was a large part of decoding time.
        _check_level(self._buf[self._checked : self._size], f"Audio in {self._label}")
        self._checked = self._size

    def finish(self) -> np.ndarray:
        self._check_finite()
        samples = self._buf[: self._size]
        # Where the duration estimate held, the spare room is a second or so: a view keeps it rather than copy
        # the whole file (numpy 2.5 copies even to shrink in place). A buffer that grew is copied once, to size.
        if self._buf.size - self._size > self._size // 100 + _MARGIN_SAMPLES:
            return samples.copy()
        return samples


def _too_long(label: str, max_seconds: float | None) -> AudioTooLong:
    return AudioTooLong(f"{label} runs longer than {max_seconds:g} s, the most accepted here")


def _check_level(samples: np.ndarray, what: str) -> None:
    """Raise AudioError for NaN/inf samples or samples beyond MAX_PEAK (min and max: no mask as large as them)."""
    if not samples.size:
        return
    peak = max(float(samples.max()), -float(samples.min()))  # NaN if any sample is
    if not math.isfinite(peak):
        raise AudioError(f"{what} contains NaN or infinite samples")
    if peak > MAX_PEAK:
        raise AudioError(
            f"{what} has samples up to {peak:.3g}, far beyond full scale (±1): not audio, or the wrong sample format"
        )


def _from_array(data: np.ndarray | torch.Tensor, sampling_rate: int | None, max_seconds: float | None) -> np.ndarray:
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
    if max_seconds is not None and max(array.shape, default=0) / rate > max_seconds:  # samples are the longer axis
        raise _too_long("the audio array", max_seconds)
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
        or not math.isfinite(sampling_rate)
        or sampling_rate <= 0
        or sampling_rate != int(sampling_rate)
    ):
        raise AudioError(f"sampling_rate must be a positive whole number of Hz, got {sampling_rate!r}")
    if sampling_rate < MIN_SAMPLING_RATE:
        raise AudioError(
            f"sampling_rate is in Hz (16000 for 16 kHz), got {sampling_rate!r}: below {MIN_SAMPLING_RATE} Hz "
            "there is no speech to transcribe"
        )
    return int(sampling_rate)


def _to_float32(array: np.ndarray) -> np.ndarray:
    kind = array.dtype.kind
    if kind == "f":
        # Values beyond float32's range become inf here on purpose, so the check below rejects them too.
        with np.errstate(over="ignore"):
            samples = array.astype(np.float32, copy=False)
        _check_level(samples, "Audio array")
        return samples
    if kind in "iu" and array.dtype.itemsize > 4:
        # soundfile, torchaudio and librosa refuse 64-bit integer samples too. Such arrays come from Python ints
        # (np.array(a_list), .astype(int), torch.tensor(a_list)) and hold 16-bit values, mostly: on the 2**63 scale
        # of their type they were silence, an empty transcript with no error.
        raise AudioError(
            f"Unsupported audio array dtype {array.dtype}: 64-bit integer samples have no agreed full scale; convert "
            "them to the type they were recorded in (.astype(np.int16) or .to(torch.int16) for 16-bit values) "
            "or to floats in [-1, 1]"
        )
    if kind in "iu":
        full_scale = float(2 ** (array.dtype.itemsize * 8 - 1))
        samples = array.astype(np.float32)
        if kind == "u":
            # Unsigned PCM (e.g. 8-bit wav) is centred on half scale.
            samples -= full_scale
        samples /= full_scale
        if kind == "i" and array.dtype.itemsize == 4:
            _warn_of_16_bit_values(samples)
        return samples
    raise AudioError(f"Unsupported audio array dtype {array.dtype}: use integer or floating-point samples")


# Below this many steps of a 32-bit sample the signal is dither or noise in its lowest bits, not 16-bit values.
_LOUDEST_32_BIT_NOISE = 2**8


def _warn_of_16_bit_values(samples: np.ndarray) -> None:
    """int32 samples are on the 2**31 scale, where 16-bit values (int16 channels mixed in int32 so as not to overflow)
    are below -80 dBFS: silence, never transcribed. Only a warning: a quiet 32-bit recording looks the same."""
    if not samples.size:
        return
    peak = max(float(samples.max()), -float(samples.min()))
    if peak * 2**31 >= _LOUDEST_32_BIT_NOISE and peak < SILENCE_PEAK:
        logger.warning(
            "The int32 audio array peaks at %d of %d (%.0f dBFS): silence on that scale, so nothing in it will be "
            "transcribed. If it holds 16-bit samples, pass .astype(np.int16)",
            round(peak * 2**31),
            2**31,
            20 * math.log10(peak),
        )
