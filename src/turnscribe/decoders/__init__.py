"""Decoder backends: each turns windows of audio into token streams (see base.Decoder)."""

from .base import Decoder, DecoderError, WindowAudio
from .reference import ReferenceDecoder, ReferenceTurn
from .scripted import ScriptedDecoder

__all__ = ["Decoder", "DecoderError", "ReferenceDecoder", "ReferenceTurn", "ScriptedDecoder", "WindowAudio"]
