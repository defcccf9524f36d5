"""Tiny corpora in the on-disk layouts lhotse's AMI and LibriSpeech recipes read, with numpy audio.

AMI: <MEETING>/audio/<MEETING>.Array1-01.wav and ami_public_manual_1.6.2/ with corpusResources/meetings.xml,
segments/<MEETING>.<AGENT>.segments.xml and words/<MEETING>.<AGENT>.words.xml (NXT format, word times spread
evenly over each turn). LibriSpeech: <PART>/<SPEAKER>/<CHAPTER>/<SPEAKER>-<CHAPTER>-<UTT>.flac and
<SPEAKER>-<CHAPTER>.trans.txt.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import soundfile as sf

RATE = 16_000
_NITE = 'xmlns:nite="http://nite.sourceforge.net/"'


@dataclass(frozen=True)
class Turn:
    agent: str  # AMI's per-meeting speaker letter
    start: float
    end: float
    text: str

    def words(self) -> list[tuple[float, float, str]]:
        words = self.text.split()
        step = (self.end - self.start) / len(words)
        return [
            (round(self.start + i * step, 3), round(self.start + (i + 1) * step, 3), w) for i, w in enumerate(words)
        ]


def tone_audio(duration_s: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(round(duration_s * RATE)) / RATE
    return (0.05 * np.sin(2 * np.pi * (150 + 50 * seed) * t) + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


def write_ami(root: Path, meetings: dict[str, tuple[float, list[Turn]]]) -> Path:
    """meetings: id → (duration, turns). Global speaker names are <MEETING>_<AGENT>."""
    annotations = root / "ami_public_manual_1.6.2"
    for sub in ("corpusResources", "segments", "words"):
        (annotations / sub).mkdir(parents=True, exist_ok=True)
    entries = []
    for index, (meeting, (duration, turns)) in enumerate(meetings.items()):
        audio_dir = root / meeting / "audio"
        audio_dir.mkdir(parents=True, exist_ok=True)
        sf.write(audio_dir / f"{meeting}.Array1-01.wav", tone_audio(duration, index), RATE, subtype="PCM_16")
        agents = sorted({t.agent for t in turns})
        speakers = "".join(
            f'<speaker nxt_agent="{a}" global_name="{meeting}_{a}" channel="{i}"/>' for i, a in enumerate(agents)
        )
        entries.append(f'<meeting observation="{meeting}">{speakers}</meeting>')
        for agent in agents:
            mine = [t for t in turns if t.agent == agent]
            segments = "".join(
                f'<segment nite:id="{meeting}.{agent}.s{i}" transcriber_start="{t.start}" transcriber_end="{t.end}"/>'
                for i, t in enumerate(mine)
            )
            (annotations / "segments" / f"{meeting}.{agent}.segments.xml").write_text(
                f"<nite:root {_NITE}>{segments}</nite:root>"
            )
            words = "".join(
                f'<w nite:id="{meeting}.{agent}.w.{i}.{j}" starttime="{s}" endtime="{e}">{escape(w)}</w>'
                for i, t in enumerate(mine)
                for j, (s, e, w) in enumerate(t.words())
            )
            (annotations / "words" / f"{meeting}.{agent}.words.xml").write_text(
                f"<nite:root {_NITE}>{words}</nite:root>"
            )
    (annotations / "corpusResources" / "meetings.xml").write_text(f"<meetings>{''.join(entries)}</meetings>")
    return root


def write_librispeech(root: Path, part: str, utterances: dict[str, list[tuple[float, str]]]) -> Path:
    """utterances: speaker id → [(duration, text)], one chapter per speaker."""
    for s, (speaker, items) in enumerate(utterances.items()):
        chapter = f"{100 + s}"
        folder = root / part / speaker / chapter
        folder.mkdir(parents=True, exist_ok=True)
        lines = []
        for u, (duration, text) in enumerate(items):
            utt = f"{speaker}-{chapter}-{u:04d}"
            sf.write(folder / f"{utt}.flac", tone_audio(duration, 10 * s + u), RATE)
            lines.append(f"{utt} {text}")
        (folder / f"{speaker}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")
    return root
