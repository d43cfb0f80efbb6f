"""Which batch rows of a forward belong to which classifier-free-guidance branch.

Pipelines either run one forward per branch under ``cache_context("cond")`` / ``("uncond")``
(Wan, HunyuanVideo 1.5 guiders: "pred_cond" / "pred_uncond"), or batch both branches in one forward
as [uncond, cond] under "cond_uncond" or no context (CogVideoX, LTX-Video; the rule diffusers'
own FasterCache uses: rows [B/2:] are conditional). An adapter declares its family's convention by
name (``branches = "batched-uncond-cond"``); :data:`CONVENTIONS` holds the known ones.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import ConfigError, SteeringError

COND_CONTEXTS = ("cond", "pred_cond")
UNCOND_CONTEXTS = ("uncond", "pred_uncond")
BATCHED_CONTEXTS = ("cond_uncond", None)
FORWARD_ORDER = ("cond", "uncond")  # branches of the forwards a "forward-order" pipeline makes on one latent input

RowBranches = tuple[str, ...] | None
# (adapter, model, inputs, cache context, batch size, pipeline) -> the branch of each batch row, or None if unknown
BranchFunction = Callable[[Any, Any, Mapping[str, Any], "str | None", int, Any], RowBranches]


def guidance_is_on(pipeline: Any) -> bool | None:
    """Whether the pipeline runs classifier-free guidance in this call (None if it does not say).

    Most pipelines expose ``do_classifier_free_guidance``; CogVideoX keeps it local and only
    stores ``_guidance_scale``.
    """
    if pipeline is None:
        return None
    for attr in ("do_classifier_free_guidance", "do_true_cfg"):
        try:
            value = getattr(pipeline, attr, None)
        except (AttributeError, TypeError):  # properties that read state set only inside __call__
            continue
        if value is not None:
            return bool(value)
    scale = getattr(pipeline, "_guidance_scale", None)
    if isinstance(scale, (int, float)) and not isinstance(scale, bool):
        return scale > 1.0
    return None


def named_branch(context: str | None, batch_size: int) -> RowBranches:
    """The whole batch's branch when the cache context names one ("cond", "pred_uncond", ...), else None."""
    if context in COND_CONTEXTS:
        return ("cond",) * batch_size
    if context in UNCOND_CONTEXTS:
        return ("uncond",) * batch_size
    return None


def branches_from_context(context: str | None, batch_size: int, pipeline: Any, batched: bool = True) -> RowBranches:
    """Per-row branches from the cache-context name; None where they cannot be told. ``batched``: a
    "cond_uncond" context or none means the batch is [uncond, cond] while guidance is on."""
    named = named_branch(context, batch_size)
    if named is not None or context not in BATCHED_CONTEXTS:
        return named
    guided = guidance_is_on(pipeline)
    if guided is False:
        return ("cond",) * batch_size
    if batched and guided and batch_size % 2 == 0:
        half = batch_size // 2
        return ("uncond",) * half + ("cond",) * half
    return None


def _from_context(adapter, model, inputs, context, batch_size, pipeline) -> RowBranches:
    return branches_from_context(context, batch_size, pipeline)


def _separate(adapter, model, inputs, context, batch_size, pipeline) -> RowBranches:
    return branches_from_context(context, batch_size, pipeline, batched=False)


def _forward_order(adapter, model, inputs, context, batch_size, pipeline) -> RowBranches:
    """A context, when set, wins; otherwise the n-th forward on one ``hidden_states`` tensor is FORWARD_ORDER[n]."""
    if context is not None:
        return branches_from_context(context, batch_size, pipeline)
    hidden_states = inputs["hidden_states"]
    state = adapter.__dict__.setdefault("_forward_order", {"input": None, "repeats": 0})
    if state["input"] is not None and state["input"]() is hidden_states:
        state["repeats"] += 1
    else:
        state["input"], state["repeats"] = weakref.ref(hidden_states), 0
    if state["repeats"] >= len(FORWARD_ORDER):
        return None  # more forwards on one input than the pipelines make: do not guess
    return (FORWARD_ORDER[state["repeats"]],) * batch_size


def _step_order(adapter, model, inputs, context, batch_size, pipeline) -> RowBranches:
    """A context, when set, wins; otherwise, while guidance is on, the forwards at one timestep alternate
    FORWARD_ORDER (conditional first), whatever their latent input tensors."""
    if context is not None:
        return branches_from_context(context, batch_size, pipeline)
    guided = guidance_is_on(pipeline)
    if guided is False:
        return ("cond",) * batch_size
    timestep = adapter.timestep(model, inputs)
    if guided is None or timestep is None:
        return None
    state = adapter.__dict__.setdefault("_step_order", {"timestep": None, "forwards": 0})
    if state["timestep"] == timestep:
        state["forwards"] += 1
    else:
        state["timestep"], state["forwards"] = timestep, 0
    return (FORWARD_ORDER[state["forwards"] % len(FORWARD_ORDER)],) * batch_size


def _cond_only(adapter, model, inputs, context, batch_size, pipeline) -> RowBranches:
    return named_branch(context, batch_size) or ("cond",) * batch_size


class BranchConvention:
    """A named guidance-branch convention, declared on an adapter class as ``branches = "<name>"``.

    Read on the class it is this object (``name``, ``description``; equal to its name); read on an
    adapter it is the per-forward function ``adapter.branches(model, inputs, context, batch_size,
    pipeline) -> ("uncond", "cond", ...) or None``. An adapter with other needs defines a method
    ``branches`` with that signature instead.
    """

    def __init__(self, name: str, description: str, rows: BranchFunction) -> None:
        self.name, self.description, self._rows = name, description, rows

    def __get__(self, adapter: Any, owner: type | None = None) -> Any:
        return self if adapter is None else functools.partial(self._rows, adapter)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, BranchConvention):
            return other.name == self.name
        return other == self.name

    def __hash__(self) -> int:
        return hash(self.name)

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"BranchConvention({self.name!r})"


CONVENTIONS = {c.name: c for c in (
    BranchConvention("context", "read from the cache context: 'cond'/'uncond' ('pred_cond'/'pred_uncond') name the "
                     "whole batch, 'cond_uncond' or none means [uncond, cond] while guidance is on", _from_context),
    BranchConvention("separate-forwards", "one forward per branch under cache_context('cond'/'uncond') or the "
                     "guider's 'pred_cond'/'pred_uncond'", _separate),
    BranchConvention("batched-uncond-cond", "one forward, batch [uncond, cond] ('cond_uncond' context or none); "
                     "every row conditional while guidance is off", _from_context),
    BranchConvention("forward-order", "no context: the first forward on a latent input is conditional, a second "
                     "forward on that very tensor (true CFG) unconditional", _forward_order),
    BranchConvention("step-order", "no context: while guidance is on, the first forward at a step's timestep is "
                     "conditional and the second one unconditional (their latent inputs may differ)", _step_order),
    BranchConvention("cond-only", "no classifier-free guidance (guidance-distilled): every row conditional",
                     _cond_only),
)}


def convention(name: object, owner: str) -> BranchConvention:
    """The convention called ``name``; ``owner`` names the declaring class in the error."""
    if isinstance(name, BranchConvention):
        return name
    if name not in CONVENTIONS:
        raise ConfigError(f"{owner}.branches must be one of {sorted(CONVENTIONS)} (or a method), got {name!r}")
    return CONVENTIONS[name]  # type: ignore[index]


def item_of_rows(branches: RowBranches, batch_size: int, count: int) -> tuple[int, ...]:
    """Which of ``count`` batched items (prompts repeated in one pipeline call) each attention row
    belongs to: within each branch, the k-th row is item k (rows [uncond x n, cond x n] of a batched
    forward, or n rows of one branch's separate forward). Raises where the rows do not split that way
    (a model folding frames or condition images into the batch, or an unknown mix of branches)."""
    labels = branches if branches is not None else ("unknown",) * batch_size
    if len(labels) != batch_size:
        raise ConfigError(f"{len(labels)} branch labels for an attention batch of {batch_size}")
    seen: dict[str, int] = {}
    items = []
    for label in labels:
        items.append(seen.get(label, 0))
        seen[label] = items[-1] + 1
    if any(n != count for n in seen.values()):
        raise SteeringError(
            f"a batched run of {count} items met an attention batch of {batch_size} rows with branches "
            f"{dict(seen)} per branch; it cannot tell which item each row belongs to (the model folds other axes "
            "into the batch, or the branch of each row is unknown), so it cannot batch exactly: run the values "
            "sequentially (no --batch)"
        )
    return tuple(items)
