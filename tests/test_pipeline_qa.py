"""Whole-pipeline cases of malformed model output: every word heard is kept once, at a sensible time, and every
repair is reported in the transcript's metadata."""

import numpy as np

from turnscribe import Pipeline
from turnscribe.decoders import ScriptedDecoder
from turnscribe.speakers import ClusteringLinker
from turnscribe.types import SAMPLE_RATE

# 60 s: windows 0-28, 26-54 and 52-60 s.
OUTPUTS = {
    # The end time of "Hello everyone" is missing; the last segment is cut at the window's edge ("pa").
    0: "<|spltoken0|><|t:1.0|> Hello everyone <|spltoken1|><|t:3.0|> Hi there. <|t:4.0|>"
    "<|spltoken0|><|t:24.0|> so we should go to the pa <|t:28.0|><|endoftext|>",
    # The decoder goes back over a segment and loops on a word.
    1: "<|spltoken1|><|t:0.0|> ould go to the park now <|t:4.0|>"
    "<|spltoken0|><|t:10.0|> okay okay okay okay okay <|t:12.0|>"
    "<|spltoken1|><|t:0.0|> ould go to the park now <|t:4.0|><|endoftext|>",
    # Cut at max_new_tokens in the middle of a segment.
    2: "<|spltoken0|><|t:1.0|> and finally we",
}


class SignEmbedder:
    name = "sign"
    default_threshold = 0.5

    def embed(self, clips):
        return np.array([[1.0, 0.0] if c.mean() >= 0 else [0.0, 1.0] for c in clips], dtype=np.float32)


def test_malformed_windows_keep_every_word_once_with_their_repairs_reported():
    t = np.arange(60 * SAMPLE_RATE) / SAMPLE_RATE
    audio = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    pipeline = Pipeline(ScriptedDecoder(lambda span: OUTPUTS[span.index]), ClusteringLinker(SignEmbedder()))
    transcript = pipeline.run(audio, sampling_rate=SAMPLE_RATE)
    assert [(s.start, s.end, s.text) for s in transcript.segments] == [
        (1.0, 3.0, "Hello everyone"),  # ended where the next segment starts, not at the window's end
        (3.0, 4.0, "Hi there."),
        (24.0, 30.0, "so we should go to the park now"),
        (36.0, 38.0, "okay okay"),
        (53.0, 60.0, "and finally we"),
    ]
    repairs = {(r.kind, r.window) for r in transcript.metadata.repairs}
    assert {("missing_end", 0), ("repetition_loop", 1), ("truncated", 2), ("overlap_merged", 1)} <= repairs
    assert transcript.to_dict()["metadata"]["repairs"]  # and they reach the json output
