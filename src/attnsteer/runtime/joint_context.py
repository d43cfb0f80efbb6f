"""A second context on a joint-attention family: NAG's SD3-style joint variant at run time (CogVideoX).

Where the text sits in the self-attention sequence there is no cross-attention context to replace; the authors' SD3
processor (``attention_joint_nag.py``) instead carries the negative prompt's own text stream through every block as
extra batch rows, and in each joint attention tiles the conditional rows' image queries, keys and values onto those
rows: ``Zp`` and ``Zn`` are the image rows' outputs of the conditional and the negative rows, ``combine(Zp, Zn)``
replaces ``Zp`` before ``to_out``, the negative rows' image outputs are dropped and their text outputs go on to the
next block. Here: a pre-hook of the transformer (the controller's) appends one row per guided row (its inputs, with
the negative prompt's embeddings as its text), each self-attention's SDPA call overwrites the extra rows' video
queries/keys/values with the guided rows' (CogVideoX runs its blocks on both streams in one batch, so the extra rows'
video stream exists but is never read) and combines the guided rows' video outputs, and the transformer's output
loses the extra rows. The model's own projections, norms, RoPE and ``to_out`` do the work; nothing is copied.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import attrs
import torch
import torch.nn.functional as F

from ..errors import ConfigError, SteeringError, describe_rule
from ..language.contexts import NagCombine
from . import flash_routing
from .call_state import client_rows, notify, sdpa_arguments
from .guidance import first_tensor, replace_first_tensor
from .hooks import SDPAInterceptor
from .plan import rule_rows
from .second_context import encode_prompt

JOINT_FAMILIES = ("cogvideox",)  # text first in one joint sequence, one batch for both streams in every block


@attrs.frozen
class JointForward:
    """One transformer forward with the joint variant on: the rule, its client, the guided rows and the sizes."""

    client: Any
    rule: Any
    combine: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    rows: tuple[int, ...]
    batch: int  # the forward's own rows; the extra ones follow, one per guided row
    text: int  # text tokens at the start of the joint sequence
    share: tuple[bool, ...] | None


def check_host(cross: list[Any], adapter: Any, model: torch.nn.Module) -> None:
    """At attach: cross-attention rules need cross-attention modules, except second contexts on a joint family the
    joint variant is built for."""
    if not cross or adapter.cross_attention_modules(model):
        return
    plain = [r for r in cross if r.transform.kind != "context"]
    if plain:
        raise SteeringError(
            f"{describe_rule(plain[0], None)}: the adapter {type(adapter).__name__} declares no cross-attention "
            f"modules of {type(model).__name__} (Adapter.cross_attention, a regex on module names); where the "
            "text sits in the self-attention sequence, use attention='self' with at.text / at.words"
        )
    if adapter.family not in JOINT_FAMILIES or adapter.text != "joint-before":
        raise SteeringError(
            f"{describe_rule(cross[0], None)}: {type(model).__name__} ({adapter.family}) has no separate text "
            "cross-attention modules (its text sits in the joint self-attention sequence), and NAG's joint variant "
            f"(the negative prompt's own text stream through every block) is built for {', '.join(JOINT_FAMILIES)} "
            "only")


def extend(controller: Any, model: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    """The transformer's inputs with one extra row per guided row (the negative prompt as its text), or None."""
    controller.joint_forward = None
    state, adapter = controller.state, controller.adapter
    if state is None or adapter.family not in JOINT_FAMILIES:
        return None
    found = [(c, r) for c in controller.clients for r in c.rules if r.transform.kind == "context"]
    if not found:
        return None
    if len(found) > 1:
        raise SteeringError(f"{describe_rule(found[1][1], None)}: one second-context rule per joint-attention model "
                            f"(another is on: {describe_rule(found[0][1], None)})")
    client, rule = found[0]
    where = describe_rule(rule, None)
    if not rule.when.active(state.step):
        return None
    bound = inspect.signature(type(model).forward).bind(model, *args, **kwargs)
    inputs = dict(list(bound.arguments.items())[1:])
    hidden, context = inputs.get("hidden_states"), inputs.get("encoder_hidden_states")
    if not isinstance(hidden, torch.Tensor) or not isinstance(context, torch.Tensor):
        raise SteeringError(f"{where}: the transformer was called without hidden_states and encoder_hidden_states")
    batch = hidden.shape[0]
    try:
        wanted = set(rule_rows(rule, state.branches, batch))
    except ConfigError as exc:
        raise type(exc)(f"{where}: {exc}") from exc
    share = client_rows(client, state.branches, batch)
    rows = tuple(r for r in range(batch) if r in wanted and (share is None or share[r]))
    if not rows:
        return None
    if rule.transform.neutral:  # the combination returns Zp: the forward runs as is, the rule counts as applied
        for kind, layer in controller.layers:
            if kind == "self" and rule.matches_layer(layer.index, layer.names, layer.model):
                notify(client, state, layer, [rule], None, share)
        return None
    if any(getattr(c, "guidance", None) is not None for c in controller.clients):
        raise SteeringError(f"{where}: NAG's joint variant adds batch rows to every forward, which perturbed guidance "
                            "(PAG, STG) in the same session set cannot share; steer them in separate runs")
    negative = _negative(controller, rule.transform, context, where)
    if negative.shape[0] not in (1, len(rows)):
        raise ConfigError(f"{where}: negative_prompt_embeds has {negative.shape[0]} rows for {len(rows)} guided rows "
                          "(give 1, or one per guided row)")
    for name, value in inputs.items():
        if isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == batch:
            inputs[name] = torch.cat([value, value[list(rows)]])
    inputs["encoder_hidden_states"] = torch.cat([context, negative.expand(len(rows), -1, -1)])
    combine = rule.transform.combine
    if isinstance(combine, NagCombine) and combine.eps is None:
        combine = attrs.evolve(combine, eps="sd3")  # the authors' joint processor's eps
    controller.joint_forward = JointForward(client, rule, combine, rows, batch, context.shape[1], share)
    return (), inputs


def trim(controller: Any, output: Any) -> Any:
    """The transformer's output without the extra rows (as it is where the joint variant was off)."""
    joint = controller.joint_forward
    if joint is None:
        return output
    controller.joint_forward = None
    return replace_first_tensor(output, first_tensor(output)[: joint.batch])


def run(controller: Any, layer: Any, module: torch.nn.Module, forward: Callable, args: tuple, kwargs: dict) -> Any:
    """One forward of a self-attention module in a forward with extra rows: tiled video rows, combined outputs."""
    joint: JointForward = controller.joint_forward
    where = describe_rule(joint.rule, layer.qualified)
    if controller.begin_attention(layer, "self", module) is not None:
        raise SteeringError(f"{where}: NAG's joint variant runs extra batch rows through this module, so other "
                            "self-attention rules or recordings cannot act in the same call; steer them separately")
    on = joint.rule.matches_layer(layer.index, layer.names, layer.model)
    handler = _JointCall(joint, joint.combine if on else None, where)
    with SDPAInterceptor(handler), flash_routing.steered_forward(where):
        output = forward(*args, **kwargs)
    if not handler.calls:
        raise SteeringError(f"{where}: the module made no attention call, so the negative rows saw no video")
    if on:
        notify(joint.client, controller.state, layer, [joint.rule], None, joint.share)
    return output


class _JointCall:
    """The SDPA handler of one self-attention module: the authors' tiling and combination on the video tokens."""

    def __init__(self, joint: JointForward, combine: Callable | None, where: str) -> None:
        self.joint, self.combine, self.where = joint, combine, where
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        q, k, v, mask, dropout, causal, scale, gqa = sdpa_arguments(args, kwargs)
        joint = self.joint
        rows, batch, text = list(joint.rows), joint.batch, joint.text
        if q.shape[0] != batch + len(rows) or mask is not None or causal or q.shape[-2] != k.shape[-2] or gqa:
            raise SteeringError(f"{self.where}: expected one joint self-attention call over {batch + len(rows)} rows "
                                f"without a mask, got query {tuple(q.shape)}, key {tuple(k.shape)}, mask "
                                f"{None if mask is None else tuple(mask.shape)}, is_causal={causal}")
        q, k, v = (_tiled(t, rows, batch, text) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=scale)
        self.calls += 1
        if self.combine is None:
            return out
        positive, negative = _merge(out[rows, :, text:]), _merge(out[batch:, :, text:])
        merged = self.combine(positive, negative)
        if merged.shape != positive.shape:
            raise SteeringError(f"{self.where}: the combination returned shape {tuple(merged.shape)} for outputs of "
                                f"shape {tuple(positive.shape)}")
        out = out.clone()
        out[rows, :, text:] = merged.unflatten(2, (q.shape[1], -1)).transpose(1, 2).to(out.dtype)
        return out


def _tiled(t: torch.Tensor, rows: list[int], batch: int, text: int) -> torch.Tensor:
    """``t`` [B + n, H, L, D] with the extra rows' video tokens replaced by the guided rows' (the authors' tiling)."""
    t = t.clone()
    t[batch:, :, text:] = t[rows, :, text:]
    return t


def _merge(out: torch.Tensor) -> torch.Tensor:
    """[B, H, N, D] -> [B, N, H*D] (heads merged, as the module's output projection sees them)."""
    return out.transpose(1, 2).flatten(2)


def _negative(controller: Any, transform: Any, context: torch.Tensor, where: str) -> torch.Tensor:
    """The negative prompt as the transformer's input (the text encoder's output), encoded once per session."""
    length = context.shape[1]
    key = ("joint", id(transform), length)
    cache = controller.call_cache.contexts
    if key not in cache:
        embeds = transform.negative_prompt_embeds
        if embeds is None:
            embeds = encode_prompt(controller.steps.pipeline, transform.negative_prompt or "", length,
                                   controller.model, where)
        cache[key] = embeds
    negative = cache[key].to(device=context.device, dtype=context.dtype)
    if negative.shape[1:] != context.shape[1:]:
        raise ConfigError(f"{where}: the negative prompt's embeddings have shape {tuple(negative.shape[1:])}, the "
                          f"prompt's {tuple(context.shape[1:])}; on a joint-attention model both must match (the "
                          "authors pad both prompts to one length)")
    return negative
