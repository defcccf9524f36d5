"""Speaker stage: embed segments and link window-local speaker slots into file-wide labels."""

from turnscribe.speakers.clustering import cluster_embeddings
from turnscribe.speakers.embedders import Embedder, EmbedderError, embedder_names, load_embedder
from turnscribe.speakers.linking import (
    ClusteringLinker,
    SpeakerAssignment,
    SpeakerLinker,
    relabel_by_first_appearance,
)
from turnscribe.speakers.slots import SlotLinker

__all__ = [
    "ClusteringLinker",
    "Embedder",
    "EmbedderError",
    "SlotLinker",
    "SpeakerAssignment",
    "SpeakerLinker",
    "cluster_embeddings",
    "embedder_names",
    "load_embedder",
    "relabel_by_first_appearance",
]
