"""Steered calls on the user's own attention backend (a diffusers dispatcher backend other than the native family).

For each such call the dispatcher router (:mod:`attnsteer.runtime.dispatch_routing`) opens a :class:`BackendCall`
that says how attnsteer may use the backend, and the kernels consult it:

- A backend that returns the log-sum-exp (flash, flash_hub, _flash_3_hub, sage, sage_hub, a registered one whose
  signature takes ``return_lse``): the grouped kernel's calls per key class run on it with ``return_lse=True`` and
  are merged in float32 by log-sum-exp (exact relative to the backend), and frame maps come from those
  log-sum-exps. ``flex`` is called as torch's ``flex_attention`` directly: diffusers 0.42.1's flex wrapper
  permutes the ``(out, lse)`` tuple that ``return_lse=True`` gives.
- Sage smooths K by subtracting its mean over the keys of the call. A class call would subtract the class's own
  mean, which moves that class's log-sum-exp by ``scale * q . mean_c`` (where Sage does not add it back): each
  class's keys are moved so that their mean is the whole call's, and the known move is taken off the log-sum-exp,
  so every class keeps the same shift and the merge cancels it.
- Score-function rules run on ``flex`` as a ``score_mod`` of torch's ``flex_attention``; elsewhere attnsteer's own
  score path runs them, with one warning per backend.
- A backend that cannot return the log-sum-exp (``NO_LSE``), or that refuses the call's mask (``NO_MASK``): the
  steered call runs attnsteer's own kernel. Calls no rule changes stay on the backend in every case.

:func:`how` tells the session's summary which of the two computed the call: ``"backend"`` or ``"attnsteer"``.
"""

from __future__ import annotations

import contextlib
import contextvars
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import torch

from ..errors import AttnsteerWarning
from ..kernels.backends import LseKernel

NO_LSE = frozenset({"_native_efficient", "_native_math", "xformers", "sage_varlen", "flash_varlen", "flash_varlen_hub",
                    "_flash_varlen_3", "_flash_3_varlen_hub", "_native_npu", "_native_xla"})
SAGE = ("sage", "_sage")  # name prefixes of the backends that smooth K by its mean
NO_MASK = ("sage", "_sage", "flash", "_flash", "aiter")  # name prefixes of the backends that refuse attn_mask
BACKEND, ATTNSTEER = "backend", "attnsteer"

_CALL: contextvars.ContextVar[BackendCall | None] = contextvars.ContextVar("attnsteer_backend_call", default=None)
_WARNED: set[str] = set()  # backends whose score-function rules ran on attnsteer's score path (warned once each)


@attrs.define
class BackendCall:
    """One dispatcher call being answered: its backend, the per-class kernel on it (None: attnsteer's kernel for
    steered calls), and who computed it so far."""

    name: str
    lse: LseKernel | None
    ran: str = ATTNSTEER
    native: bool = False  # a native-family backend: SDPA is the backend, attnsteer's kernels run on it


@contextlib.contextmanager
def answering(call: BackendCall) -> Iterator[None]:
    """``call`` is the dispatcher call being answered inside the block."""
    token = _CALL.set(call)
    try:
        yield
    finally:
        _CALL.reset(token)


def current() -> BackendCall | None:
    return _CALL.get()


def how() -> str:
    """Who computed the attention call just answered: ``"backend"`` (the user's) or ``"attnsteer"`` (its kernel)."""
    call = _CALL.get()
    return ATTNSTEER if call is None else call.ran


def ran_on_backend() -> None:
    """The user's backend computed (part of) the call being answered."""
    call = _CALL.get()
    if call is not None:
        call.ran = BACKEND


def for_dispatch(dispatcher: Callable, name: str, backend: Any, key: torch.Tensor, mask: torch.Tensor | None,
                 lse_args: bool) -> BackendCall:
    """The :class:`BackendCall` of a dispatcher call on backend ``name`` (``backend``: the argument as given) with
    keys ``key`` [B, N, H, D] (heads repeated to the queries'); ``lse_args``: its function takes ``return_lse``."""
    if name in NO_LSE or (mask is not None and name.startswith(NO_MASK)):
        return BackendCall(name, None)
    if name == "flex":
        return BackendCall(name, flex_lse)
    if not lse_args:
        return BackendCall(name, None)
    work = torch.promote_types(key.dtype, torch.float32)
    mean = key.transpose(1, 2).to(work).mean(-2, keepdim=True) if name.startswith(SAGE) else None
    return BackendCall(name, dispatcher_lse(dispatcher, backend, mean))


def dispatcher_lse(dispatcher: Callable, backend: Any, key_mean: torch.Tensor | None = None) -> LseKernel:
    """The per-class kernel that calls ``dispatcher`` on ``backend`` with ``return_lse=True`` ([B, H, N, D] in and
    out, lse [B, H, N] float32). ``key_mean`` [B, H, 1, D]: the whole call's mean key, for a backend that smooths K."""

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, mask: torch.Tensor | None = None):
        shift = None
        if key_mean is not None:  # move the class's keys to the call's mean; its logits move by scale * q . move
            work = torch.promote_types(k.dtype, torch.float32)
            move = key_mean.to(work) - k.to(work).mean(-2, keepdim=True)
            k = (k.to(work) + move).to(k.dtype)
            shift = (q.to(work) @ move.transpose(-1, -2)).squeeze(-1) * scale
        out, lse = dispatcher(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, scale=scale,
                              attention_kwargs={"return_lse": True}, backend=backend)
        ran_on_backend()
        lse = heads_first_lse(lse, q.shape)
        lse = lse.to(torch.promote_types(lse.dtype, torch.float32))
        return out.transpose(1, 2), (lse if shift is None else lse - shift.to(lse.dtype))

    return attend


def heads_first_lse(lse: torch.Tensor, q_shape: torch.Size) -> torch.Tensor:
    """A backend's log-sum-exp as [B, H, N]: flash-attn and Sage give [B, H, N], diffusers' context-parallel ops
    [B, N, H] (where N == H the libraries' own [B, H, N] is assumed)."""
    b, h, n = q_shape[0], q_shape[1], q_shape[2]
    if tuple(lse.shape) == (b, h, n):
        return lse
    if tuple(lse.shape) == (b, n, h):
        return lse.transpose(1, 2)
    raise ValueError(f"the backend returned a log-sum-exp of shape {tuple(lse.shape)}; expected [B, H, N] = "
                     f"{[b, h, n]} or [B, N, H]")


def flex_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, mask: torch.Tensor | None = None):
    """One class call on torch's ``flex_attention`` with ``return_lse=True`` (the mask as a ``score_mod``)."""
    from torch.nn.attention.flex_attention import flex_attention

    score_mod = None
    if mask is not None:
        full = mask.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])

        def score_mod(score, b, h, q_idx, kv_idx):
            return score + full[b, h, q_idx, kv_idx]

    try:  # torch >= 2.9 asks for the log-sum-exp through return_aux (return_lse is deprecated there)
        from torch.nn.attention.flex_attention import AuxRequest
    except ImportError:
        out, lse = flex_attention(q, k, v, score_mod=score_mod, scale=scale, return_lse=True)
    else:
        out, aux = flex_attention(q, k, v, score_mod=score_mod, scale=scale, return_aux=AuxRequest(lse=True))
        lse = aux.lse
    ran_on_backend()
    return out, lse.to(torch.promote_types(lse.dtype, torch.float32))


def flex_scored(selections, head_offset: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                mask: torch.Tensor | None) -> torch.Tensor | None:
    """A score-function call on the user's backend where it is ``flex`` (torch's ``flex_attention`` with the rules
    as its ``score_mod``), else None; warns once per other backend that attnsteer's score path runs instead."""
    call = _CALL.get()
    if call is None or call.native:
        return None
    if call.name != "flex" or any(s.rule.pairs is not None or s.rule.transform.centred_keys for s in selections):
        if call.name not in _WARNED:
            _WARNED.add(call.name)
            warnings.warn(f"attnsteer: score-function rules on attention backend {call.name!r} run on attnsteer's "
                          f"own score path, not on {call.name!r} (only 'flex' takes them as a score_mod; "
                          "see docs/backends.md)", AttnsteerWarning, stacklevel=2)
        return None
    from torch.nn.attention.flex_attention import flex_attention

    device = q.device
    bound = [(s.rows.to(device), s.heads.to(device), s.query.to(device), s.key.to(device), s.transform)
             for s in selections]
    full = None if mask is None else _additive(mask, q).expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])

    def score_mod(score, b, h, q_idx, kv_idx):
        for rows, heads, query, key, transform in bound:
            where = rows[b] & heads[h] & query[q_idx] & key[kv_idx]
            score = torch.where(where, transform.score(score, b, h + head_offset, q_idx, kv_idx), score)
        return score if full is None else score + full[b, h, q_idx, kv_idx]

    out = flex_attention(q, k, v, score_mod=score_mod, scale=scale)
    ran_on_backend()
    return out


def _additive(mask: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(~mask, float("-inf"))
    return mask.to(q.dtype)


__all__ = ["ATTNSTEER", "BACKEND", "NO_LSE", "NO_MASK", "BackendCall", "answering", "current", "dispatcher_lse",
           "flex_lse", "flex_scored", "for_dispatch", "heads_first_lse", "how", "ran_on_backend"]
