"""The example recipe (entry point ``attnsteer.recipes``: this module)."""

import attnsteer as at
from attnsteer.language.recipe import recipe


@recipe(help={"strength": "logit bias from generated frames to the reference frame: > 0 less motion",
              "until_step": "steer steps [0, until_step) only (None: every step)"})
def hold_still(strength: float = 1.0, until_step: int | None = None) -> at.Recipe:
    """Pull the generated frames' attention towards the reference frame (the opposite of DyMoS)."""
    when = at.always if until_step is None else at.steps(stop=until_step)
    rule = at.Rule(at.frames.generated, at.frames.reference, at.bias(strength), when=when, branch="cond")
    return at.Recipe("hold_still", (rule,), {"strength": strength, "until_step": until_step})
