"""Decoder backends: each turns windows of audio into token streams (see base.Decoder)."""

from .base import Decoder, DecoderError, WindowAudio
from .reference import Imperfections, ReferenceDecoder, ReferenceTurn
from .scripted import ScriptedDecoder

__all__ = [
    "Decoder",
    "DecoderError",
    "Imperfections",
    "ReferenceDecoder",
    "ReferenceTurn",
    "ScriptedDecoder",
    "WindowAudio",
]
