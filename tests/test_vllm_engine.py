"""What only real vLLM can show: that it accepts turnscribe's requests and plugin. Skipped where vLLM is not
installed (the reason is shown); `pip install '.[vllm]' pytest` on a Linux machine with an NVIDIA GPU, then
`pytest -m vllm -rs`. The end-to-end test also needs a fixed checkpoint in $TURNSCRIBE_VLLM_CHECKPOINT."""

import os

import pytest

vllm = pytest.importorskip("vllm", reason="vLLM is not installed: pip install '.[vllm]' (Linux, NVIDIA GPU)")

from turnscribe.decoders.base import WindowAudio  # noqa: E402
from turnscribe.decoders.vllm import VllmDecoder, build_requests  # noqa: E402
from turnscribe.parse import parse_window  # noqa: E402
from turnscribe.random_model import noise_windows  # noqa: E402
from turnscribe.vllm_plugin import DiarizedTranscriptionPlugin  # noqa: E402

pytestmark = pytest.mark.vllm
CHECKPOINT = os.environ.get("TURNSCRIBE_VLLM_CHECKPOINT")


def windows(*seconds: float) -> list[WindowAudio]:
    return noise_windows(seconds, level=0.1)


def test_vllm_accepts_the_requests_turnscribe_builds():
    (request,) = build_requests(windows(12.0), [1, 2, 3])
    params = vllm.SamplingParams(**request.sampling_options())
    assert params.temperature == 0.0 and params.repetition_penalty == 1.2 and params.max_tokens == request.max_tokens
    assert params.skip_special_tokens is False and params.spaces_between_special_tokens is False
    from vllm.inputs import TokensPrompt

    assert TokensPrompt(**request.prompt()) == request.prompt()


def test_the_plugin_satisfies_vllms_endpoint_plugin_protocol():
    from vllm.plugins.endpoint_plugins.interface import EndpointPlugin

    assert isinstance(DiarizedTranscriptionPlugin(), EndpointPlugin)


@pytest.mark.skipif(not CHECKPOINT, reason="set TURNSCRIBE_VLLM_CHECKPOINT to a checkpoint fixed with fix-checkpoint")
def test_a_batch_decodes_as_its_windows_do_one_by_one_on_the_real_model():
    decoder = VllmDecoder.from_pretrained(CHECKPOINT, batch_size=4)
    batch = windows(28.0, 9.5, 28.0)
    together = decoder.decode(batch, "en")
    alone = [decoder.decode([w], "en")[0] for w in batch]
    assert together == alone  # greedy decoding: batching must not change a window's tokens
    for w, raw in zip(batch, together):
        parse_window(raw, w.span.duration, w.span.index)  # never raises; here it must at least run on real output
