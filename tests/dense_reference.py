"""Independent dense re-implementations for tests: no attnsteer code is used here.

``DenseAttention`` replaces every self-attention SDPA call (Sq == Sk) inside its ``with`` block by
``softmax(q k^T * scale + mask + extra_bias) @ v`` computed densely in float64, where
``extra_bias(q)`` returns an additive [B, 1, S, S] bias (or None) decided by the test itself;
``seq_len`` limits it to calls of that length (a pipeline's image encoder uses SDPA too).
It also keeps, per call, the dense per-group mass when ``groups`` is given, so frame maps can
be checked against it. ``ForwardCounter`` counts a model's forwards with a plain torch hook;
``hook_state`` lists what a hook system could leave behind on a model's modules; ``to_dtype`` casts a
pipeline to float64 (both sides of an exactness check) keeping the modules a model keeps in float32;
``as_float64`` and the pre-hook ``float64_inputs`` cast call arguments and forward inputs to float64.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode


def hook_state(model: torch.nn.Module) -> list[tuple]:
    """Every attribute a hook system could leave on the model's modules: compare it before and after a session."""
    return [
        (name, hasattr(m, "_diffusers_hook"), "forward" in m.__dict__, len(m._forward_pre_hooks), len(m._forward_hooks))
        for name, m in model.named_modules()
    ]


class ForwardCounter:
    """Counts forwards of a module (registered with a plain torch pre-hook) and remembers their inputs' batch."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.count = -1
        self.timesteps: list[float] = []
        self._handle = module.register_forward_pre_hook(self._pre, with_kwargs=True)

    def _pre(self, module, args, kwargs):
        self.count += 1
        t = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        self.timesteps.append(None if t is None else float(torch.as_tensor(t).float().max()))

    def remove(self) -> None:
        self._handle.remove()


def sdpa_arguments(args: tuple, kwargs: dict) -> dict:
    """An F.scaled_dot_product_attention call's query, key, value and attn_mask (and the rest) by name."""
    named = dict(zip(("query", "key", "value", "attn_mask"), args))
    named.update(kwargs)
    return named


class DenseAttention(TorchFunctionMode):
    def __init__(
        self,
        extra_bias: Callable[[torch.Tensor], torch.Tensor | None] = lambda q: None,
        groups: Callable[[torch.Tensor], torch.Tensor] | None = None,
        seq_len: int | None = None,
    ) -> None:
        super().__init__()
        self.seq_len = seq_len
        self.extra_bias = extra_bias
        self.groups = groups
        self.masses: list[torch.Tensor] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        named = sdpa_arguments(args, kwargs)
        q, k, v = named["query"], named["key"], named["value"]
        if q.shape[-2] != k.shape[-2] or (self.seq_len is not None and q.shape[-2] != self.seq_len):
            return func(*args, **kwargs)
        mask = named.get("attn_mask")
        scale = named.get("scale") or q.shape[-1] ** -0.5
        logits = (q.double() @ k.double().transpose(-1, -2)) * scale
        if mask is not None:
            logits = logits.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else logits + mask.double()
        extra = self.extra_bias(q)
        if extra is not None:
            logits = logits + extra.double()
        p = logits.softmax(-1)
        if self.groups is not None:
            g = self.groups(q)
            n = int(g.max()) + 1
            onehot = F.one_hot(g, n).double()  # [S, G]
            per_key_group = p @ onehot  # [B, H, S, G]
            summed = onehot.transpose(0, 1) @ per_key_group  # [B, H, G, G]
            self.masses.append(summed / onehot.sum(0)[:, None])
        return (p @ v.double()).to(q.dtype)


class EditedAttention(TorchFunctionMode):
    """Every SDPA call for which ``applies(q, k)`` holds becomes dense float64 attention without a
    mask, its logits [B, H, Nq, Nk] passed through ``edit(logits)`` first; ``calls`` counts them."""

    def __init__(self, edit: Callable[[torch.Tensor], torch.Tensor],
                 applies: Callable[[torch.Tensor, torch.Tensor], bool]) -> None:
        super().__init__()
        self.edit, self.applies, self.calls = edit, applies, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        named = sdpa_arguments(args, kwargs)
        q, k, v = named["query"], named["key"], named["value"]
        if not self.applies(q, k):
            return func(*args, **kwargs)
        assert named.get("attn_mask") is None, "EditedAttention handles unmasked calls only"
        self.calls += 1
        scale = named.get("scale") or q.shape[-1] ** -0.5
        logits = self.edit((q.double() @ k.double().transpose(-1, -2)) * scale)
        return (logits.softmax(-1) @ v.double()).to(q.dtype)


def frame_bias(num_tokens: int, video_start: int, num_frames: int, tokens_per_frame: int, value: float,
               batch_rows: list[int], batch: int, key_frame: int = 0) -> torch.Tensor:
    """[B, 1, S, S]: ``value`` on logits from queries in frames other than ``key_frame`` to keys in ``key_frame``,
    for ``batch_rows``; video tokens are frame-major from ``video_start``."""
    frame = torch.full((num_tokens,), -1)
    n_video = num_frames * tokens_per_frame
    frame[video_start : video_start + n_video] = torch.arange(n_video) // tokens_per_frame
    rows = ((frame >= 0) & (frame != key_frame))[:, None]
    cols = (frame == key_frame)[None, :]
    bias = torch.zeros(batch, 1, num_tokens, num_tokens, dtype=torch.float64)
    for b in batch_rows:
        bias[b, 0] = (rows & cols).double() * value
    return bias


def as_float64(value):
    """A floating tensor in float64; anything else as it is."""
    return value.double() if torch.is_tensor(value) and value.is_floating_point() else value


def float64_inputs(module, args, kwargs):
    """A forward pre-hook (``with_kwargs=True``): the module's floating inputs in float64."""
    return tuple(as_float64(a) for a in args), {k: as_float64(v) for k, v in kwargs.items()}


def float64_arguments(kwargs: dict) -> dict:
    """A pipeline call's arguments with its floating tensors (prompt embeddings) in float64, for a pipeline that
    :func:`to_dtype` made float64 (a float32 embedding would cast the image and latents back to float32)."""
    return {k: v.to(torch.float64) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in kwargs.items()}


def to_dtype(pipe, dtype: torch.dtype) -> None:
    """Casts every component to ``dtype`` except the modules a model keeps in float32 (diffusers'
    ``_keep_in_fp32_modules``: Kandinsky 5's time embeddings make float32 inputs for them)."""
    pipe.to(dtype)
    for component in pipe.components.values():
        keep = getattr(component, "_keep_in_fp32_modules", None) or []
        if isinstance(component, torch.nn.Module) and keep:
            for name, module in component.named_modules():
                if name.split(".")[0] in keep:
                    module.to(torch.float32)
