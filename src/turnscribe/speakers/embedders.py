"""Speaker embedders: one vector per clip, so that clips of one voice sit close in cosine distance."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from turnscribe.types import SAMPLE_RATE, TurnscribeError


class EmbedderError(TurnscribeError):
    """An embedder could not be loaded or run; the message says how to fix it."""


class Embedder(Protocol):
    name: str
    # Cosine-distance cut for agglomerative clustering, calibrated for this embedder's distance scale.
    default_threshold: float

    def embed(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        """Mono float32 clips at SAMPLE_RATE -> (n, d) float32 with L2-normalised rows ((0, 0) when n = 0)."""
        ...


def _tile_to(clip: np.ndarray, min_samples: int) -> np.ndarray:
    """Repeat a short clip up to `min_samples`, so that padding does not enter time pooling as silent frames."""
    clip = np.asarray(clip, dtype=np.float32).reshape(-1)
    if len(clip) >= min_samples:
        return clip
    if len(clip) == 0:
        return np.zeros(min_samples, dtype=np.float32)
    return np.tile(clip, -(-min_samples // len(clip)))[:min_samples]


def _normalised_rows(rows: Sequence[np.ndarray]) -> np.ndarray:
    if not rows:
        return np.zeros((0, 0), dtype=np.float32)
    matrix = np.stack([np.asarray(r, dtype=np.float32).reshape(-1) for r in rows])
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    # A zero row would make every cosine distance to it NaN and break the clustering downstream.
    if not np.all(np.isfinite(norms)) or np.any(norms == 0):
        raise EmbedderError("the embedder returned a zero or non-finite vector for a clip")
    return matrix / norms


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

    def __init__(self, device: str = "cpu") -> None:
        try:
            with warnings.catch_warnings():
                # webrtcvad's pkg_resources deprecation notice is noise for our users, not theirs to fix.
                warnings.simplefilter("ignore", UserWarning)
                from resemblyzer import VoiceEncoder
                from resemblyzer.audio import normalize_volume
                from resemblyzer.hparams import audio_norm_target_dBFS
        except ImportError as exc:
            raise EmbedderError(
                f"the resemblyzer embedder needs resemblyzer ({exc}); install it with "
                "pip install resemblyzer 'setuptools<81' (webrtcvad still imports pkg_resources)"
            ) from exc
        try:
            self._encoder = VoiceEncoder(device=device, verbose=False)
        except (RuntimeError, AssertionError) as exc:
            raise EmbedderError(f"could not load resemblyzer on device {device!r}: {exc}; try --device cpu") from exc
        self._normalize_volume = normalize_volume
        self._target_dbfs = audio_norm_target_dBFS

    def _prepare(self, clip: np.ndarray) -> np.ndarray:
        clip = np.asarray(clip, dtype=np.float32).reshape(-1)
        # Not preprocess_wav: its VAD trim can empty a short clip. Only its volume step matters here, because
        # GE2E reads a linear (not log) mel spectrogram; a silent clip has no level to raise.
        if np.any(clip):
            clip = self._normalize_volume(clip, self._target_dbfs, increase_only=True)
        # Short clips are left to resemblyzer's own zero padding (to one 1.6 s partial), even empty ones: on
        # espeak voices tiling them instead inflated same-voice distances (0.36 vs 0.19 mean at 0.6 s) and
        # separated voices worse.
        return clip.astype(np.float32)

    def embed(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        return _normalised_rows([self._encoder.embed_utterance(self._prepare(c)) for c in clips])


class ReDimNet2Embedder:
    """ReDimNet2 through torch.hub: the model card's production embedder (needs torchaudio for its front end)."""

    name = "redimnet2"
    default_threshold = 0.45  # the model card's τ
    # Tiny clips are tiled up to this: ReDimNet's time-strided stages and statistics pooling need some frames.
    min_samples = SAMPLE_RATE // 2

    def __init__(
        self,
        device: str = "cpu",
        *,
        hub_dir: str | None = None,
        repo: str = "PalabraAI/redimnet2",
        entry_point: str = "redimnet2",
        model_name: str = "b6",
        train_type: str = "lm",
        # The VoxBlink2 + VoxCeleb2 B6 is the card's "0.17 % EER" model.
        dataset: str = "vb2+vox2_v0",
    ) -> None:
        import torch

        if hub_dir is not None:
            folder = Path(hub_dir).expanduser()
            if not (folder / "hubconf.py").is_file():
                raise EmbedderError(
                    f"hub_dir {str(folder)!r} has no hubconf.py: pass --embedder-option hub_dir=/path/to/a "
                    f"checkout of {repo}"
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
                "Its front end needs torchaudio: pip install 'turnscribe[redimnet]'. Offline, pass "
                "--embedder-option hub_dir=/path/to/redimnet2 checkout (its weights must already be in the "
                "torch hub cache, see TORCH_HOME), or use --embedder resemblyzer."
            ) from exc
        self._device = device

    def embed(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        import torch

        rows = []
        # Clip by clip: padding clips to a common length would change what the time pooling averages over.
        with torch.inference_mode():
            for clip in clips:
                wav = torch.from_numpy(_tile_to(clip, self.min_samples)).to(self._device)
                rows.append(self._model(wav.unsqueeze(0)).float().cpu().numpy())
        return _normalised_rows(rows)


_REGISTRY: dict[str, Callable[..., Embedder]] = {
    ResemblyzerEmbedder.name: ResemblyzerEmbedder,
    ReDimNet2Embedder.name: ReDimNet2Embedder,
}


def embedder_names() -> list[str]:
    return sorted(_REGISTRY)


def load_embedder(name: str, device: str = "cpu", **options: Any) -> Embedder:
    """Build the embedder registered as `name`; `options` are its keyword settings (e.g. hub_dir for redimnet2)."""
    factory = _REGISTRY.get(name)
    if factory is None:
        raise EmbedderError(f"unknown embedder {name!r}; choose one of: {', '.join(embedder_names())}")
    accepted = [p for p in inspect.signature(factory).parameters if p != "device"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise EmbedderError(
            f"embedder {name!r} has no option(s) {', '.join(unknown)}; it accepts: {', '.join(accepted) or 'none'}"
        )
    return factory(device=device, **options)
