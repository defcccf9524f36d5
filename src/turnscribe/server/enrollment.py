"""Known speakers as OpenAI sends them: `known_speaker_names[]` with `known_speaker_references[]` data URLs.

Checked when a request arrives (so a bad clip is a 400, not a failed job) and decoded again when a job runs,
since jobs store the references as sent.
"""

from __future__ import annotations

import base64
import binascii
import math

import numpy as np

from ..audio import AudioError, load_audio
from ..speakers.names import SpeakerNameError, check_speaker_names
from ..types import SAMPLE_RATE, audible
from .errors import APIError

KNOWN_SPEAKER_SECONDS = (2.0, 10.0)  # OpenAI's bounds for a reference clip
PARAM_NAMES, PARAM_REFERENCES = "known_speaker_names", "known_speaker_references"


def _decode_data_url(url: str, index: int) -> bytes:
    header, comma, payload = url.partition(",")
    if not (comma and header.startswith("data:") and header.endswith(";base64")):
        message = f"{PARAM_REFERENCES}[{index}] must be a base64 data URL (data:audio/wav;base64,...)"
        raise APIError(400, message, param=PARAM_REFERENCES)
    try:
        # Line breaks are valid base64 (RFC 2045, which data URLs use): the `base64` command adds one every 76 chars.
        return base64.b64decode("".join(payload.split()), validate=True)
    except binascii.Error:
        raise APIError(400, f"{PARAM_REFERENCES}[{index}] is not valid base64", param=PARAM_REFERENCES) from None


def read_known_speakers(names: list[str], references: list[str], *, limit: int) -> dict[str, np.ndarray]:
    """Name → reference samples (mono, SAMPLE_RATE), or a 400 that says which field is wrong."""
    if len(names) != len(references):
        raise APIError(
            400,
            f"{len(names)} {PARAM_NAMES} but {len(references)} {PARAM_REFERENCES}; give one of each",
            param=PARAM_NAMES,
        )
    if len(names) > limit:
        raise APIError(400, f"at most {limit} known speakers per request on this server", param=PARAM_NAMES)
    try:
        names = check_speaker_names(names)
    except SpeakerNameError as e:
        raise APIError(400, f"{PARAM_NAMES}: {e}", param=PARAM_NAMES) from None
    low, high = KNOWN_SPEAKER_SECONDS
    speakers = {}
    for i, (name, url) in enumerate(zip(names, references)):
        try:
            # Capped while decoding: a few KB of compressed audio must not decode into hours of samples.
            samples = load_audio(_decode_data_url(url, i), max_seconds=high)
        except AudioError as e:
            raise APIError(400, f"{PARAM_REFERENCES}[{i}]: {e}", param=PARAM_REFERENCES) from None
        seconds = len(samples) / SAMPLE_RATE
        if not low <= seconds <= high:
            # Rounded away from the bound it misses: 1.99 s was reported as "2.0 s long; it must be 2 to 10 s".
            shown = math.floor(seconds * 100) / 100 if seconds < low else math.ceil(seconds * 100) / 100
            raise APIError(
                400,
                f"{PARAM_REFERENCES}[{i}] is {shown:.2f} s long; it must be {low:g} to {high:g} s",
                param=PARAM_REFERENCES,
            )
        if not audible(samples):  # the linker refuses it too, as a failed run
            raise APIError(400, f"{PARAM_REFERENCES}[{i}] is silent: no voice to match", param=PARAM_REFERENCES)
        speakers[name] = samples
    return speakers
