"""Small biased calls as one SDPA call: the group bias spread over the tokens as an additive mask.

At small sizes the grouped kernel's class calls and their merge cost several times the attention itself (5-7x plain
SDPA at 48 tokens, 1.5x at 256 on a 2-core CPU), while one fused call with a dense mask costs under 15% more than
plain SDPA up to 512 x 512 logits (``benchmarks.percall`` and docs/performance.md). The mask is exact where it holds
``logit + bias`` as precisely as the logit itself: float32 or float64 inputs and a bias of at most
``MAX_MAGNITUDE`` (float32 then rounds the sum within ~1e-6, as it rounds the logits); larger biases (a "hard"
1e6, a -1e4) merge by log-sum-exp, which keeps them exact, and -inf ones need the merge's blocked-row checks.
"""

from __future__ import annotations

import torch

from .backends import own_class_kernel

MAX_LOGITS = 512 * 512  # Nq x Nk of the largest call that runs this way
MAX_MAGNITUDE = 16.0  # the largest |bias| it takes
DTYPES = (torch.float32, torch.float64)


def fits(q: torch.Tensor, nk: int, bias4: torch.Tensor) -> bool:
    """Whether a biased call without mass on ``q`` [B, H, Nq, D] and ``nk`` keys runs as one SDPA call with ``bias4``
    [B|1, H|1, Gq, Gk] spread as its mask: :func:`takes` its size and bias, and :func:`runs_here`."""
    return runs_here(q.dtype) and takes(q.shape[-2], nk, bias4)


def takes(nq: int, nk: int, bias4: torch.Tensor) -> bool:
    """Whether a call of ``nq`` x ``nk`` logits is small enough and ``bias4`` finite and moderate (what a prepared call
    can tell once, before any call)."""
    return nq * nk <= MAX_LOGITS and moderate(bias4)


def moderate(bias4: torch.Tensor) -> bool:
    """Whether every bias is finite and at most ``MAX_MAGNITUDE`` in magnitude: an additive mask then holds
    ``logit + bias`` as precisely as the logit."""
    return bool(bias4.abs().max() <= MAX_MAGNITUDE)


def runs_here(dtype: torch.dtype) -> bool:
    """Whether a call in ``dtype`` may run this way now: a dtype that holds ``logit + bias``, on attnsteer's own
    kernel (a user's backend put in place by ``kernels.backends.class_kernel`` runs the class calls)."""
    return dtype in DTYPES and own_class_kernel()


def spread(bias4: torch.Tensor, q_groups: torch.Tensor, k_groups: torch.Tensor,
           dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The group bias [B|1, H|1, Gq, Gk] spread over the tokens: an additive mask [B|1, H|1, Nq, Nk] in ``dtype``."""
    return bias4[:, :, q_groups][..., k_groups].to(dtype)
