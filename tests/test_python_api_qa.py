"""The Python API as a faster-whisper / WhisperX user drives it: the kinds of input `transcribe` and
`transcribe_many` document, and the mistakes such users make, each answered with an error that names it."""

import io
import json
import tempfile

import av
import numpy as np
import pytest
import torch

import turnscribe
from turnscribe.decoders import ScriptedDecoder
from turnscribe.speakers import ClusteringLinker, SlotLinker
from turnscribe.types import SAMPLE_RATE


def tone(seconds: float, rate: int = SAMPLE_RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def window_names() -> ScriptedDecoder:
    return ScriptedDecoder(lambda span: f"<|spltoken0|><|t:1.0|> window {span.index} <|t:2.0|>")


def test_transcribe_many_takes_arrays_and_tensors_with_their_sampling_rate():
    mono, stereo = tone(40, 44100), torch.from_numpy(np.stack([tone(40, 44100)] * 2))
    results = list(turnscribe.transcribe_many([mono, stereo], sampling_rate=44100, decoder=window_names()))
    assert [r.error for r in results] == [None, None]
    for result in results:
        assert result.transcript.duration == pytest.approx(40.0)
        assert [s.text for s in result.transcript.segments] == ["window 0", "window 1"]


@pytest.mark.parametrize("language", [None, 2])
def test_a_language_that_is_not_a_code_is_a_language_error_before_anything_loads(language):
    # language=None is how faster-whisper and WhisperX are asked to detect the language.
    with pytest.raises(turnscribe.LanguageError, match="language is required.*does not detect"):
        turnscribe.transcribe(tone(1), sampling_rate=SAMPLE_RATE, language=language, model="/nowhere")


@pytest.mark.parametrize(
    "samples",
    [
        (tone(30) * 32767).astype(np.int64),  # np.array(a list of ints), .astype(int)
        (tone(30) * 32767 + 32768).astype(np.uint64),
        torch.from_numpy(tone(30) * 32767).long(),  # torch.tensor(a list of ints)
    ],
    ids=["int64", "uint64", "torch.int64"],
)
def test_64_bit_integer_samples_are_refused_not_transcribed_as_silence(samples):
    # Scaled by 2**63 the 16-bit values in them were -190 dBFS: every window skipped as silence, no error.
    with pytest.raises(turnscribe.AudioError, match="int64|uint64") as error:
        turnscribe.transcribe(samples, sampling_rate=SAMPLE_RATE, decoder=window_names())
    assert "astype(np.int16)" in str(error.value)


@pytest.mark.parametrize("rate", [16, 48, 999])
def test_a_sampling_rate_given_in_khz_is_an_audio_error_before_it_is_resampled(rate, monkeypatch):
    # Resampled as Hz, a minute of audio at "16" became 960 million samples (4 GB, most of a minute).
    monkeypatch.setattr("turnscribe.audio.resample_poly", lambda *args: pytest.fail("resampled"))
    with pytest.raises(turnscribe.AudioError, match="in Hz"):
        turnscribe.load_audio(tone(60), sampling_rate=rate)


def test_the_slowest_accepted_sampling_rate_is_resampled():
    assert len(turnscribe.load_audio(tone(2, 1000), sampling_rate=1000)) == 2 * SAMPLE_RATE


def wav_bytes(seconds: float) -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="wav") as out:
        stream = out.add_stream("pcm_s16le", rate=SAMPLE_RATE, layout="mono")
        frame = av.AudioFrame.from_ndarray((tone(seconds) * 32767).astype(np.int16)[None], format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    return buffer.getvalue()


def test_a_file_opened_in_text_mode_is_refused_for_that_reason(tmp_path):
    path = tmp_path / "call.wav"
    path.write_bytes(wav_bytes(1))
    with open(path) as text, pytest.raises(turnscribe.AudioError, match=r"call\.wav is open in text mode.*'rb'"):
        turnscribe.load_audio(text)


@pytest.mark.parametrize("make", [tempfile.TemporaryFile, tempfile.SpooledTemporaryFile], ids=lambda f: f.__name__)
def test_an_unreadable_file_object_without_a_path_is_named_as_a_file_object(make):
    # A web framework's upload (SpooledTemporaryFile) was named "None" in the error, a TemporaryFile by its descriptor.
    with make() as upload:
        upload.write(b"not audio" * 100)
        upload.seek(0)
        with pytest.raises(turnscribe.AudioError, match="^Not a readable audio or video file: <file object> "):
            turnscribe.load_audio(upload)


@pytest.mark.parametrize(
    "one",
    ["meeting.wav", b"RIFF", tone(1), torch.from_numpy(tone(1)), io.BytesIO(b"RIFF")],
    ids=lambda one: type(one).__name__,
)
def test_transcribe_many_given_one_recording_instead_of_a_list_says_so_before_the_model_loads(one):
    # A path was read as one file per character, an array as one recording per sample (16,000 errors a second).
    with pytest.raises(TypeError, match="list of recordings"):
        turnscribe.transcribe_many(one, sampling_rate=SAMPLE_RATE, model="/nowhere")


def test_run_many_given_one_recording_instead_of_a_list_says_so():
    from turnscribe.scheduler import run_many
    from turnscribe.speakers import ClusteringLinker

    pipeline = turnscribe.Pipeline(window_names(), ClusteringLinker(embedder=None))
    with pytest.raises(TypeError, match="list of recordings"):
        next(run_many(pipeline, tone(1), sampling_rate=SAMPLE_RATE))


@pytest.mark.parametrize("already_read", [12, None], ids=["header sniffed", "read whole"])
def test_a_file_object_read_before_it_is_transcribed_is_refused_with_where_it_stood(already_read):
    # What a web app does when it checks an upload's size or type first; the error blamed the file.
    upload = io.BytesIO(wav_bytes(1))
    upload.read(already_read)
    with pytest.raises(turnscribe.AudioError, match=r"read from byte \d+, where the file object stood: seek\(0\)"):
        turnscribe.load_audio(upload)
    upload.seek(0)
    assert len(turnscribe.load_audio(upload)) == SAMPLE_RATE


@pytest.mark.parametrize(("language", "joined"), [("ja", "こんにちは。元気ですか？"), ("en", "Hello. How are you?")])
def test_segments_join_into_one_text_without_spaces_in_japanese_and_chinese(language, joined):
    # As Whisper and OpenAI's API give the text: a space between segments in Japanese is a stray character.
    from turnscribe.formats import render
    from turnscribe.server.app import _segment_event
    from turnscribe.server.engine import StreamSegment
    from turnscribe.types import Segment, Transcript

    first, second = ("こんにちは。", "元気ですか？") if language == "ja" else ("Hello.", "How are you?")
    transcript = Transcript(
        [Segment(0, 0.0, 1.0, first, "SPEAKER_00"), Segment(1, 1.0, 2.0, second, "SPEAKER_00")],
        ["SPEAKER_00"],
        language,
        2.0,
    )
    assert transcript.text == joined
    assert json.loads(render(transcript, "diarized_json"))["text"] == joined
    assert render(transcript, "txt") == f"[00:00:00.000 --> 00:00:02.000] SPEAKER_00: {joined}\n"
    # The server's streamed deltas add up to the same text.
    deltas = [
        _segment_event(StreamSegment(f"seg_{s.id}", s.start, s.end, s.text, s.speaker), "json", language)
        for s in transcript.segments
    ]
    assert "".join(d["delta"] for d in deltas) == joined


def test_int32_samples_holding_16_bit_values_are_warned_of(caplog):
    # int16 channels mixed in int32 so as not to overflow: on the 2**31 scale that is -107 dBFS, skipped as silence.
    left = right = (tone(30) * 32767).astype(np.int16)
    mixed = (left.astype(np.int32) + right) // 2
    with caplog.at_level("WARNING", logger="turnscribe.audio"):
        transcript = turnscribe.transcribe(mixed, sampling_rate=SAMPLE_RATE, decoder=window_names())
    assert transcript.segments == []
    assert "If it holds 16-bit samples, pass .astype(np.int16)" in caplog.text


def test_a_silent_or_full_scale_int32_recording_is_not_warned_of(caplog):
    dither = np.random.default_rng(0).integers(-3, 4, 16000, dtype=np.int32)
    with caplog.at_level("WARNING", logger="turnscribe.audio"):
        turnscribe.load_audio(dither, sampling_rate=SAMPLE_RATE)
        turnscribe.load_audio((tone(1) * 2**31).astype(np.int32), sampling_rate=SAMPLE_RATE)
    assert caplog.text == ""


def test_a_transcript_of_a_path_names_its_source_as_transcribe_many_does(tmp_path):
    # transcribe(path) and Pipeline.run(path) left metadata.source (and the progress events' source) empty.
    path = tmp_path / "call.wav"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=SAMPLE_RATE, layout="mono")
        frame = av.AudioFrame.from_ndarray((tone(3) * 32767).astype(np.int16)[None], format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    events = []
    single = turnscribe.transcribe(path, decoder=window_names(), audio_processes=0, progress=events.append)
    (many,) = turnscribe.transcribe_many([path], decoder=window_names())
    assert single.metadata.source == many.transcript.metadata.source == str(path)
    assert {e.source for e in events} == {str(path)}


def test_one_pipeline_takes_each_recordings_speaker_count():
    # pyannote's pipeline(file, num_speakers=2): the hint belongs to the recording, not to the loaded pipeline.
    class TwoVoices:  # the first speaker of each window sounds like one person, the second like another
        name, default_threshold = "two-voices", 0.5

        def embed(self, clips):
            return np.array([[1.0, 0.0] if c.mean() >= 0 else [0.0, 1.0] for c in clips], dtype=np.float32)

    samples = np.full(70 * SAMPLE_RATE, 0.01, dtype=np.float32)
    for start in (0, 26, 52):  # the windows' starts; each window says speaker 0 at 1-2 s, speaker 1 at 5-8 s
        samples[(start + 1) * SAMPLE_RATE : (start + 2) * SAMPLE_RATE] = 0.3
        samples[(start + 5) * SAMPLE_RATE : (start + 8) * SAMPLE_RATE] = -0.3
    script = ScriptedDecoder(lambda s: "<|spltoken0|><|t:1.0|> hello <|t:2.0|><|spltoken1|><|t:5.0|> hi <|t:8.0|>")
    pipeline = turnscribe.Pipeline(script, ClusteringLinker(TwoVoices()))
    assert len(pipeline.run(samples, sampling_rate=SAMPLE_RATE).speakers) == 2
    assert len(pipeline.run(samples, sampling_rate=SAMPLE_RATE, num_speakers=1).speakers) == 1
    assert len(pipeline.run(samples, sampling_rate=SAMPLE_RATE, max_speakers=1).speakers) == 1
    assert pipeline.speakers.num_speakers is None  # the pipeline's own linker is left as it was
    with pytest.raises(ValueError, match="num_speakers must be at least 1"):
        pipeline.run(samples, sampling_rate=SAMPLE_RATE, num_speakers=0)


def test_a_run_with_speaker_counts_keeps_the_known_speakers_embedded():
    # The per-run copy of the linker re-ran its __post_init__, which embeds every known speaker's reference: each
    # run with a count embedded them all again (seconds per file with many references on the CPU).
    class CountingVoices:
        name, default_threshold = "counting", 0.5
        clips_embedded = 0

        def embed(self, clips):
            CountingVoices.clips_embedded += len(clips)
            return np.array([[1.0, 0.0] if c.mean() >= 0 else [0.0, 1.0] for c in clips], dtype=np.float32)

    samples = np.full(70 * SAMPLE_RATE, 0.01, dtype=np.float32)
    for start in (0, 26, 52):
        samples[(start + 1) * SAMPLE_RATE : (start + 2) * SAMPLE_RATE] = 0.3
        samples[(start + 5) * SAMPLE_RATE : (start + 8) * SAMPLE_RATE] = -0.3
    script = ScriptedDecoder(lambda s: "<|spltoken0|><|t:1.0|> hello <|t:2.0|><|spltoken1|><|t:5.0|> hi <|t:8.0|>")
    references = {"Alice": np.full(3 * SAMPLE_RATE, -0.3, np.float32), "Bob": np.full(3 * SAMPLE_RATE, 0.3, np.float32)}
    pipeline = turnscribe.Pipeline(script, SlotLinker(CountingVoices(), known_speakers=references))
    built_with_count = turnscribe.Pipeline(
        script, SlotLinker(CountingVoices(), num_speakers=2, known_speakers=references)
    )
    before = CountingVoices.clips_embedded
    expected = built_with_count.run(samples, sampling_rate=SAMPLE_RATE)
    clips_of_a_run = CountingVoices.clips_embedded - before
    before = CountingVoices.clips_embedded
    transcript = pipeline.run(samples, sampling_rate=SAMPLE_RATE, num_speakers=2)
    assert CountingVoices.clips_embedded - before == clips_of_a_run  # the recording's clips, not the references
    assert transcript.segments == expected.segments and "Alice" in transcript.speakers
    assert pipeline.speakers.num_speakers is None
