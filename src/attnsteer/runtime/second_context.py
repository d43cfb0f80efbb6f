"""A second context at run time (``at.second_context``; language: :mod:`attnsteer.language.contexts`).

One forward of a cross-attention module with a second-context rule on: the alternative context (the negative
prompt encoded once per session with the pipeline's own text encoder, or the given embeddings, projected by the
model's own text projection, :meth:`Adapter.context_states`) replaces the text part of the module's context in extra
batch rows, one per guided row, and the module runs once on ``[rows, guided rows]``. Its SDPA call with the text
keys returns, for each guided row, ``combine(out_positive, out_negative)`` (heads merged); every other call (Wan
I2V's CLIP-image keys) runs as is, for all rows, so the image attention is added unguided. The extra rows' module
output is dropped. Where the two contexts differ in length the module runs twice instead (the negative rows first,
whose text-call outputs the second, real forward combines with). The model's own q/k/v projections, norms and
``to_out`` do all the work; nothing of the model's code is copied.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch

from ..errors import ConfigError, SteeringError, describe_rule
from ..language.contexts import SecondContext
from . import flash_routing
from .call_state import client_rows, notify, sdpa_arguments
from .hooks import SDPAInterceptor
from .plan import rule_rows

def has_second_context(active: list[tuple[Any, Any]]) -> bool:
    """Whether one of a module call's active rules has a second context."""
    return any(rule.transform.kind == "context" for _, rule in active)


def run(controller: Any, call: Any, module: torch.nn.Module, forward: Callable, args: tuple, kwargs: dict) -> Any:
    """One forward of a cross-attention module under ``call`` (a ModuleCall) with a second-context rule on."""
    (client, rule), *others = call.active
    where = describe_rule(rule, call.layer.qualified)
    if others or call.recorders:
        raise SteeringError(f"{where}: a second context cannot be combined with other cross-attention rules or maps "
                            "in the same module call (they would act on one of its two attention calls only)")
    transform: SecondContext = rule.transform
    bound = inspect.signature(type(module).forward).bind(module, *args, **kwargs)  # hooks wrap module.forward
    del bound.arguments[next(iter(bound.arguments))]
    names = list(bound.arguments)
    if len(names) < 2 or not isinstance(bound.arguments[names[1]], torch.Tensor):
        raise SteeringError(f"{where}: the module was called without a context tensor (its second argument)")
    x, context = bound.arguments[names[0]], bound.arguments[names[1]]
    if any(v is not None for n, v in bound.arguments.items() if n not in names[:2] and isinstance(v, torch.Tensor)):
        raise SteeringError(f"{where}: a second context needs a cross-attention call without a mask or other tensors")
    state = call.state
    branches = controller.adapter.attention_branches(state.branches, x.shape[0])
    try:
        wanted = set(rule_rows(rule, branches, x.shape[0]))
    except ConfigError as exc:
        raise type(exc)(f"{where}: {exc}") from exc
    share = client_rows(client, branches, x.shape[0])
    rows = [r for r in range(x.shape[0]) if r in wanted and (share is None or share[r])]
    if not rows:
        return forward(*args, **kwargs)
    if transform.neutral:  # the combination returns out_positive: the module's own forward is the result
        notify(client, state, call.layer, [rule], None, share)
        return forward(*args, **kwargs)
    text = state.text_length
    if text is None or context.shape[1] < text:
        raise SteeringError(f"{where}: the module's context has {context.shape[1]} tokens, not the forward's "
                            f"{text} text tokens")
    negative = _negative_context(controller, transform, text, where)
    if negative.shape[0] not in (1, len(rows)):
        raise ConfigError(f"{where}: negative_prompt_embeds has {negative.shape[0]} rows for {len(rows)} guided rows "
                          "(give 1, or one per guided row)")
    extra = context[rows, : context.shape[1] - text]  # tokens before the text (Wan I2V's image): as they are
    negative = torch.cat([extra, negative.to(context.dtype).expand(len(rows), -1, -1)], dim=1)
    if extra.shape[1] and negative.shape[1] != context.shape[1]:
        raise SteeringError(f"{where}: the negative context has {negative.shape[1] - extra.shape[1]} text tokens but "
                            f"the prompt {text}; with image tokens in the context both must have the same length")
    if extra.shape[1] == text:
        raise SteeringError(f"{where}: image and text contexts both have {text} tokens, so their attention calls "
                            "cannot be told apart")
    handler = _Calls(transform.combine, rows, x.shape[0], text, negative.shape[1] - extra.shape[1], where)
    with flash_routing.steered_forward(where):
        if negative.shape[1] == context.shape[1]:
            handler.mode = "batched"
            with SDPAInterceptor(handler):
                output = _call(forward, bound, names, torch.cat([x, x[rows]]), torch.cat([context, negative]))
            output = _first_rows(output, x.shape[0], where)
        else:
            handler.mode = "capture"
            with SDPAInterceptor(handler):
                _call(forward, bound, names, x[rows], negative)
            handler.mode = "combine"
            with SDPAInterceptor(handler):
                output = forward(*args, **kwargs)
    handler.check()
    notify(client, state, call.layer, [rule], None, share)
    return output


class _Calls:
    """The SDPA handler of the module forward(s): text-key calls combined, the rest as they are."""

    def __init__(self, combine: Callable, rows: list[int], batch: int, text: int, negative_text: int,
                 where: str) -> None:
        self.combine, self.rows, self.batch, self.where = combine, rows, batch, where
        self.text, self.negative_text = text, negative_text
        self.mode = "batched"
        self.captured: list[torch.Tensor] = []
        self.combined = 0

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        q, k = sdpa_arguments(args, kwargs)[:2]
        out = flash_routing.unsteered(args, kwargs)
        keys = self.negative_text if self.mode == "capture" else self.text
        if k.shape[-2] != keys:
            return out
        if self.mode == "capture":
            self.captured.append(out)
            return out
        if self.mode == "batched":
            positive, negative = out[self.rows], out[self.batch:]
        else:
            if self.combined >= len(self.captured):
                raise SteeringError(f"{self.where}: the module made more text-attention calls than its negative pass")
            positive, negative = out[self.rows], self.captured[self.combined]
        self.combined += 1
        merged = self.combine(_merge(positive), _merge(negative))
        if merged.shape != _merge(positive).shape:
            raise SteeringError(f"{self.where}: the combination returned shape {tuple(merged.shape)} for outputs of "
                                f"shape {tuple(_merge(positive).shape)}")
        out = out.clone()
        out[self.rows] = merged.unflatten(2, (q.shape[1], -1)).transpose(1, 2).to(out.dtype)
        return out

    def check(self) -> None:
        if not self.combined:
            raise SteeringError(f"{self.where}: the module made no attention call with the {self.text} text keys, so "
                                "the second context was not applied")


def _merge(out: torch.Tensor) -> torch.Tensor:
    """[B, H, N, D] -> [B, N, H*D] (heads merged, as the module's output projection sees them)."""
    return out.transpose(1, 2).flatten(2)


def _call(forward: Callable, bound: inspect.BoundArguments, names: list[str], x: torch.Tensor,
          context: torch.Tensor) -> Any:
    arguments = dict(bound.arguments)
    arguments[names[0]], arguments[names[1]] = x, context
    return forward(**arguments)


def _first_rows(output: Any, batch: int, where: str) -> Any:
    if isinstance(output, torch.Tensor):
        return output[:batch]
    if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
        return (output[0][:batch], *output[1:])
    raise SteeringError(f"{where}: the module returned a {type(output).__name__}, not a tensor of its batch rows")


def _negative_context(controller: Any, transform: SecondContext, length: int, where: str) -> torch.Tensor:
    """The alternative context as the module receives it, encoded and projected once per session and model."""
    cache = controller.call_cache.contexts
    key = (id(transform), length)
    if key not in cache:
        embeds = transform.negative_prompt_embeds
        if embeds is None:
            embeds = encode_prompt(controller.steps.pipeline, transform.negative_prompt or "", length, controller.model,
                                   where)
        with torch.no_grad():
            try:
                cache[key] = controller.adapter.context_states(controller.model, embeds)
            except SteeringError as exc:
                raise SteeringError(f"{where}: {exc}") from exc
    return cache[key]


def encode_prompt(pipeline: Any, prompt: str, length: int, model: torch.nn.Module, where: str) -> torch.Tensor:
    """``prompt`` through the pipeline's own ``encode_prompt`` (its text encoder), padded as its prompts are."""
    encode = getattr(pipeline, "encode_prompt", None)
    if pipeline is None or encode is None or getattr(pipeline, "text_encoder", True) is None:
        owner = "a bare model" if pipeline is None else f"{type(pipeline).__name__} without a text encoder"
        raise ConfigError(f"{where}: negative_prompt={prompt!r} is encoded with the pipeline's text encoder, but the "
                          f"session steers {owner}; pass negative_prompt_embeds=... (the text encoder's output)")
    parameter = next(model.parameters())
    offered = dict(do_classifier_free_guidance=False, num_videos_per_prompt=1, max_sequence_length=length,
                   device=parameter.device, dtype=parameter.dtype)
    accepted = inspect.signature(encode).parameters
    with torch.no_grad():
        out = encode(prompt=prompt, **{k: v for k, v in offered.items() if k in accepted})
    return out[0] if isinstance(out, (tuple, list)) else out
