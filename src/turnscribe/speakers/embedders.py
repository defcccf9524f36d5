"""Speaker embedders: one vector per clip, so that clips of one voice sit close in cosine distance."""

from __future__ import annotations

import inspect
import itertools
import math
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from turnscribe.types import SAMPLE_RATE, TurnscribeError


class EmbedderError(TurnscribeError):
    """An embedder could not be loaded or run; the message says how to fix it."""


class Embedder(Protocol):
    name: str
    # Cosine-distance cut for agglomerative clustering, calibrated for this embedder's distance scale.
    default_threshold: float

    def embed(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        """Mono float32 clips at SAMPLE_RATE -> (n, d) float32 with L2-normalised rows ((0, 0) when n = 0).

        Callers hand over many clips at once (up to about a thousand): an implementation should batch them into
        few forward passes, each bounded in size, rather than run them one by one.
        """
        ...


def _tile_to(clip: np.ndarray, length: int) -> np.ndarray:
    """Repeat a shorter clip up to `length` samples, so that padding does not enter time pooling as silence."""
    clip = np.asarray(clip, dtype=np.float32).reshape(-1)
    if len(clip) >= length:
        return clip
    if len(clip) == 0:
        return np.zeros(length, dtype=np.float32)
    return np.tile(clip, -(-length // len(clip)))[:length]


def _normalised_rows(rows: Sequence[np.ndarray]) -> np.ndarray:
    if not rows:
        return np.zeros((0, 0), dtype=np.float32)
    matrix = np.stack([np.asarray(r, dtype=np.float32).reshape(-1) for r in rows])
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    # A zero row would make every cosine distance to it NaN and break the clustering downstream.
    if not np.all(np.isfinite(norms)) or np.any(norms == 0):
        raise EmbedderError("the embedder returned a zero or non-finite vector for a clip")
    return matrix / norms


def resolve_device(device: str) -> str:
    """ "auto" is the first CUDA device when torch sees one, else the CPU; anything else is kept as given."""
    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def length_buckets(lengths: Sequence[int], *, stretch: float, max_samples: int) -> list[list[int]]:
    """Group clip indices for batched forward passes: clips of similar length, bounded in total size.

    Clips are taken shortest first; a group takes the next clip while that clip is at most `stretch` times as
    long as the group's shortest (each clip is then tiled up to the group's longest, so none grows by more than
    that factor) and while the group, every clip at that longest length, stays within `max_samples`. A clip
    longer than `max_samples` forms a group of its own.
    """
    groups: list[list[int]] = []
    shortest = 0
    for i in sorted(range(len(lengths)), key=lambda i: (lengths[i], i)):
        length = lengths[i]
        group = groups[-1] if groups else []
        if group and length <= stretch * shortest and (len(group) + 1) * length <= max_samples:
            group.append(i)
        else:
            groups.append([i])
            shortest = length
    return groups


CPU_BATCH_PARTIALS = 256
GPU_BATCH_PARTIALS = 2048  # 52 MB of input, ~1 GB of LSTM activations


class ResemblyzerEmbedder:
    """GE2E d-vectors from resemblyzer: weaker than ReDimNet2, but its weights ship in the wheel (no hub)."""

    name = "resemblyzer"
    # GE2E distances are compressed: its embeddings are non-negative, so cosine distance rarely passes ~0.5.
    # Measured on espeak-ng (3-5 sentences of 2-4 s per voice): same voice mean 0.08-0.12, max 0.17; 0.3-1.5 s
    # excerpts of one voice mean 0.17-0.20, p95 0.24-0.31. Voices that differ audibly (gender, variant, pitch)
    # 0.18-0.43 apart on average; espeak's default male voices across languages only 0.08-0.15, being one
    # synthesiser. Real people sit further apart (about 0.3-0.6) and one person's clips vary more (0.1-0.3)
    # than synthetic ones, so the cut sits at the real-speech boundary, not at espeak's narrower gap.
    default_threshold = 0.3

    # embed_utterance's defaults: 1.3 partials per second, a last partial kept when 75 % covered.
    RATE, MIN_COVERAGE = 1.3, 0.75
    PARTIAL_FRAMES = 160  # hparams.partials_n_frames: 1.6 s of 10 ms mel frames
    SILENT_PEAK = 1e-6

    def __init__(
        self,
        device: str = "auto",
        *,
        # Partial utterances per forward pass: each is 160 mel frames (1.6 s), so 256 are 6.5 MB of input.
        # 0: CPU_BATCH_PARTIALS on the CPU, GPU_BATCH_PARTIALS on a GPU (an hour of speech is ~4,700 partials,
        # and each forward pass runs the LSTM's 160 steps one after another).
        batch_partials: int = 0,
    ) -> None:
        try:
            with warnings.catch_warnings():
                # webrtcvad's pkg_resources deprecation notice is noise for our users, not theirs to fix.
                warnings.simplefilter("ignore", UserWarning)
                from librosa.filters import mel as mel_filters
                from resemblyzer import VoiceEncoder, hparams
                from resemblyzer.audio import normalize_volume
        except ImportError as exc:
            raise EmbedderError(
                f"the resemblyzer embedder needs resemblyzer ({exc}); install it with "
                "pip install resemblyzer 'setuptools<81' (webrtcvad still imports pkg_resources)"
            ) from exc
        if batch_partials < 0:
            raise EmbedderError(f"batch_partials must be at least 1 (or 0: by device), got {batch_partials}")
        self.device = resolve_device(device)
        try:
            self._encoder = VoiceEncoder(device=self.device, verbose=False)
        except (RuntimeError, AssertionError) as exc:
            raise EmbedderError(
                f"could not load resemblyzer on device {device!r}: {exc}; try the CPU (device='cpu', --device cpu)"
            ) from exc
        self.batch_partials = batch_partials or (CPU_BATCH_PARTIALS if self.device == "cpu" else GPU_BATCH_PARTIALS)
        self._normalize_volume = normalize_volume
        self._target_dbfs = hparams.audio_norm_target_dBFS
        # resemblyzer's wav_to_mel_spectrogram (librosa on the CPU) as torch on the encoder's device, so that on a
        # GPU the front end does not leave the CPU as the bottleneck; tests hold the two equal. librosa still
        # builds the filterbank, once here (its first import costs ~1.5 s, paid at load rather than per file).
        self._n_fft = hparams.sampling_rate * hparams.mel_window_length // 1000
        self._hop = hparams.sampling_rate * hparams.mel_window_step // 1000
        basis = mel_filters(sr=hparams.sampling_rate, n_fft=self._n_fft, n_mels=hparams.mel_n_channels)
        self._mel_basis = torch.from_numpy(basis).to(self.device)
        self._window = torch.hann_window(self._n_fft, periodic=True, device=self.device)  # librosa's "hann"
        self.spectrogram_per_clip = self.device == "cpu"  # see partials
        self._one_pass_at_a_time = threading.Lock()  # see embed

    def _prepare(self, clip: np.ndarray) -> np.ndarray:
        clip = np.asarray(clip, dtype=np.float32).reshape(-1)
        # Not preprocess_wav: its VAD trim can empty a short clip. Only its volume step matters here, because
        # GE2E reads a linear (not log) mel spectrogram; a silent clip has no level to raise. "Silent" includes
        # denormal dust (below -120 dBFS), whose float32 power rounds to zero and would be raised to infinity.
        if np.max(np.abs(clip), initial=0.0) >= self.SILENT_PEAK:
            clip = self._normalize_volume(clip, self._target_dbfs, increase_only=True)
        # Short clips are left to resemblyzer's own zero padding (to one 1.6 s partial), even empty ones: on
        # espeak voices tiling them instead inflated same-voice distances (0.36 vs 0.19 mean at 0.6 s) and
        # separated voices worse.
        return clip.astype(np.float32)

    def _cut(self, clip: np.ndarray) -> tuple[np.ndarray, list[int]]:
        """The clip as the front end takes it (volume raised, zero-padded to its last partial's end), and the
        first mel frame of each of its partials: exactly as VoiceEncoder.embed_utterance cuts it."""
        wav = self._prepare(clip)
        wav_slices, mel_slices = self._encoder.compute_partial_slices(len(wav), self.RATE, self.MIN_COVERAGE)
        wav = np.pad(wav, (0, max(wav_slices[-1].stop - len(wav), 0)))
        return wav, [s.start for s in mel_slices]

    def spectrogram(self, wavs: Sequence[np.ndarray]) -> tuple[torch.Tensor, list[int]]:
        """(frames, 40) linear mel power of all `wavs` on the embedder's device, and the row where each wav's
        own spectrogram (resemblyzer's wav_to_mel_spectrogram of it) begins.

        One STFT for all of them, not one per clip (on a GPU each would be a dozen small kernel launches): each
        wav sits in its own stretch of one signal, behind n_fft/2 zeros and followed by at least as many, the
        stretch a whole number of hops long. Frames of an uncentred STFT then start at every wav's first sample
        less n_fft/2, as librosa's centred, zero-padded frames of that wav alone do, and see the same samples.
        """
        half, hop = self._n_fft // 2, self._hop
        stretches = [-(-(len(w) + 2 * half) // hop) * hop for w in wavs]
        starts = np.cumsum([0, *stretches[:-1]])
        signal = np.zeros(sum(stretches), dtype=np.float32)
        for wav, start in zip(wavs, starts, strict=True):
            signal[start + half : start + half + len(wav)] = wav
        spectrum = torch.stft(
            torch.from_numpy(signal).to(self.device),
            n_fft=self._n_fft,
            hop_length=hop,
            window=self._window,
            center=False,
            return_complex=True,
        ).T  # (frames, bins): the layout torch.stft computes in, so the power below reads memory in order
        return spectrum.abs().square() @ self._mel_basis.T, [int(start) // hop for start in starts]

    def partials(self, cuts: Sequence[tuple[np.ndarray, list[int]]]) -> torch.Tensor:
        """The (p, 160, 40) mel partials of cut clips (see _cut), clip after clip.

        On a GPU from one spectrogram of them all; on the CPU clip by clip, where a clip's arrays stay in the
        caches (one spectrogram of an hour's clips took 1.5x as long there)."""
        groups = [[cut] for cut in cuts] if self.spectrogram_per_clip else [cuts]
        offsets = torch.arange(self.PARTIAL_FRAMES, device=self.device)
        gathered = []
        for group in groups:
            mel, rows = self.spectrogram([wav for wav, _ in group])
            firsts = [row + first for row, (_, starts) in zip(rows, group, strict=True) for first in starts]
            gathered.append(mel[torch.tensor(firsts, device=self.device)[:, None] + offsets])
        return torch.cat(gathered)

    def embed(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        """Every partial of every clip has the same shape, so partials of many clips share one forward pass.

        The result equals embed_utterance clip by clip (the mean of a clip's partial embeddings) up to float
        rounding; only batch_partials partials (plus the rest of one clip) are held at a time. Callers in many
        threads (the files in flight) take turns for the device: on a GPU their passes would run one after another
        anyway, each in its own memory, so a pass at a time bounds the memory without costing time.
        """
        means: list[np.ndarray] = []
        pending: list[tuple[np.ndarray, list[int]]] = []  # clips cut, not yet forwarded

        def forward() -> None:
            with self._one_pass_at_a_time:
                embedded = self._encoder(self.partials(pending)).float().cpu().numpy()
            bounds = np.cumsum([0] + [len(starts) for _, starts in pending])
            means.extend(embedded[a:b].mean(axis=0) for a, b in itertools.pairwise(bounds))
            pending.clear()

        with torch.inference_mode():
            waiting = 0
            for clip in clips:
                pending.append(self._cut(clip))
                waiting += len(pending[-1][1])
                if waiting >= self.batch_partials:
                    forward()
                    waiting = 0
            if pending:
                forward()
        return _normalised_rows(means)


class ReDimNet2Embedder:
    """ReDimNet2 through torch.hub: the model card's production embedder (needs torchaudio for its front end)."""

    name = "redimnet2"
    default_threshold = 0.45  # the model card's τ
    # Tiny clips are tiled up to this: ReDimNet's time-strided stages and statistics pooling need some frames.
    min_samples = SAMPLE_RATE // 2

    def __init__(
        self,
        device: str = "auto",
        *,
        # Audio per forward pass, all clips of a batch counted at its longest clip's length.
        batch_seconds: float = 120.0,
        # Clips batched together differ in length by at most this factor (see length_buckets).
        max_stretch: float = 1.1,
        hub_dir: str | None = None,
        repo: str = "PalabraAI/redimnet2",
        entry_point: str = "redimnet2",
        model_name: str = "b6",
        train_type: str = "lm",
        # The VoxBlink2 + VoxCeleb2 B6 is the card's "0.17 % EER" model.
        dataset: str = "vb2+vox2_v0",
    ) -> None:
        # Negated, so that NaN (false in every comparison) fails too; an infinite batch_seconds has no size.
        if not (1 <= batch_seconds * SAMPLE_RATE < math.inf and max_stretch >= 1):
            raise EmbedderError(
                f"need finite batch_seconds > 0 and max_stretch >= 1, got {batch_seconds}, {max_stretch}"
            )
        self.batch_samples = round(batch_seconds * SAMPLE_RATE)
        self._one_pass_at_a_time = threading.Lock()  # see ResemblyzerEmbedder.embed
        self.max_stretch = max_stretch
        self.device = device = resolve_device(device)
        if hub_dir is not None:
            folder = Path(hub_dir).expanduser()
            if not (folder / "hubconf.py").is_file():
                raise EmbedderError(
                    f"hub_dir {str(folder)!r} has no hubconf.py: give the folder of a checkout of {repo} "
                    "(--embedder-option hub_dir=/path/to/it; embedder_options={'hub_dir': '/path/to/it'} in Python)"
                )
            repo_or_dir, source = str(folder), "local"
        else:
            repo_or_dir, source = repo, "github"
        try:
            # trust_repo=True: the user named this repo, and the default "check" would block on an input() prompt.
            model = torch.hub.load(
                repo_or_dir,
                entry_point,
                source=source,
                trust_repo=True,
                verbose=False,
                model_name=model_name,
                train_type=train_type,
                dataset=dataset,
            )
            self._model = model.to(device).eval()
        except Exception as exc:  # torch.hub surfaces network, dependency and hubconf failures as many types
            raise EmbedderError(
                f"could not load ReDimNet2 ({entry_point!r} from {repo_or_dir}, {source}) on {device!r}: {exc}. "
                "Its front end needs torchaudio: pip install 'turnscribe[redimnet]'. Offline, give the folder of a "
                "redimnet2 checkout (--embedder-option hub_dir=/path/to/it; embedder_options={'hub_dir': "
                "'/path/to/it'} in Python; its weights must already be in the torch hub cache, see TORCH_HOME), or "
                "use the resemblyzer embedder."
            ) from exc

    def embed(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        """Clips of similar length share a forward pass, each tiled up to the longest of its batch.

        Tiled, not zero-padded: the model's time pooling averages over every frame, and repeated speech keeps
        its statistics where silence would dilute them. A clip grows by at most max_stretch, which moves its
        embedding only slightly from a clip-by-clip pass (tests bound the difference).
        """
        lengths = [max(len(np.asarray(c).reshape(-1)), self.min_samples) for c in clips]
        rows: list[np.ndarray] = [np.zeros(0, np.float32)] * len(clips)
        with torch.inference_mode():
            for group in length_buckets(lengths, stretch=self.max_stretch, max_samples=self.batch_samples):
                longest = max(lengths[i] for i in group)
                batch = np.stack([_tile_to(clips[i], longest) for i in group])
                with self._one_pass_at_a_time:
                    embedded = self._model(torch.from_numpy(batch).to(self.device)).float().cpu().numpy()
                for i, row in zip(group, embedded, strict=True):
                    rows[i] = row
        return _normalised_rows(rows)


_REGISTRY: dict[str, Callable[..., Embedder]] = {
    ResemblyzerEmbedder.name: ResemblyzerEmbedder,
    ReDimNet2Embedder.name: ReDimNet2Embedder,
}


def embedder_names() -> list[str]:
    return sorted(_REGISTRY)


def load_embedder(name: str, device: str = "auto", **options: Any) -> Embedder:
    """Build the embedder registered as `name`; `options` are its keyword settings (e.g. hub_dir for redimnet2).

    `device`: "auto" (CUDA when torch sees a GPU, else CPU), "cpu", "cuda" or "cuda:N". Options given as
    strings (the command line's KEY=VALUE) are converted to the type of the option's default.
    """
    factory = _REGISTRY.get(name)
    if factory is None:
        raise EmbedderError(f"unknown embedder {name!r}; choose one of: {', '.join(embedder_names())}")
    parameters = inspect.signature(factory).parameters
    accepted = [p for p in parameters if p != "device"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise EmbedderError(
            f"embedder {name!r} has no option(s) {', '.join(unknown)}; it accepts: {', '.join(accepted) or 'none'}"
        )
    for key, value in options.items():
        default = parameters[key].default
        if isinstance(value, str) and isinstance(default, int | float) and not isinstance(default, bool):
            try:
                options[key] = type(default)(value)
            except ValueError as exc:
                raise EmbedderError(f"embedder option {key}={value!r} must be a {type(default).__name__}") from exc
    return factory(device=device, **options)
