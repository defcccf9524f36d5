"""Synthetic meetings with exact ground truth: espeak-ng voices taking turns, talking over each other, in noise.

`generate_meeting(MeetingConfig(speakers=4, duration_s=600, overlap_share=0.1, snr_db=10, seed=1))` returns the
audio and its reference turns; `write_meeting` saves audio (FLAC or WAV), RTTM and SegLST. The same config gives
the same meeting, sample for sample. Each voice's sentences are synthesised once (cached for the process) and
reused, so a 30-minute meeting takes seconds.
"""

from __future__ import annotations

import io
import math
import shutil
import subprocess
import wave
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from math import gcd
from pathlib import Path

import av
import numpy as np
from scipy.signal import resample_poly

from ..decoders.reference import ReferenceTurn
from ..formats import write
from ..types import SAMPLE_RATE, Segment, Transcript, TurnscribeError


@dataclass(frozen=True)
class Voice:
    """An espeak-ng voice (language + variant) and its pitch (0-99) / speed (words per minute) settings."""

    name: str
    pitch: int | None = None
    speed: int | None = None


# Picked from 137 espeak-ng variants and pitches (robotic and whispering ones left out) for being far apart under
# GE2E (resemblyzer): mean cosine distance >= 0.37 between any two, against 0.08-0.14 between sentences of one
# voice. espeak's default voices of different languages are one synthesiser (0.08-0.15 apart) and are avoided.
# docs/evaluation.md has the measurement.
VOICES = (
    Voice("en-us+f4", pitch=20),
    Voice("en-us+klatt3"),
    Voice("en-us+Annie", pitch=80),
    Voice("en-us+Storm"),
    Voice("en-us+steph"),
    Voice("en-us+quincy", pitch=80),
    Voice("en-us+anika"),
    Voice("en-us+f5"),
)

# Written for this project: things people say in work meetings.
SENTENCES = (
    "Good morning everyone, thanks for joining on such short notice.",
    "Let us start with a quick update from each team.",
    "The new release went out on Tuesday without any major problems.",
    "We still have two open bugs in the payment screen.",
    "I spoke with the customer yesterday and they seem happy so far.",
    "Could you share the slides after the meeting?",
    "The budget for next quarter is a bit smaller than we hoped.",
    "I think we should move the launch by one week.",
    "That would give the testers enough time to finish.",
    "Do we have numbers on how many people use the export feature?",
    "About a third of our users open it at least once a month.",
    "Then it makes sense to keep improving it.",
    "The designers have a new proposal for the settings page.",
    "I like the idea, but it needs more work on small screens.",
    "Who is going to write the summary for the board?",
    "I can take that if someone sends me the latest figures.",
    "The server costs went up after we added the search index.",
    "Maybe we can turn it off at night when nobody is working.",
    "Let me check with the operations team before we decide.",
    "Our hiring plan has two new engineers starting in March.",
    "Onboarding will take them at least a couple of weeks.",
    "We should pair them with someone from the platform team.",
    "The training session is booked for Thursday afternoon.",
    "Please add your questions to the shared document beforehand.",
    "I have a conflict on Thursday, can we record it?",
    "Sure, the recording will be in the usual folder.",
    "Has anyone looked at the feedback from the last survey?",
    "Most people asked for better documentation and faster support.",
    "We could write a short guide for the most common tasks.",
    "That is a good first step, and it is cheap to do.",
    "The office will be closed on Monday for maintenance.",
    "Remember to take your laptops home on Friday evening.",
    "I will send a reminder to the whole team tomorrow.",
    "Let us go back to the roadmap for a moment.",
    "The mobile app is about two sprints behind the plan.",
    "Most of the delay came from the login changes.",
    "Those are finished now, so we should catch up soon.",
    "What do we tell the partners who are waiting for it?",
    "We tell them the truth and give them a new date.",
    "I agree, and we should keep that date this time.",
    "Is there anything else we need to discuss today?",
    "Just one thing about the holiday schedule in summer.",
    "Please put your days off in the calendar by the end of the month.",
    "Great, then let us wrap up and meet again next week.",
)
BACKCHANNELS = ("yeah", "mm-hmm", "right", "okay", "sure", "I see", "exactly", "uh-huh")

GRID_S = 0.1
"""Every turn starts and ends on the model's 0.1 s time grid, so a perfect decoder reproduces it exactly."""
_GRID = round(GRID_S * SAMPLE_RATE)
SPEECH_RMS = 0.05
"""Speech level (about -26 dBFS RMS) before each speaker's gain: two voices at once stay well below full scale."""
_TRIM = 2e-3  # espeak pads its output with near-silence; turns must start and end where the voice does
_SENTENCES_PER_SPEAKER = 12
_EDGE_S = 0.5  # silence before the first and after the last turn
_MIN_OVERLAP_S = 0.3


class SynthesisError(TurnscribeError):
    pass


def have_espeak() -> bool:
    return shutil.which("espeak-ng") is not None


@lru_cache(maxsize=1024)
def synthesise(text: str, voice: Voice) -> np.ndarray:
    """`text` spoken by `voice`: mono float32 at SAMPLE_RATE, read-only (the array is cached and shared)."""
    cmd = ["espeak-ng", "-v", voice.name, "--stdout"]
    if voice.pitch is not None:
        cmd += ["-p", str(voice.pitch)]
    if voice.speed is not None:
        cmd += ["-s", str(voice.speed)]
    try:
        wav = subprocess.run([*cmd, text], check=True, capture_output=True).stdout
    except FileNotFoundError as exc:
        raise SynthesisError("synthetic meetings need espeak-ng on PATH (apt-get install espeak-ng)") from exc
    except subprocess.CalledProcessError as exc:
        raise SynthesisError(f"espeak-ng failed for voice {voice.name}: {exc.stderr.decode(errors='replace')}") from exc
    with wave.open(io.BytesIO(wav)) as f:
        rate = f.getframerate()
        pcm = np.frombuffer(f.readframes(f.getnframes()), dtype=np.int16)
    # espeak-ng writes 22050 Hz; resample_poly needs the reduced integer ratio.
    g = gcd(SAMPLE_RATE, rate)
    samples = resample_poly(pcm.astype(np.float32) / 32768.0, SAMPLE_RATE // g, rate // g).astype(np.float32)
    samples.setflags(write=False)
    return samples


def _speech_clip(text: str, voice: Voice) -> np.ndarray:
    """The voice's speech with espeak's leading/trailing silence cut, at SPEECH_RMS, padded to the 0.1 s grid."""
    samples = synthesise(text, voice)
    loud = np.flatnonzero(np.abs(samples) > _TRIM)
    if not len(loud):
        raise SynthesisError(f"espeak-ng produced silence for {text!r} with voice {voice.name}")
    clip = samples[loud[0] : loud[-1] + 1]
    clip = clip * (SPEECH_RMS / np.sqrt(np.mean(clip**2)))
    return np.pad(clip, (0, -len(clip) % _GRID)).astype(np.float32)


@dataclass(frozen=True)
class MeetingConfig:
    speakers: int = 4
    duration_s: float = 300.0
    overlap_share: float = 0.1
    """Target share of speech time (the union of all turns) in which two people talk at once, back-channels
    included; 0 gives strict turn-taking. Reached within a few points on meetings of a minute or more."""
    snr_db: float | None = None
    """White noise over the whole recording at this speech-to-noise power ratio; None: no noise."""
    pause_s: tuple[float, float] = (0.2, 1.5)
    """Silence between turns that do not overlap, drawn uniformly from this range."""
    backchannel_share: float = 0.3
    """Of the overlaps the generator adds, the share made by a back-channel ("yeah", "mm-hmm") inside a turn
    rather than by the next speaker starting before the current one has finished."""
    seed: int = 0

    def __post_init__(self) -> None:
        if not 2 <= self.speakers <= len(VOICES):
            raise ValueError(f"speakers must be 2 to {len(VOICES)}, got {self.speakers}")
        if not 60.0 <= self.duration_s <= 1800.0:
            raise ValueError(f"duration_s must be 60 to 1800 (1 to 30 minutes), got {self.duration_s}")
        if not 0.0 <= self.overlap_share <= 0.3:
            raise ValueError(f"overlap_share must be 0 to 0.3, got {self.overlap_share}")
        if not 0.0 <= self.pause_s[0] <= self.pause_s[1]:
            raise ValueError(f"pause_s must be an increasing (low, high) range >= 0, got {self.pause_s}")
        if not 0.0 <= self.backchannel_share <= 1.0:
            raise ValueError(f"backchannel_share must be 0 to 1, got {self.backchannel_share}")
        # NaN would make every sample NaN, and an infinite ratio is no noise (None) or nothing but noise.
        if self.snr_db is not None and not math.isfinite(self.snr_db):
            raise ValueError(f"snr_db must be a finite number of dB (None: no noise), got {self.snr_db}")


@dataclass(frozen=True)
class SyntheticMeeting:
    config: MeetingConfig
    audio: np.ndarray  # mono float32 at SAMPLE_RATE
    turns: list[ReferenceTurn]  # in order of start
    voices: dict[str, Voice]  # speaker name -> voice

    @property
    def duration(self) -> float:
        return len(self.audio) / SAMPLE_RATE

    def as_transcript(self) -> Transcript:
        """The ground truth as a Transcript, for turnscribe's writers and `evaluate`."""
        segments = [Segment(i, t.start, t.end, t.text, t.speaker) for i, t in enumerate(self.turns)]
        return Transcript(segments, list(dict.fromkeys(t.speaker for t in self.turns)), "en", self.duration)


@dataclass(frozen=True)
class MeetingFiles:
    audio: Path
    rttm: Path
    seglst: Path


@dataclass
class _Placed:
    start: int  # samples
    clip: np.ndarray
    speaker: int
    text: str

    @property
    def end(self) -> int:
        return self.start + len(self.clip)


class _Layout:
    """Places turns one after another, adding overlap whenever the overlap so far falls short of the target."""

    def __init__(self, config: MeetingConfig, rng: np.random.Generator, clips: list[dict[str, np.ndarray]]) -> None:
        self.config, self.rng, self.clips = config, rng, clips
        n = config.speakers
        # Some people talk more than others; nobody hardly at all.
        self.weights = np.maximum(rng.dirichlet(np.full(n, 2.0)), 0.5 / n)
        self.sentences = [[t for t in c if t not in BACKCHANNELS] for c in clips]
        self.order = rng.permutation(n)  # everyone speaks early on, in this order
        self.placed: list[_Placed] = []
        self.speech = self.overlap = 0  # samples: sum of turn lengths, and of pairwise overlaps

    def deficit(self) -> float:
        """Overlap (samples) still missing for the target share of the speech so far (speech = union of turns)."""
        return self.config.overlap_share * (self.speech - self.overlap) - self.overlap

    def next_speaker(self, current: int | None, turn: int) -> int:
        n = self.config.speakers
        if turn < n:
            return int(self.order[turn])
        weights = self.weights.copy()
        weights[current] = 0
        return int(self.rng.choice(n, p=weights / weights.sum()))

    def turn_clip(self, speaker: int) -> tuple[np.ndarray, str]:
        """One or two of the speaker's sentences, joined by a short breath."""
        texts = [
            str(t) for t in self.rng.choice(self.sentences[speaker], size=int(self.rng.integers(1, 3)), replace=False)
        ]
        breath = np.zeros(round(0.2 * SAMPLE_RATE), np.float32)
        pieces = [p for t in texts for p in (self.clips[speaker][t], breath)][:-1]
        return np.concatenate(pieces), " ".join(texts)

    def add(self, start: int, clip: np.ndarray, speaker: int, text: str, overlap: int) -> None:
        self.placed.append(_Placed(start, clip, speaker, text))
        self.speech += len(clip)
        self.overlap += overlap

    def samples(self, seconds: float) -> int:
        return round(seconds / GRID_S) * _GRID

    def run(self) -> list[_Placed]:
        cfg, rng = self.config, self.rng
        total, edge = self.samples(cfg.duration_s), self.samples(_EDGE_S)
        speaker = self.next_speaker(None, 0)
        clip, text = self.turn_clip(speaker)
        start, turn = edge, 0
        prev_end = 0  # end of the turn before the current one (it may reach into the current one)
        while start + len(clip) <= total - edge:
            overlap_in = max(prev_end - start, 0)
            self.add(start, clip, speaker, text, overlap_in)
            end = start + len(clip)
            wants_overlap = self.deficit() > self.samples(_MIN_OVERLAP_S)
            if wants_overlap and rng.random() < cfg.backchannel_share:
                self.backchannel(speaker, start, end)
            turn += 1
            nxt = self.next_speaker(speaker, turn)
            nxt_clip, nxt_text = self.turn_clip(nxt)
            # An overlapping start takes at most 40 % of either turn, so no three people ever talk at once.
            room = min(self.samples(2.0), (4 * min(len(clip), len(nxt_clip))) // 10 // _GRID * _GRID)
            ov = min(int(self.deficit()) // _GRID * _GRID, self.samples(rng.uniform(0.5, 2.0)), room)
            if self.deficit() > self.samples(_MIN_OVERLAP_S) and ov >= self.samples(_MIN_OVERLAP_S):
                nxt_start = end - ov
            else:
                nxt_start = end + self.samples(rng.uniform(*cfg.pause_s))
            prev_end, start, speaker, clip, text = end, nxt_start, nxt, nxt_clip, nxt_text
        return sorted(self.placed, key=lambda p: p.start)

    def backchannel(self, speaker: int, start: int, end: int) -> None:
        """A short "yeah" by someone else inside the current turn, clear of its first and last 40 %: those may
        overlap the turns before and after, and a third voice at once is more than the model is built for."""
        other = int(self.rng.choice([s for s in range(self.config.speakers) if s != speaker]))
        word = str(self.rng.choice(BACKCHANNELS))
        clip = self.clips[other][word]
        margin = -(-4 * (end - start) // 10 // _GRID) * _GRID  # 40 %, rounded up to the grid
        first, last = start + margin, end - margin - len(clip)
        if last >= first:
            at = first + int(self.rng.integers((last - first) // _GRID + 1)) * _GRID
            self.add(at, clip, other, word, len(clip))


def generate_meeting(config: MeetingConfig) -> SyntheticMeeting:
    """A meeting as configured: audio and ground truth, identical for identical configs."""
    if not have_espeak():
        raise SynthesisError("synthetic meetings need espeak-ng on PATH (apt-get install espeak-ng)")
    rng = np.random.default_rng([config.seed, 0])
    voices = [VOICES[int(i)] for i in rng.choice(len(VOICES), size=config.speakers, replace=False)]
    pools = [rng.choice(len(SENTENCES), size=_SENTENCES_PER_SPEAKER, replace=False) for _ in voices]
    texts = [[*(SENTENCES[i] for i in pool), *BACKCHANNELS] for pool in pools]
    # espeak-ng runs as a subprocess per clip: threads overlap them.
    with ThreadPoolExecutor(max_workers=8) as executor:
        futures = [{t: executor.submit(_speech_clip, t, v) for t in ts} for v, ts in zip(voices, texts)]
        clips = [{t: f.result() for t, f in speaker.items()} for speaker in futures]
    placed = _Layout(config, rng, clips).run()

    gains = 10 ** (rng.uniform(-3.0, 3.0, size=config.speakers) / 20)  # people are not equally loud
    audio = np.zeros(round(config.duration_s / GRID_S) * _GRID, np.float32)
    speaking = np.zeros(len(audio), bool)
    for p in placed:
        audio[p.start : p.end] += gains[p.speaker] * p.clip
        speaking[p.start : p.end] = True
    if config.snr_db is not None:
        # Its own generator: the same seed gives the same meeting with or without noise.
        noise = np.random.default_rng([config.seed, 1]).standard_normal(len(audio)).astype(np.float32)
        speech_power = float(np.mean(audio[speaking] ** 2))
        audio += noise * np.float32(np.sqrt(speech_power / 10 ** (config.snr_db / 10)))
    names = [f"spk{i + 1}" for i in range(config.speakers)]
    turns = [
        ReferenceTurn(round(p.start / SAMPLE_RATE, 2), round(p.end / SAMPLE_RATE, 2), names[p.speaker], p.text)
        for p in placed
    ]
    return SyntheticMeeting(config, np.clip(audio, -1.0, 1.0), turns, dict(zip(names, voices)))


def write_audio(path: Path, samples: np.ndarray) -> Path:
    """16-bit mono at SAMPLE_RATE through PyAV; the codec follows the name: .flac (FLAC) or .wav (PCM)."""
    codecs = {".flac": "flac", ".wav": "pcm_s16le"}
    codec = codecs.get(path.suffix.lower())
    if codec is None:
        raise ValueError(f"unsupported audio file type {path.suffix!r}; use one of {', '.join(codecs)}")
    pcm = (np.clip(samples, -1.0, 1.0) * 32767).round().astype(np.int16).reshape(1, -1)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=SAMPLE_RATE, layout="mono")
        assert isinstance(stream, av.audio.stream.AudioStream)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return path


def write_meeting(
    meeting: SyntheticMeeting, folder: Path, stem: str = "meeting", audio_format: str = "flac"
) -> MeetingFiles:
    """`<stem>.<audio_format>`, `<stem>.rttm` and `<stem>.seglst.json` in `folder`; the session is `stem`."""
    folder.mkdir(parents=True, exist_ok=True)
    truth = meeting.as_transcript()
    return MeetingFiles(
        audio=write_audio(folder / f"{stem}.{audio_format}", meeting.audio),
        rttm=write(truth, "rttm", folder / f"{stem}.rttm", uri=stem),
        seglst=write(truth, "seglst", folder / f"{stem}.seglst.json", uri=stem),
    )
