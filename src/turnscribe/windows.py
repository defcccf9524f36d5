"""Cut a recording into overlapping decoder windows (the model hears at most 30 s per pass)."""

from __future__ import annotations

import math

from .types import SAMPLE_RATE, TurnscribeError, WindowSpan

MAX_WINDOW_S = 30.0
MIN_WINDOW_S = 0.1  # one of the model's timestamp steps: a shorter window can hold no segment
DEFAULT_WINDOW_S = 28.0
DEFAULT_OVERLAP_S = 2.0


class WindowConfigError(TurnscribeError, ValueError):
    pass


def check_window(window_s: float, overlap_s: float) -> None:
    if not MIN_WINDOW_S <= window_s <= MAX_WINDOW_S:
        raise WindowConfigError(f"window must be in [{MIN_WINDOW_S:g}, {MAX_WINDOW_S:g}] seconds, got {window_s:g}")
    if not 0 <= overlap_s < window_s / 2:
        raise WindowConfigError(f"overlap must be in [0, window/2) = [0, {window_s / 2:g}) seconds, got {overlap_s:g}")


def plan_windows(
    num_samples: int, window_s: float = DEFAULT_WINDOW_S, overlap_s: float = DEFAULT_OVERLAP_S
) -> list[WindowSpan]:
    """Windows of `window_s` every `window_s - overlap_s`; the last one ends at the end of the audio.

    Audio no longer than one window is one window. The last window is not padded or shifted back:
    it is simply shorter, so no stretch of audio is decoded three times.
    """
    check_window(window_s, overlap_s)
    if num_samples <= 0:
        return []
    window = round(window_s * SAMPLE_RATE)
    hop = round((window_s - overlap_s) * SAMPLE_RATE)
    if num_samples <= window:
        return [WindowSpan(0, 0, num_samples)]
    # The last window starts where the remaining audio fits in one window.
    count = 1 + math.ceil((num_samples - window) / hop)
    return [WindowSpan(i, i * hop, min(i * hop + window, num_samples)) for i in range(count)]
