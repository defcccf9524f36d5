"""Light helpers shared by the server tests, importable by a server subprocess without the heavy test modules.

`scripted_pipeline` is the `--pipeline-factory` that the subprocess tests start `turnscribe serve` with.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import numpy as np

from turnscribe import Pipeline
from turnscribe.decoders import ScriptedDecoder
from turnscribe.speakers.linking import SpeakerAssignment, relabel_by_first_appearance
from turnscribe.types import StitchedSegment, WindowSpan

DELAY_ENV = "TURNSCRIBE_TEST_DECODE_DELAY"


def script(span: WindowSpan) -> str:
    """Two speakers per window; the text names the window, so results show which window produced what."""
    i = span.index
    return f"<|spltoken0|><|t:1.0|> window {i} one <|t:3.0|><|spltoken1|><|t:5.0|> window {i} two <|t:8.0|>"


class SlotLinker:
    """Labels by the model's window-local slot: no embedder to load, deterministic."""

    def assign(self, segments: Sequence[StitchedSegment], audio: np.ndarray) -> SpeakerAssignment:
        return SpeakerAssignment(
            relabel_by_first_appearance([s.start for s in segments], [s.slot for s in segments]), None
        )


def scripted_pipeline() -> Pipeline:
    """Scripted windows, one per decoder call, each slowed down by $TURNSCRIBE_TEST_DECODE_DELAY seconds."""
    delay = float(os.environ.get(DELAY_ENV, "0"))

    def slow(span: WindowSpan) -> str:
        time.sleep(delay)
        return script(span)

    return Pipeline(ScriptedDecoder(slow, batch_size=1), SlotLinker())
