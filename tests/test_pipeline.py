"""End to end: audio file → windows → tiny model generate (forced) → parse → stitch → embed → cluster → formats."""

import json
from concurrent.futures import Future

import av
import numpy as np
import pytest
from tiny_model import Script, build_tokenizer

from turnscribe import Pipeline, build_pipeline
from turnscribe.decoders import ScriptedDecoder
from turnscribe.decoders.base import DecoderError, WindowAudio
from turnscribe.decoders.reference import ReferenceDecoder, ReferenceTurn
from turnscribe.decoders.transformers import TransformersDecoder
from turnscribe.evaluation.synthetic import Voice, have_espeak, synthesise
from turnscribe.formats import format_names, render
from turnscribe.parse import parse_window
from turnscribe.speakers import ClusteringLinker, load_embedder
from turnscribe.types import SAMPLE_RATE, LocalSegment
from turnscribe.windows import plan_windows

needs_espeak = pytest.mark.skipif(not have_espeak(), reason="espeak-ng is not installed (.ci/run installs it)")

# (start s, voice, text): two voices taking turns over 70 s, so over three 28 s windows.
TURNS = [
    (1.0, "A", "Good morning everyone and welcome to the weekly planning meeting"),
    (7.0, "B", "Thanks for having me I have a few updates about the release"),
    (14.0, "A", "Please go ahead and tell us what changed since last week"),
    (21.0, "B", "We fixed the login problem and the build is much faster now"),
    (27.0, "A", "That is great news for the whole team"),
    (33.0, "B", "The next step is testing on real devices before we ship"),
    (41.0, "A", "How long do you think the testing will take"),
    (47.0, "B", "About two weeks if nothing unexpected comes up"),
    (54.0, "A", "Fine let us meet again when the results are in"),
    (61.0, "B", "Sounds good see you all next week"),
]
VOICES = {"A": Voice("en-us", pitch=25, speed=150), "B": Voice("en+f3", pitch=70, speed=170)}


def write_wav(path, samples, rate=SAMPLE_RATE, channels=1):
    with av.open(str(path), "w") as out:
        stream = out.add_stream("pcm_s16le", rate=rate, layout="mono" if channels == 1 else "stereo")
        pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono" if channels == 1 else "stereo")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


@pytest.fixture(scope="module")
def meeting(tmp_path_factory):
    """A 70 s two-voice recording and its ground truth (start, end, voice, text)."""
    if not have_espeak():
        pytest.skip("espeak-ng is not installed")
    folder = tmp_path_factory.mktemp("meeting")
    audio = np.zeros(70 * SAMPLE_RATE, dtype=np.float32)
    truth = []
    for start, voice, text in TURNS:
        clip = synthesise(text, VOICES[voice])[: int(5.8 * SAMPLE_RATE)]
        s = int(start * SAMPLE_RATE)
        audio[s : s + len(clip)] = clip
        truth.append((start, round(start + len(clip) / SAMPLE_RATE, 1), voice, text))
    path = folder / "meeting.wav"
    write_wav(path, audio)
    return path, truth


def test_reference_decoder_round_trips_through_the_parser():
    turns = [ReferenceTurn(1.0, 4.0, "A", "one two"), ReferenceTurn(27.0, 30.0, "B", "three four")]
    spans = plan_windows(40 * SAMPLE_RATE)
    decoder = ReferenceDecoder(turns)
    raws = decoder.decode([WindowAudio(s, np.zeros(1, np.float32)) for s in spans], "en")
    assert [parse_window(r, s.duration).segments for r, s in zip(raws, spans)] == [
        [LocalSegment(0, 1.0, 4.0, "one two"), LocalSegment(1, 27.0, 28.0, "three four")],
        [LocalSegment(0, 1.0, 4.0, "three four")],
    ]


@needs_espeak
def test_two_voices_end_to_end_through_the_tiny_model(meeting, tiny_native, tmp_path):
    path, truth = meeting
    spans = plan_windows(70 * SAMPLE_RATE)
    turns = [ReferenceTurn(start, end, voice, text) for start, end, voice, text in truth]
    outputs = ReferenceDecoder(turns).decode([WindowAudio(s, np.zeros(1, np.float32)) for s in spans], "en")
    # In window 1 voice B speaks first, so the model's slot 0 is B there: linking must undo that.
    assert outputs[1].startswith("<|spltoken0|>") and "spltoken1" in outputs[1]
    decoder = TransformersDecoder(
        tiny_native, device="cpu", batch_size=2, logits_processor_factory=Script(build_tokenizer(), outputs)
    )
    pipeline = Pipeline(decoder, ClusteringLinker(load_embedder("resemblyzer")))
    events = []
    transcript = pipeline.run(path, language="en", progress=events.append, source=str(path))

    assert [s.text for s in transcript.segments] == [t[3] for t in truth]
    for seg, (start, end, _, _) in zip(transcript.segments, truth):
        assert seg.start == pytest.approx(start, abs=0.051) and seg.end == pytest.approx(end, abs=0.051)
    voice_of = {t[3]: t[2] for t in truth}
    assert transcript.speakers == ["SPEAKER_00", "SPEAKER_01"]
    assert {voice_of[s.text] + s.speaker for s in transcript.segments} == {"ASPEAKER_00", "BSPEAKER_01"}
    assert transcript.duration == pytest.approx(70.0)
    assert transcript.metadata.windows == 3 and transcript.metadata.embedder == "resemblyzer"
    assert [e.done for e in events if e.kind == "window"] == [2, 3]
    assert [e.kind for e in events][-2:] == ["speakers", "file"]  # linking begins, then the transcript is ready

    for fmt in format_names():
        text = render(transcript, fmt, uri="meeting")
        assert "Good morning everyone" in text or fmt == "rttm"
    diarized = json.loads(render(transcript, "diarized_json"))
    assert diarized["speakers"] == ["SPEAKER_00", "SPEAKER_01"] and len(diarized["segments"]) == len(truth)


def scripted(outputs_by_window, batch_size=8):
    return ScriptedDecoder(lambda span: outputs_by_window(span), batch_size=batch_size)


class FakeEmbedder:
    """Embeds a clip by its mean sign, so tests of the pipeline's control flow need no real model."""

    name = "fake"
    default_threshold = 0.5

    def embed(self, clips):
        return np.array([[1.0, 0.0] if c.mean() >= 0 else [0.0, 1.0] for c in clips], dtype=np.float32)


def pipeline_with(decoder):
    return Pipeline(decoder, ClusteringLinker(FakeEmbedder()))


def tone(seconds, rate=SAMPLE_RATE):
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def test_a_failing_window_is_reported_and_the_rest_survive():
    def script(span):
        if span.index == 1:
            raise RuntimeError("CUDA error: device-side assert")
        return "<|spltoken0|><|t:1.0|> window " + str(span.index) + " <|t:2.0|>"

    transcript = pipeline_with(scripted(script, batch_size=3)).run(tone(80), sampling_rate=SAMPLE_RATE)
    assert [s.text for s in transcript.segments] == ["window 0", "window 2"]
    failed = [r for r in transcript.metadata.repairs if r.kind == "window_failed"]
    assert [r.window for r in failed] == [1] and "device-side assert" in failed[0].detail


def test_a_decoder_lowering_its_batch_size_gets_smaller_batches_from_then_on():
    # As TransformersDecoder does after running out of GPU memory.
    sizes = []

    class Shrinking(ScriptedDecoder):
        def decode(self, windows, language):
            sizes.append(len(windows))
            self.batch_size = 2
            return super().decode(windows, language)

    decoder = Shrinking(lambda span: f"<|spltoken0|><|t:1.0|> window {span.index} <|t:2.0|>", batch_size=4)
    transcript = pipeline_with(decoder).run(tone(230), sampling_rate=SAMPLE_RATE)
    assert sizes == [4, 2, 2, 1] and len(transcript.segments) == 9


def test_a_progress_callback_can_stop_the_run_before_the_speakers_are_linked():
    # What the server does when a client goes away, and run_many when its caller stops reading.
    from turnscribe.pipeline import RunStopped

    linked = []

    class Recording(ClusteringLinker):
        def assign(self, segments, samples):
            linked.append(len(segments))
            return super().assign(segments, samples)

    def stop_at_linking(event):
        if event.kind == "speakers":
            raise RunStopped("cancelled")

    pipeline = Pipeline(scripted(lambda span: "<|spltoken0|><|t:1.0|> hi <|t:2.0|>"), Recording(FakeEmbedder()))
    with pytest.raises(RunStopped):
        pipeline.run(tone(60), sampling_rate=SAMPLE_RATE, progress=stop_at_linking)
    assert linked == []


def test_every_window_failing_is_an_error():
    def script(span):
        raise RuntimeError("out of memory")

    with pytest.raises(DecoderError, match="Every window failed"):
        pipeline_with(scripted(script)).run(tone(40), sampling_rate=SAMPLE_RATE)


def speech_then_silence():
    return np.concatenate([tone(40), np.zeros(30 * SAMPLE_RATE, np.float32)])


def test_every_window_with_sound_failing_is_an_error_though_a_silent_one_was_skipped():
    def script(span):
        raise RuntimeError("out of memory")

    with pytest.raises(DecoderError, match="Every window failed"):
        pipeline_with(scripted(script)).run(speech_then_silence(), sampling_rate=SAMPLE_RATE)


def test_every_window_with_sound_failing_through_a_streaming_decoder_is_an_error():
    class Failing:
        name, model_id, batch_size = "failing", "x", 4

        def decode(self, windows, language):
            raise AssertionError("a streaming decoder is fed through submit")

        def submit(self, windows, language):
            futures = [Future() for _ in windows]
            for future in futures:
                future.set_exception(RuntimeError("out of memory"))
            return futures

    with pytest.raises(DecoderError, match="Every window failed"):
        pipeline_with(Failing()).run(speech_then_silence(), sampling_rate=SAMPLE_RATE)


def test_a_decoder_returning_the_wrong_count_is_isolated():
    class Short:
        name, model_id, batch_size = "short", "x", 4

        def decode(self, windows, language):
            return ["<|spltoken0|><|t:0.0|> hi <|t:1.0|>"] if len(windows) == 1 else []

    transcript = pipeline_with(Short()).run(tone(60), sampling_rate=SAMPLE_RATE)
    assert len(transcript.segments) == 3


def test_malformed_model_output_is_repaired_not_raised(tiny_native):
    garbage = ["<|t:3.0|> no speaker <|t:1.0|><|spltoken5|><|en|> loop loop loop loop loop <|t:29.9|><|spltoken1|>"]
    decoder = TransformersDecoder(
        tiny_native, device="cpu", logits_processor_factory=Script(build_tokenizer(), garbage)
    )
    transcript = pipeline_with(decoder).run(tone(12), sampling_rate=SAMPLE_RATE)
    assert [s.text for s in transcript.segments] == ["no speaker", "loop loop"]
    assert transcript.segments[1].end == pytest.approx(12.0)
    kinds = {r.kind for r in transcript.metadata.repairs}
    assert {"missing_speaker", "end_before_start", "stray_token", "repetition_loop", "time_past_window"} <= kinds


def test_silence_gives_an_empty_transcript_without_decoding():
    def script(span):
        raise AssertionError("silence must not reach the model")

    transcript = pipeline_with(scripted(script)).run(np.zeros(45 * SAMPLE_RATE, np.float32), sampling_rate=SAMPLE_RATE)
    assert transcript.segments == [] and transcript.speakers == [] and transcript.duration == 45.0
    assert all(render(transcript, fmt) is not None for fmt in format_names())


def test_a_last_window_shorter_than_a_time_step_is_not_sent_to_the_model():
    # No overlap: 28 s windows over 28 s and 3 samples leave a last window of 3 samples.
    sent = []

    def script(span):
        sent.append(span.index)
        return "<|spltoken0|><|t:0.0|> Thank you. <|t:1.0|>"  # what a model makes up for a sliver

    audio = np.concatenate([tone(28), tone(1)[:3]])
    pipeline = Pipeline(scripted(script), ClusteringLinker(FakeEmbedder()), overlap_s=0.0)
    transcript = pipeline.run(audio, sampling_rate=SAMPLE_RATE)
    assert sent == [0] and transcript.metadata.windows == 2
    assert [(s.start, s.end) for s in transcript.segments] == [(0.0, 1.0)]


def test_empty_audio_gives_an_empty_transcript():
    transcript = pipeline_with(scripted(lambda s: "")).run(np.zeros(0, np.float32), sampling_rate=SAMPLE_RATE)
    assert transcript.segments == [] and transcript.metadata.windows == 0


def test_short_clip_through_the_real_model(tiny_native, tmp_path):
    path = tmp_path / "short.wav"
    write_wav(path, tone(0.2))
    outputs = ["<|spltoken0|><|t:0.0|> Hi <|t:0.2|>"]
    decoder = TransformersDecoder(
        tiny_native, device="cpu", logits_processor_factory=Script(build_tokenizer(), outputs)
    )
    transcript = pipeline_with(decoder).run(path)
    assert [(s.start, s.end, s.text, s.speaker) for s in transcript.segments] == [(0.0, 0.2, "Hi", "SPEAKER_00")]


def test_8khz_stereo_file(tmp_path):
    path = tmp_path / "phone.wav"
    stereo = np.stack([tone(35, 8000), tone(35, 8000)], axis=1).reshape(-1)
    write_wav(path, stereo, rate=8000, channels=2)
    seen = []
    decoder = scripted(lambda span: seen.append(span.duration) or "<|spltoken0|><|t:1.0|> hello <|t:2.0|>")
    transcript = pipeline_with(decoder).run(path)
    assert transcript.duration == pytest.approx(35.0, abs=0.01)
    assert seen == pytest.approx([28.0, 9.0], abs=0.01)
    assert len(transcript.segments) == 2


def test_length_an_exact_multiple_of_the_hop():
    spans = plan_windows(26 * 3 * SAMPLE_RATE + 2 * SAMPLE_RATE)  # 80 s = 3 hops + overlap
    assert [(s.start, s.end) for s in spans] == [(0, 28), (26, 54), (52, 80)]
    transcript = pipeline_with(scripted(lambda s: "<|spltoken0|><|t:5.0|> x y <|t:6.0|>")).run(
        tone(80), sampling_rate=SAMPLE_RATE
    )
    assert [s.start for s in transcript.segments] == [5.0, 31.0, 57.0]


def test_build_pipeline_wires_options(tiny_native):
    pipeline = build_pipeline(model=tiny_native, device="cpu", batch_size=3, num_speakers=2, window_s=20, overlap_s=1)
    assert pipeline.decoder.batch_size == 3 and pipeline.window_s == 20
    assert pipeline.speakers.num_speakers == 2


def test_transcribe_a_file_end_to_end_with_the_tiny_model(tiny_native, tmp_path, audio_processes_started):
    """turnscribe.transcribe: checkpoint loading, decoding, speakers; a path is decoded in worker processes."""
    from turnscribe import transcribe

    path = tmp_path / "meeting.wav"
    write_wav(path, tone(40.0))
    started = audio_processes_started
    options = {"model": str(tiny_native), "device": "cpu", "language": "en"}
    got = transcribe(path, audio_processes=2, **options)
    assert started == [2]
    assert got.duration == pytest.approx(40.0) and got.metadata.windows == 2
    assert got.segments  # the random model says something in every window; parsed with repairs
    assert got.metadata.model == str(tiny_native) and got.metadata.embedder == "resemblyzer"
    # The same transcript decoded in this thread, and from the samples themselves.
    assert transcribe(path, audio_processes=0, **options).segments == got.segments
    assert transcribe(tone(40.0), sampling_rate=SAMPLE_RATE, **options).segments == got.segments
    assert started == [2]
