"""Peekaboo's region isolation (Jain et al., CVPR 2024), ported to full 3-D video self-attention.

The authors (microsoft/Peekaboo, ZeroScope UNet) add -10000 to the logits between foreground
(inside the object's box) and background tokens — within each frame in spatial self-attention,
and across frames at each location in temporal attention — and, in cross-attention, keep
foreground pixels on the object's phrase tokens and background pixels off them, for the first
``frozen_steps`` = 2 of 50 steps, in both guidance branches. A DiT attends over all frames and
locations at once, so the port puts -10000 on every video pair with one token inside the region
and one outside (that covers the spatial and the temporal pairs); with ``phrase`` on a joint
text+video model it also biases video queries away from the other side's text tokens. It
does not reproduce the hidden-state gate of the authors' temporal blocks. A port, not a reproduction.
"""

from __future__ import annotations

import attnsteer as at
from attnsteer.errors import ConfigError
from attnsteer.validation import integer, real_number

from ._regions import region


@at.recipe
def peekaboo(
    box: str = "0.25,0.25,0.75,0.75",
    end_box: str | None = None,
    phrase: str | None = None,
    frozen_steps: int = 2,
    value: float = -10000.0,
) -> at.Recipe:
    """Isolate the region ``box`` (moving to ``end_box``) from the rest of the video for the first
    ``frozen_steps`` steps: ``value`` on every logit between a token inside and a token outside."""
    frozen_steps = integer(frozen_steps, "peekaboo(frozen_steps=...)", minimum=1)
    value = real_number(value, "peekaboo(value=...)")
    if value > 0:
        raise ConfigError(f"peekaboo(value=...) must be <= 0 (it separates regions), got {value!r}")
    where = region(box, end_box)
    when = at.steps(stop=frozen_steps)
    rules = [at.Rule(at.video, at.video, at.bias(value), when=when, pairs=~at.same_region(where))]
    if phrase is not None:
        words = at.words(phrase)
        rules += [
            at.Rule(where, at.text & ~words, at.bias(value), when=when),
            at.Rule(at.video & ~where, words, at.bias(value), when=when),
        ]
    params = {"box": box, **({"end_box": end_box} if end_box is not None else {})}
    params.update({"phrase": phrase} if phrase is not None else {})
    params.update(frozen_steps=frozen_steps, value=value)
    return at.Recipe("peekaboo", rules, params)
