"""The speaker stage: clustering, relabelling, embedder loading, and linking on synthetic voices."""

from __future__ import annotations

import itertools
import textwrap
from pathlib import Path

import numpy as np
import pytest

from turnscribe.evaluation.synthetic import VOICES as SYNTHETIC_VOICES
from turnscribe.evaluation.synthetic import have_espeak, synthesise
from turnscribe.speakers import (
    ClusteringLinker,
    EmbedderError,
    SpeakerAssignment,
    cluster_embeddings,
    embedder_names,
    load_embedder,
    relabel_by_first_appearance,
)
from turnscribe.types import SAMPLE_RATE, StitchedSegment

# --- clustering -------------------------------------------------------------------------------------------------


def blobs(sizes: list[int], dim: int = 32, noise: float = 0.05, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Noisy copies of random unit vectors: in 32 dimensions the centres are ~1.0 apart in cosine distance."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(sizes), dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    truth = np.repeat(np.arange(len(sizes)), sizes)
    points = centres[truth] + rng.normal(scale=noise, size=(len(truth), dim))
    order = rng.permutation(len(truth))
    return points[order], truth[order]


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    pairs = {(int(x), int(y)) for x, y in zip(a, b, strict=True)}
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def test_threshold_finds_the_clusters() -> None:
    points, truth = blobs([5, 8, 3, 6])
    labels = cluster_embeddings(points, threshold=0.45)
    assert same_partition(labels, truth)
    assert sorted(set(labels.tolist())) == [0, 1, 2, 3]


def test_num_speakers_forces_the_count() -> None:
    points, _ = blobs([5, 8, 3, 6])
    assert len(set(cluster_embeddings(points, threshold=0.45, num_speakers=2).tolist())) == 2
    assert len(set(cluster_embeddings(points, threshold=0.45, num_speakers=6).tolist())) == 6
    # More speakers than points: one cluster each.
    assert sorted(cluster_embeddings(points[:3], threshold=0.45, num_speakers=5).tolist()) == [0, 1, 2]


def test_min_and_max_clamp_the_threshold_cut() -> None:
    points, truth = blobs([5, 8, 3, 6])
    # A cut above every merge gives one cluster; min_speakers lifts it back.
    assert len(set(cluster_embeddings(points, threshold=1.9, min_speakers=3).tolist())) == 3
    # A cut below every merge gives singletons; max_speakers caps them.
    assert len(set(cluster_embeddings(points, threshold=1e-6, max_speakers=2).tolist())) == 2
    # Bounds the threshold cut already satisfies change nothing.
    assert same_partition(cluster_embeddings(points, threshold=0.45, min_speakers=2, max_speakers=5), truth)


def test_zero_and_one_embedding() -> None:
    assert cluster_embeddings(np.zeros((0, 8)), threshold=0.3).shape == (0,)
    assert cluster_embeddings(np.ones((1, 8)), threshold=0.3, num_speakers=3).tolist() == [0]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_speakers": 0},
        {"min_speakers": 0},
        {"max_speakers": -1},
        {"min_speakers": 3, "max_speakers": 2},
        {"num_speakers": 2, "min_speakers": 3},
        {"num_speakers": 4, "max_speakers": 3},
        {"threshold": -0.1},
        {"threshold": float("nan")},
    ],
)
def test_bad_arguments(kwargs: dict) -> None:
    points, _ = blobs([3, 3])
    with pytest.raises(ValueError):
        cluster_embeddings(points, **{"threshold": 0.3, **kwargs})


def test_embeddings_must_be_a_matrix() -> None:
    with pytest.raises(ValueError, match="2-D"):
        cluster_embeddings(np.ones(8), threshold=0.3)


def test_relabel_by_first_appearance() -> None:
    starts = [5.0, 0.0, 2.0, 9.0, 1.0]
    labels = [2, 7, 2, 0, 7]
    assert relabel_by_first_appearance(starts, labels) == [
        "SPEAKER_01",
        "SPEAKER_00",
        "SPEAKER_01",
        "SPEAKER_02",
        "SPEAKER_00",
    ]
    assert relabel_by_first_appearance([], []) == []


# --- embedder loading -------------------------------------------------------------------------------------------

HUBCONF = '''
import torch

dependencies = {dependencies!r}


class TinySpeakerNet(torch.nn.Module):
    """A fixed random projection of the log spectrum, averaged over time: deterministic, and voice-dependent."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        generator = torch.Generator().manual_seed(0)
        self.projection = torch.nn.Parameter(torch.randn(201, 16, generator=generator), requires_grad=False)
        # The bias keeps silence off the zero vector, as a trained model's would.
        self.bias = torch.nn.Parameter(torch.randn(16, generator=generator), requires_grad=False)

    def forward(self, wav):
        assert wav.ndim == 2, "expects (batch, samples)"
        spec = torch.stft(wav, n_fft=400, hop_length=160, window=torch.hann_window(400), return_complex=True)
        return (torch.log1p(spec.abs()).transpose(1, 2) @ self.projection).mean(dim=1) * 3.0 + self.bias


def redimnet2(model_name="b0", train_type="lm", dataset="vox2", pretrained=True):
    return TinySpeakerNet(dict(model_name=model_name, train_type=train_type, dataset=dataset))
'''


def write_hub(folder: Path, dependencies: tuple[str, ...] = ("torch",)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "hubconf.py").write_text(textwrap.dedent(HUBCONF.format(dependencies=list(dependencies))))
    return folder


def tone(freq: float, seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_redimnet2_loads_from_a_local_hub_folder(tmp_path: Path) -> None:
    embedder = load_embedder("redimnet2", device="cpu", hub_dir=str(write_hub(tmp_path / "hub")))
    assert embedder.name == "redimnet2"
    assert embedder.default_threshold == pytest.approx(0.45)
    # The card's model is the default: B6, large-margin fine-tuned, VoxBlink2 + VoxCeleb2.
    assert embedder._model.config == {"model_name": "b6", "train_type": "lm", "dataset": "vb2+vox2_v0"}
    assert all(p.device.type == "cpu" for p in embedder._model.parameters())

    clips = [tone(220, 1.0), tone(1800, 1.2), tone(220, 1.0), tone(220, 0.01), np.zeros(0, np.float32)]
    vectors = embedder.embed(clips)
    assert vectors.shape == (5, 16) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(vectors[0], vectors[2])
    assert 1 - vectors[0] @ vectors[1] > 1e-3


def test_redimnet2_passes_entry_point_options(tmp_path: Path) -> None:
    hub = write_hub(tmp_path / "hub")
    embedder = load_embedder("redimnet2", hub_dir=str(hub), model_name="b3", dataset="vox2")
    assert embedder._model.config == {"model_name": "b3", "train_type": "lm", "dataset": "vox2"}
    with pytest.raises(EmbedderError, match="redimnet_b6"):
        load_embedder("redimnet2", hub_dir=str(hub), entry_point="redimnet_b6")


def test_redimnet2_load_failures_say_how_to_fix_them(tmp_path: Path) -> None:
    with pytest.raises(EmbedderError, match="hub_dir=/path/to"):
        load_embedder("redimnet2", hub_dir=str(tmp_path / "missing"))
    # What a real checkout does without torchaudio: torch.hub refuses its missing dependency.
    hub = write_hub(tmp_path / "needs-audio", dependencies=("torch", "turnscribe_test_absent_package"))
    with pytest.raises(EmbedderError, match=r"turnscribe\[redimnet\]"):
        load_embedder("redimnet2", hub_dir=str(hub))
    with pytest.raises(EmbedderError, match="no-such-device"):
        load_embedder("redimnet2", device="no-such-device", hub_dir=str(write_hub(tmp_path / "hub")))


def test_unknown_embedder_and_option() -> None:
    assert {"resemblyzer", "redimnet2"} <= set(embedder_names())
    with pytest.raises(EmbedderError, match="redimnet2.*resemblyzer"):
        load_embedder("ecapa")
    with pytest.raises(EmbedderError, match="hub_dir"):
        load_embedder("redimnet2", hubdir="/tmp")


# --- resemblyzer on espeak-ng voices ----------------------------------------------------------------------------

# The synthetic meetings' first four voices: far apart under GE2E (see turnscribe.evaluation.synthetic).
VOICES = dict(zip(["f4-low", "klatt3", "annie-high", "storm"], SYNTHETIC_VOICES[:4]))
SENTENCES = [
    "The meeting starts at nine tomorrow morning in the small room.",
    "Could you please send me the report before Friday afternoon?",
    "I think we should look at the numbers again next week.",
]

needs_espeak = pytest.mark.skipif(not have_espeak(), reason="espeak-ng is not on PATH (apt-get install espeak-ng)")


@pytest.fixture(scope="module")
def voices() -> dict[str, list[np.ndarray]]:
    return {name: [synthesise(text, voice) for text in SENTENCES] for name, voice in VOICES.items()}


@pytest.fixture(scope="module")
def resemblyzer():
    return load_embedder("resemblyzer")


@needs_espeak
def test_resemblyzer_puts_one_voice_closer_than_two(voices, resemblyzer) -> None:
    vectors = {name: resemblyzer.embed(clips) for name, clips in voices.items()}
    for v in vectors.values():
        assert v.shape == (len(SENTENCES), 256) and v.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-5)
    same = [1 - v @ v.T for v in vectors.values()]
    different = [1 - a @ b.T for a, b in itertools.combinations(vectors.values(), 2)]
    assert max(d.max() for d in same) < min(d.min() for d in different)
    # Average linkage merges on mean distances: the default cut must fall between the two kinds.
    n = len(SENTENCES)
    assert max(d.sum() / (n * n - n) for d in same) < resemblyzer.default_threshold < min(d.mean() for d in different)


@needs_espeak
def test_resemblyzer_embeds_very_short_and_empty_clips(voices, resemblyzer) -> None:
    clip = voices["storm"][0]
    vectors = resemblyzer.embed([clip[: SAMPLE_RATE // 10], np.zeros(0, np.float32), np.zeros(800, np.float32)])
    assert vectors.shape == (3, 256)
    assert np.all(np.isfinite(vectors))


def recording(voices: dict[str, list[np.ndarray]], turns: list[tuple[str, int]], window_s: float):
    """Concatenate turns with short pauses; segments carry window-local slots, as the decoder would give them."""
    gap = np.zeros(SAMPLE_RATE // 4, np.float32)
    pieces, segments, speakers = [], [], []
    slots: dict[tuple[int, str], int] = {}
    cursor = 0
    for name, sentence in turns:
        clip = voices[name][sentence]
        start, end = cursor / SAMPLE_RATE, (cursor + len(clip)) / SAMPLE_RATE
        window = int(start // window_s)
        # Slots count from 0 in each window, so one voice's slot changes from window to window.
        slot = slots.setdefault((window, name), sum(w == window for w, _ in slots))
        segments.append(StitchedSegment(start=start, end=end, text="", window=window, slot=slot))
        speakers.append(name)
        pieces += [clip, gap]
        cursor += len(clip) + len(gap)
    return np.concatenate(pieces), segments, speakers


TURNS = [
    ("klatt3", 0),
    ("annie-high", 0),
    ("f4-low", 0),
    ("klatt3", 1),
    ("storm", 0),
    ("annie-high", 1),
    ("f4-low", 1),
    ("storm", 1),
    ("klatt3", 2),
    ("annie-high", 2),
    ("storm", 2),
    ("f4-low", 2),
]


@needs_espeak
def test_clustering_linker_links_voices_across_windows(voices, resemblyzer) -> None:
    audio, segments, speakers = recording(voices, TURNS, window_s=8.0)
    assert len({s.window for s in segments}) >= 3
    labels = ClusteringLinker(resemblyzer).assign(segments, audio).labels
    # Voices come in as klatt3, annie-high, f4-low, storm.
    expected = {"klatt3": "SPEAKER_00", "annie-high": "SPEAKER_01", "f4-low": "SPEAKER_02", "storm": "SPEAKER_03"}
    assert labels == [expected[name] for name in speakers]


@needs_espeak
def test_clustering_linker_respects_num_speakers(voices, resemblyzer) -> None:
    audio, segments, _ = recording(voices, TURNS, window_s=8.0)
    assert len(set(ClusteringLinker(resemblyzer, num_speakers=2).assign(segments, audio).labels)) == 2
    assert len(set(ClusteringLinker(resemblyzer, max_speakers=3).assign(segments, audio).labels)) == 3


class NoEmbedding:
    """Stands in where the linker must not embed at all."""

    name = "none"
    default_threshold = 0.5

    def embed(self, clips):
        raise AssertionError("a single window's slots should be used as they are")


def test_single_window_uses_the_models_slots() -> None:
    segments = [
        StitchedSegment(start=0.0, end=1.0, text="a", window=0, slot=2),
        StitchedSegment(start=1.0, end=2.0, text="b", window=0, slot=0),
        StitchedSegment(start=2.0, end=3.0, text="c", window=0, slot=2),
    ]
    audio = np.zeros(3 * SAMPLE_RATE, np.float32)
    expected = ["SPEAKER_00", "SPEAKER_01", "SPEAKER_00"]
    assert ClusteringLinker(NoEmbedding()).assign(segments, audio) == SpeakerAssignment(expected, None)
    # Constraints the slots already meet change nothing.
    assert ClusteringLinker(NoEmbedding(), min_speakers=2, max_speakers=2).assign(segments, audio).labels == expected
    assert ClusteringLinker(NoEmbedding(), num_speakers=3).assign([], audio).labels == []
    # Constraints the slots break force clustering.
    with pytest.raises(AssertionError, match="single window"):
        ClusteringLinker(NoEmbedding(), num_speakers=1).assign(segments, audio)


@needs_espeak
def test_single_window_with_forced_count_still_clusters(voices, resemblyzer) -> None:
    audio, segments, speakers = recording(voices, TURNS[:4], window_s=60.0)
    assert {s.window for s in segments} == {0}
    labels = ClusteringLinker(resemblyzer, num_speakers=1).assign(segments, audio).labels
    assert labels == ["SPEAKER_00"] * len(speakers)


@pytest.mark.parametrize("threshold", [-1.0, float("nan"), float("inf")])
def test_a_threshold_that_is_no_cosine_distance_fails_when_the_linker_is_built(threshold) -> None:
    """Not after every window of a recording was decoded (the baseline linker raised only when clustering, and the
    slots linker took a negative threshold as 'nobody is anybody')."""
    from test_pipeline import FakeEmbedder

    from turnscribe.speakers import SlotLinker

    for linker in (ClusteringLinker, SlotLinker):
        with pytest.raises(ValueError, match="threshold must be a finite cosine distance >= 0"):
            linker(FakeEmbedder(), threshold=threshold)
    ClusteringLinker(FakeEmbedder(), threshold=0.0)  # zero: nobody merged, a valid (if odd) choice
