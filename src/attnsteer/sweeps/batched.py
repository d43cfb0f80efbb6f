"""Batched sweeps: K recipes (one per parameter value) as the batch rows of one pipeline call.

Each chunk of at most ``chunk`` recipes runs as one call with the prompt repeated n times and n
generators seeded alike, so row i starts from the noise of the sequential run. Recipe i applies only
to its item's rows (``at.steer(..., batch_item=(i, n))``): the controller maps attention rows to
items through the adapter's branch convention (:func:`~attnsteer.contract.branches.item_of_rows`), and
refuses a forward whose rows do not split into n per branch. Outputs equal K sequential runs up to
float rounding of the batched matmuls.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..errors import AttnsteerError, ConfigError, SteeringError
from ..session import inspect, steer

# pipelines that encode one condition image per batch row (and index it per row): the image is repeated
PER_ROW_IMAGE = ("CogVideoXImageToVideoPipeline", "Kandinsky6TI2VAPipeline")
# pipelines whose batched call draws some randomness once for all items from the first generator only, so the other
# items' generators fall out of step with their sequential runs: refused (family, reason), never approximated
UNEVEN_GENERATORS = {
    "LTXConditionPipeline": (
        "ltx", "it samples an image/video condition's VAE latent once for the whole batch, from the first generator "
        "only, so items 2.. draw their per-step conditioning noise (image_cond_noise_scale) from generators one "
        "sample behind their sequential runs",
    ),
}
PROMPT_TENSORS = ("prompt_embeds", "negative_prompt_embeds", "prompt_attention_mask", "negative_prompt_attention_mask",
                  "pooled_prompt_embeds", "negative_pooled_prompt_embeds")


def batch_call_kwargs(pipe: Any, kwargs: dict[str, Any], n: int, seed: int) -> dict[str, Any]:
    """A pipeline call's keyword arguments for n identical items: prompts (strings or embeddings of batch 1)
    repeated, the image repeated where the pipeline wants one per row, n generators seeded with ``seed``."""
    if kwargs.get("num_videos_per_prompt", 1) != 1 or kwargs.get("latents") is not None:
        raise ConfigError("a batched run builds its batch from the prompt: pass num_videos_per_prompt=1 and no latents")
    out = dict(kwargs)
    for name in ("prompt", "negative_prompt"):
        if isinstance(out.get(name), str):
            out[name] = [out[name]] * n
    for name in PROMPT_TENSORS:
        value = out.get(name)
        if isinstance(value, torch.Tensor):
            if value.shape[0] != 1:
                raise ConfigError(f"a batched run repeats {name} of batch 1, got batch {value.shape[0]}")
            out[name] = value.repeat(n, *([1] * (value.dim() - 1)))
    if out.get("image") is not None and type(pipe).__name__ in PER_ROW_IMAGE:
        out["image"] = [out["image"]] * n
    out["generator"] = [seeded_generator(pipe, seed) for _ in range(n)]
    return out


def seeded_generator(pipe: Any, seed: int) -> torch.Generator:
    """A generator seeded with ``seed`` on the pipeline's device (the CPU for MPS, which has none)."""
    device = getattr(pipe, "device", torch.device("cpu"))
    return torch.Generator(device="cpu" if device.type == "mps" else device).manual_seed(seed)


def check_batchable(pipe: Any, n: int) -> None:
    """Raise ConfigError when n > 1 items of ``pipe`` batched in one call cannot equal their sequential runs."""
    name = type(pipe).__name__
    if n > 1 and name in UNEVEN_GENERATORS:
        family, reason = UNEVEN_GENERATORS[name]
        raise ConfigError(f"batched runs are refused for the {family} family's {name}: {reason}; run the values "
                          "sequentially (batch of 1)")


def chunks(items: Sequence[Any], chunk: int) -> list[Sequence[Any]]:
    """``items`` split into consecutive runs of at most ``chunk``."""
    if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1:
        raise ConfigError(f"chunk must be a positive int, got {chunk!r}")
    return [items[i:i + chunk] for i in range(0, len(items), chunk)]


def run_batched(
    pipe: Any, recipes: Sequence[Any], generate: Callable[[int], Sequence[Any]], *, chunk: int, record: bool = True,
    **inspect_kwargs: Any,
) -> list[tuple[Any, Any]]:
    """(output, recording or None) per recipe: ``generate(n)`` calls ``pipe`` once for n batched items (see
    :func:`batch_call_kwargs`) and returns the n outputs; recipe i of a chunk steers (and its
    ``at.inspect`` records) only item i's rows."""
    if not recipes:
        raise ConfigError("a batched run needs at least one recipe")
    groups = chunks(list(recipes), chunk)
    check_batchable(pipe, max(len(g) for g in groups))
    results: list[tuple[Any, Any]] = []
    for group in groups:
        n = len(group)
        with contextlib.ExitStack() as stack:
            records = []
            for i, recipe in enumerate(group):
                if record:
                    records.append(stack.enter_context(inspect(pipe, batch_item=(i, n), **inspect_kwargs)))
                items = recipe if isinstance(recipe, (list, tuple)) else (recipe,)
                stack.enter_context(steer(pipe, *items, batch_item=(i, n)))
            try:
                outputs = list(generate(n))
            except (AttnsteerError, torch.OutOfMemoryError):
                raise
            except (ValueError, TypeError, IndexError, RuntimeError) as exc:  # the pipeline cannot batch its inputs
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise SteeringError(f"{type(pipe).__name__} could not run {n} items batched in one call "
                                    f"({type(exc).__name__}: {first}); run the values sequentially (batch=None; "
                                    "the sweep command without --batch)") from exc
        if len(outputs) != n:
            raise SteeringError(f"a batched call of {n} items returned {len(outputs)} outputs; {type(pipe).__name__} "
                                "did not batch the repeated prompt: run the values sequentially")
        results.extend(zip(outputs, records or [None] * n))
    return results
