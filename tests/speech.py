"""Synthetic speech for tests: espeak-ng voices stand in for distinct speakers."""

from __future__ import annotations

import shutil
import subprocess
import wave
from math import gcd
from pathlib import Path

import numpy as np
from scipy.signal import resample_poly

from turnscribe.types import SAMPLE_RATE


def have_espeak() -> bool:
    return shutil.which("espeak-ng") is not None


def speak(text: str, voice: str, path: Path, *, pitch: int | None = None, speed: int | None = None) -> np.ndarray:
    """Synthesise `text` with espeak-ng into `path` and return it as mono float32 at SAMPLE_RATE."""
    cmd = ["espeak-ng", "-v", voice, "-w", str(path)]
    if pitch is not None:
        cmd += ["-p", str(pitch)]
    if speed is not None:
        cmd += ["-s", str(speed)]
    subprocess.run([*cmd, text], check=True, capture_output=True)
    with wave.open(str(path), "rb") as f:
        rate = f.getframerate()
        pcm = np.frombuffer(f.readframes(f.getnframes()), dtype=np.int16)
    samples = pcm.astype(np.float32) / 32768.0
    # espeak-ng writes 22050 Hz; resample_poly needs the reduced integer ratio.
    g = gcd(SAMPLE_RATE, rate)
    return resample_poly(samples, SAMPLE_RATE // g, rate // g).astype(np.float32)
