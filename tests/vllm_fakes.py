"""Stand-ins shaped like vLLM 0.33's objects (``LLM``, the async ``EngineClient``, ``RequestOutput``).

They record what turnscribe asks for and answer from a script: they test turnscribe's request construction and
output handling, not vLLM.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tiny_model import build_tokenizer

Answer = Callable[[dict[str, Any]], str]


@dataclass
class Completion:
    text: str


@dataclass
class RequestOutput:
    outputs: list[Completion]


def audio_of(prompt: dict[str, Any]) -> Any:
    samples, rate = prompt["multi_modal_data"]["audio"]
    assert rate == 16_000
    return samples


class FakeLLM:
    """``vllm.LLM``'s shape: ``get_tokenizer()`` and a batched ``generate`` answering in prompt order."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.tokenizer = build_tokenizer()
        self.calls: list[tuple[list[dict[str, Any]], list[Any], bool]] = []

    def get_tokenizer(self) -> Any:
        return self.tokenizer

    def generate(self, prompts: list[dict[str, Any]], sampling_params: list[Any], use_tqdm: bool = True) -> list[Any]:
        self.calls.append((prompts, sampling_params, use_tqdm))
        return [RequestOutput([Completion(self.answer(p))]) for p in prompts]


@dataclass
class FakeRenderer:
    tokenizer: Any

    def get_tokenizer(self) -> Any:
        return self.tokenizer


class FakeEngine:
    """vLLM 0.33's ``EngineClient`` shape: ``renderer.get_tokenizer()``, and ``generate`` yielding cumulative
    outputs."""

    def __init__(self, answer: Answer, steps: int = 3) -> None:
        self.answer = answer
        self.steps = steps
        self.tokenizer = build_tokenizer()
        self.renderer = FakeRenderer(self.tokenizer)
        self.requests: list[tuple[dict[str, Any], Any, str]] = []
        self.in_flight = 0
        self.most_in_flight = 0

    async def generate(self, prompt: dict[str, Any], sampling_params: Any, request_id: str):  # noqa: ANN201
        self.requests.append((prompt, sampling_params, request_id))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            text = self.answer(prompt)
            for step in range(1, self.steps + 1):
                await asyncio.sleep(0)  # let other requests run, as the engine's scheduler does
                yield RequestOutput([Completion(text[: len(text) * step // self.steps])])
        finally:
            self.in_flight -= 1
