"""DyMoS (arXiv 2605.19398): rebalance reference-frame dominance to get more motion from I2V models.

Generated frames of image-to-video models put too much self-attention on the reference frame,
which makes videos static. DyMoS adds ``-gamma`` to the pre-softmax logits from queries in the
generated latent frames to keys of the reference frame, in every self-attention layer and head,
in the conditional branch, during the first denoising steps. ``gamma`` is a motion slider:
> 0 more motion, < 0 less, 0 the unmodified model. The authors use gamma 0.6 for the first 8 of
Wan 2.2's 40 steps (``stop=0.2``).
"""

from __future__ import annotations

import attnsteer as at
from attnsteer.errors import ConfigError
from attnsteer.language.recipe import recipe
from attnsteer.validation import integer, real_number


@recipe(
    help={"gamma": "logit bias -gamma from generated-frame queries to reference-frame keys: > 0 more motion, < 0 less",
          "stop": "fraction of the steps modulated (0.2 = the authors' 8 of 40)",
          "until_step": "modulate steps [0, until_step) instead of a fraction",
          "branch": "guidance branch modulated: cond, uncond or all",
          "reference_queries": "also bias the queries of the reference frame"},
)
def dymos(
    gamma: float = 0.6,
    stop: float = 0.2,
    until_step: int | None = None,
    branch: str = "cond",
    reference_queries: bool = False,
) -> at.Recipe:
    """The DyMoS rule: bias ``-gamma`` from generated-frame queries to reference-frame keys.

    ``stop`` is the fraction of steps modulated (0.2 = 8 of 40); ``until_step=K`` modulates steps
    [0, K) instead. ``reference_queries=True`` also biases queries of the reference frame (as an
    earlier version of the authors' code did).
    """
    gamma = real_number(gamma, "dymos(gamma=...)")
    if not isinstance(reference_queries, bool):
        raise ConfigError(f"dymos(reference_queries=...) must be True or False, got {reference_queries!r}")
    if until_step is not None:
        until_step = integer(until_step, "dymos(until_step=...)", minimum=1)
        when = at.steps(stop=until_step)
    else:
        stop = real_number(stop, "dymos(stop=...)")
        if not 0 < stop <= 1:
            raise ConfigError(f"dymos(stop=...) must be a fraction of the steps in (0, 1], got {stop!r}")
        when = at.progress(stop=stop)
    rule = at.Rule(
        query=at.video if reference_queries else at.frames.generated,
        key=at.frames.reference,
        transform=at.bias(0.0 - gamma),
        when=when,
        branch=branch,
    )
    params = {"gamma": gamma}
    params.update({"until_step": until_step} if until_step is not None else {"stop": stop})
    if branch != "cond":
        params["branch"] = branch
    if reference_queries:
        params["reference_queries"] = True
    return at.Recipe("dymos", (rule,), params)
