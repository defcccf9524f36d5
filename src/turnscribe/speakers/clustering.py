"""Global agglomerative clustering of speaker embeddings by cosine distance (the model card's recipe)."""

from __future__ import annotations

import math
import numbers

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage


def check_counts(num_speakers: int | None, min_speakers: int | None, max_speakers: int | None) -> None:
    for name, value in (("num_speakers", num_speakers), ("min_speakers", min_speakers), ("max_speakers", max_speakers)):
        # A str compared with an int was a bare TypeError; a float (2.5, even 2.0) or a bool passed here and failed
        # or counted wrong only once every window was decoded.
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral)):
            raise ValueError(f"{name} must be a whole number (an int), got {value!r} ({type(value).__name__})")
        if value is not None and value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if min_speakers is not None and max_speakers is not None and min_speakers > max_speakers:
        raise ValueError(f"min_speakers ({min_speakers}) is greater than max_speakers ({max_speakers})")
    if num_speakers is not None and (
        (min_speakers is not None and num_speakers < min_speakers)
        or (max_speakers is not None and num_speakers > max_speakers)
    ):
        raise ValueError(
            f"num_speakers ({num_speakers}) contradicts min_speakers ({min_speakers}) / max_speakers ({max_speakers})"
        )


def check_threshold(threshold: float | None) -> None:
    """A given threshold is a cosine distance: finite and >= 0 (above 2 every pair is within it)."""
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, numbers.Real)):
        kind = type(threshold).__name__
        raise ValueError(f"threshold must be a number (a cosine distance), got {threshold!r} ({kind})")
    if threshold is not None and not (math.isfinite(threshold) and threshold >= 0):
        raise ValueError(f"threshold must be a finite cosine distance >= 0, got {threshold}")


def cluster_embeddings(
    embeddings: np.ndarray,
    *,
    threshold: float,
    num_speakers: int | None = None,
    min_speakers: int | None = None,
    max_speakers: int | None = None,
) -> np.ndarray:
    """Cluster (n, d) embeddings; return int labels 0..k-1.

    With `num_speakers` the tree is cut into exactly that many clusters (capped at n, fewer only where embeddings
    are identical); otherwise it is cut at the cosine distance `threshold` and the cluster count then clamped into
    [min_speakers, max_speakers] by cutting the same tree again.
    """
    check_counts(num_speakers, min_speakers, max_speakers)
    check_threshold(threshold)
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D (n, d) array, got shape {x.shape}")
    n = len(x)
    if n <= 1:
        return np.zeros(n, dtype=np.int64)

    tree = linkage(x, method="average", metric="cosine")
    if num_speakers is not None:
        labels = fcluster(tree, t=min(num_speakers, n), criterion="maxclust")
    else:
        labels = fcluster(tree, t=threshold, criterion="distance")
        found = int(labels.max())
        wanted = min(max(found, min_speakers or 1), max_speakers or n, n)
        if wanted != found:
            labels = fcluster(tree, t=wanted, criterion="maxclust")
    # fcluster counts from 1 and may skip numbers when merge heights tie; make them 0..k-1.
    return np.unique(labels, return_inverse=True)[1].astype(np.int64)
