"""turnscribe: who spoke when, and what they said, for recordings of any length.

>>> import turnscribe
>>> transcript = turnscribe.transcribe("meeting.mp3", language="en")
>>> for seg in transcript.segments:
...     print(f"[{seg.start:.1f}-{seg.end:.1f}] {seg.speaker}: {seg.text}")
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterable, Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from .audio import AudioError, AudioInput, load_audio
from .decoders.base import Decoder, DecoderError, WindowAudio
from .pipeline import Pipeline, ProgressCallback, ProgressEvent
from .prompt import LANGUAGES, LanguageError
from .scheduler import FileResult, run_many
from .types import Repair, Segment, Transcript, TranscriptMetadata, TurnscribeError
from .windows import DEFAULT_OVERLAP_S, DEFAULT_WINDOW_S

if TYPE_CHECKING:
    import torch

try:
    __version__ = version("turnscribe")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0"

DEFAULT_MODEL = "syvai/cohere-transcribe-diarize"
DEFAULT_EMBEDDER = "resemblyzer"
LINKERS = ("slots", "baseline")


def build_pipeline(
    *,
    model: str | os.PathLike[str] = DEFAULT_MODEL,
    decoder: Decoder | None = None,
    embedder: str = DEFAULT_EMBEDDER,
    embedder_options: dict[str, str] | None = None,
    threshold: float | None = None,
    num_speakers: int | None = None,
    min_speakers: int | None = None,
    max_speakers: int | None = None,
    linker: str = "slots",
    known_speakers: Mapping[str, AudioInput | tuple[AudioInput, int]] | None = None,
    device: str | torch.device = "auto",
    batch_size: int | None = None,
    window_s: float = DEFAULT_WINDOW_S,
    overlap_s: float = DEFAULT_OVERLAP_S,
    trust_remote_code: bool = False,
    backend: str = "transformers",
    fast: bool = False,
    dtype: str = "auto",
) -> Pipeline:
    """Load the parts once; reuse the pipeline for many files.

    `device`: "auto", "cpu", "cuda", "cuda:N", or several ("cuda:0,cuda:1", "cuda:all"): a copy of the model on
    each, every batch split across them (`decoders.replicas`); the speaker embedder runs on the first. A
    `torch.device` (what pyannote's `.to()` takes) is taken by its name.
    `batch_size=None` (default): as many windows per batch as fit in free GPU memory (4 on the CPU; the vLLM backend
    batches by itself). `fast`: the transformers backend's speed-ups (`SpeedOptions.fast`: SDPA; on CUDA also
    a static KV cache and a compiled decoding step), which keep the token ids of the plain path. `dtype`: the
    model's precision, "auto" (bfloat16 on GPUs from Ampere on, float16 on older ones, float32 on the CPU),
    "bfloat16", "float16" or "float32" (`decoders.transformers.pick_dtype`).

    `linker`: "slots" (default: links the model's per-window speakers under constraints, threshold calibrated
    per recording) or "baseline" (the model card's recipe: every segment clustered at a fixed threshold).
    `known_speakers`: name → reference recording (a path, bytes or file object, or `(samples, sampling_rate)` for an
    array or tensor); matching speakers are labelled with the name (slots only).
    `backend`: the decoder backend when no `decoder` is given (`turnscribe.decoders.backends.BACKENDS`).
    """
    from .decoders.backends import DecoderOptions, check_backend, load_decoder
    from .decoders.base import check_dtype
    from .decoders.replicas import device_list
    from .decoders.transformers import pick_device
    from .speakers import ClusteringLinker, SlotLinker, load_embedder
    from .speakers.clustering import check_counts, check_threshold
    from .speakers.names import check_speaker_names

    if linker not in LINKERS:
        raise ValueError(f"Unknown linker {linker!r}; choose from {', '.join(LINKERS)}")
    if known_speakers and linker != "slots":
        raise ValueError("known speakers need the 'slots' linker")
    check_backend(backend)
    check_dtype(dtype)
    check_counts(num_speakers, min_speakers, max_speakers)  # the linkers check them too, after the embedder loads
    check_threshold(threshold)
    # Names and reference recordings are checked before anything loads, so a typo fails in a second, not a minute.
    if known_speakers is not None and not isinstance(known_speakers, Mapping):
        # A list (of names, or of paths, as OpenAI's API takes them) was an AttributeError: '.values()'.
        kind = type(known_speakers).__name__
        raise ValueError(f"known_speakers must map names to references ({{'Alice': 'alice.wav'}}), got a {kind}")
    names = check_speaker_names(known_speakers or {})
    references = {name: _reference(name, audio) for name, audio in zip(names, (known_speakers or {}).values())}
    device = _device_name(device)
    device_name = pick_device(device_list(device)[0])  # the embedder's; the model may have more
    loaded = load_embedder(embedder, device=device_name, **(embedder_options or {}))
    counts: dict[str, Any] = dict(
        threshold=threshold, num_speakers=num_speakers, min_speakers=min_speakers, max_speakers=max_speakers
    )
    speakers: ClusteringLinker | SlotLinker
    if linker == "slots":
        speakers = SlotLinker(loaded, known_speakers=references, **counts)
    else:
        speakers = ClusteringLinker(loaded, **counts)
    if decoder is None:
        decoder = load_decoder(backend, DecoderOptions(model, device, batch_size, trust_remote_code, fast, dtype))
    return Pipeline(decoder, speakers, window_s=window_s, overlap_s=overlap_s)


def _device_name(device: object) -> str:
    """`device` as a name; a torch.device or anything else that is no text was an AttributeError on `.strip()`."""
    import torch

    if isinstance(device, torch.device):
        return str(device)
    if not isinstance(device, str):
        raise ValueError(f"device must be a name such as 'auto', 'cpu' or 'cuda:0', got {device!r}")
    return device


def _reference(name: str, audio: AudioInput | tuple[AudioInput, int]) -> Any:
    """A known speaker's reference samples; samples in memory come with their rate, as `(samples, rate)`."""
    if isinstance(audio, tuple) and len(audio) != 2:
        raise AudioError(f"known speaker {name!r}: give a reference, or (samples, sampling_rate) for samples in memory")
    samples, rate = audio if isinstance(audio, tuple) else (audio, None)
    if rate is not None and (isinstance(samples, (str, os.PathLike, bytes, bytearray)) or hasattr(samples, "read")):
        # load_audio's own answer ("pass sampling_rate=None") names an argument this caller never gave.
        raise AudioError(f"known speaker {name!r}: a file is decoded at its own rate; give it alone, not (file, rate)")
    try:
        return load_audio(samples, rate)
    except AudioError as e:
        how = " (pass them as (samples, sampling_rate))" if rate is None and hasattr(samples, "shape") else ""
        raise AudioError(f"known speaker {name!r}: {e}{how}") from e


def transcribe(
    audio: AudioInput,
    *,
    language: str = "en",
    sampling_rate: int | None = None,
    progress: ProgressCallback | None = None,
    audio_processes: int | None = None,
    **options: object,
) -> Transcript:
    """Transcribe one recording (path, bytes, numpy array or torch tensor) with speaker labels.

    `options` are those of `build_pipeline` (model, decoder, embedder, threshold, num_speakers, …).
    Arrays and tensors need `sampling_rate`. A file given by its path is decoded in `audio_processes` worker
    processes (default: `audio.audio_process_count`; 0: in this thread), a long one in pieces across them.
    """
    import os

    from .audio import AudioProcesses, audio_process_count
    from .prompt import check_language

    check_language(language)  # fail before loading a 2 B-parameter model
    pipeline = build_pipeline(**options)  # type: ignore[arg-type]
    processes = audio_process_count(audio_processes)
    if processes < 2 or not isinstance(audio, (str, os.PathLike)):  # one process would only add a copy
        return pipeline.run(audio, language=language, sampling_rate=sampling_rate, progress=progress)
    with AudioProcesses(processes) as decoding:
        pipeline.load = decoding.load
        return pipeline.run(audio, language=language, sampling_rate=sampling_rate, progress=progress)


def transcribe_many(
    inputs: Iterable[AudioInput],
    *,
    language: str = "en",
    sampling_rate: int | None = None,
    files_at_once: int | None = None,
    audio_processes: int | None = None,
    progress: ProgressCallback | None = None,
    **options: object,
) -> Generator[FileResult, None, None]:
    """Transcribe many recordings with one model, yielding a `FileResult` per input as each finishes.

    The windows of all files in flight (`files_at_once`, default: enough to fill the model's batches, see
    `scheduler.files_at_once_for`) share the model's batches (`turnscribe.scheduler`); files are decoded
    in `audio_processes` worker processes, ahead of the files in flight (default: `audio.audio_process_count`; 0: in the
    files' threads). A file that fails yields its error and the others go on. Arrays and tensors need
    `sampling_rate`, one rate for every input (a file given with it is refused). `options` are those of
    `build_pipeline`.
    """
    from .prompt import check_language
    from .scheduler import check_inputs

    check_language(language)
    check_inputs(inputs)
    pipeline = build_pipeline(**options)  # type: ignore[arg-type]
    return run_many(
        pipeline,
        inputs,
        language=language,
        sampling_rate=sampling_rate,
        files_at_once=files_at_once,
        audio_processes=audio_processes,
        progress=progress,
    )


__all__ = [
    "DEFAULT_MODEL",
    "LANGUAGES",
    "AudioError",
    "AudioInput",
    "Decoder",
    "DecoderError",
    "FileResult",
    "LanguageError",
    "Pipeline",
    "ProgressEvent",
    "Repair",
    "Segment",
    "Transcript",
    "TranscriptMetadata",
    "TurnscribeError",
    "WindowAudio",
    "__version__",
    "build_pipeline",
    "load_audio",
    "transcribe",
    "transcribe_many",
]
