"""The encoder→decoder projection once per window instead of at every decoding step.

transformers' `CohereAsrDecoder.forward` starts with `encoder_hidden_states = self.proj(encoder_hidden_states)`
(a 1280→1024 linear layer over every encoded frame), and `generate()` calls it at every step with the
encoder's raw output. Only the first step uses the result: the cross-attention keys and values are computed from
it once and cached (`EncoderDecoderCache.is_updated`), later steps read nothing but its shape. On the full-size
model that is ~350 frames × 1280 × 1024 multiply-adds per window per step, about 3.4× the rest of a decoding
step's arithmetic (benchmarks/cross_projection.py measures what it costs).

The fix needs no change to transformers and no shared state: `encode_projected` runs the encoder and the
projection once, and `generate()` gets those outputs on a `ProjectedView` of the model, a shallow copy of the
three modules between the top and `decoder.proj` whose `proj` is an identity. The view shares every other module
and every weight with the model, which it leaves untouched, so decoders sharing one loaded model (or training it)
see no difference; the view's own state (generate()'s compiled step) is the view's.
"""

from __future__ import annotations

import copy
from typing import Any

# Attributes generate() caches on the instance it runs on: a view starts without the model's.
_PER_INSTANCE = ("_compiled_call", "_last_compile_config")


def supports(model: Any) -> bool:
    """Whether `model` is transformers' CohereAsr with the per-step projection (not remote code, not another
    layout): the top's `model`, its `encoder`, its `decoder`, and the decoder's linear `proj`."""
    import torch

    inner = getattr(model, "model", None)
    decoder = getattr(inner, "decoder", None)
    return (
        type(model).__module__.startswith("transformers.models.cohere_asr.")
        and isinstance(getattr(inner, "encoder", None), torch.nn.Module)
        and isinstance(getattr(decoder, "proj", None), torch.nn.Linear)
    )


def encode_projected(model: Any, input_features: Any, attention_mask: Any, **encoder_kwargs: Any) -> Any:
    """The encoder's outputs (as generate() would compute them) with `last_hidden_state` already projected to the
    decoder's width: what `ProjectedView.module.generate(encoder_outputs=...)` takes."""
    outputs = model.get_encoder()(
        input_features=input_features, attention_mask=attention_mask, return_dict=True, **encoder_kwargs
    )
    outputs.last_hidden_state = model.model.decoder.proj(outputs.last_hidden_state)
    return outputs


class ProjectedView:
    """`module`: the model with `model.decoder.proj` an identity, sharing everything else with `model`.

    `current()` says whether it still mirrors the model (same submodules, same train/eval flags); if the model
    changes after the view was made (a submodule replaced, `train()`), make a new view."""

    def __init__(self, model: Any) -> None:
        import torch

        self.source = model
        top, inner, decoder = (_shallow_copy(m) for m in (model, model.model, model.model.decoder))
        decoder._modules["proj"] = torch.nn.Identity()
        inner._modules["decoder"] = decoder
        top._modules["model"] = inner
        self.module = top

    def current(self) -> bool:
        pairs = (
            (self.module, self.source, "model"),
            (self.module.model, self.source.model, "decoder"),
            (self.module.model.decoder, self.source.model.decoder, "proj"),
        )
        return all(
            view.training == source.training
            and view._modules.keys() == source._modules.keys()
            and all(view._modules[k] is m for k, m in source._modules.items() if k != replaced)
            for view, source, replaced in pairs
        )


def _shallow_copy(module: Any) -> Any:
    """A new module object with the same attributes, its own `_modules` dict (children shared, replaceable)."""
    clone = copy.copy(module)
    clone._modules = dict(module._modules)
    for name in _PER_INSTANCE:
        clone.__dict__.pop(name, None)
    return clone
