"""Direct-a-Video's object-motion attention (Yang et al., SIGGRAPH 2024), ported to joint text+video
self-attention.

The authors' ``SpatialCrossAttnProcessor`` (UNet cross-attention, ZeroScope) does two things in
the conditional branch: while ``1 - i/N >= tau`` (tau = 0.95, the first 5% of steps) it adds
``lambda * size_reg`` (lambda = 25, ``size_reg = 1 - box area / frame area``) to the logits from
pixels inside an object's box to that object's phrase tokens; at every step it blocks (-inf)
the phrase tokens for pixels outside the box and every other prompt word for all pixels (start,
end and padding tokens stay). Here the same edits act on the video-query -> text-key block of a
joint self-attention (CogVideoX, HunyuanVideo, LTX), or with ``attention="cross"`` on the separate
text cross-attention of Wan: a port, since the authors ran a UNet.
"""

from __future__ import annotations

import torch

import attnsteer as at
from attnsteer.language.geometry import Trajectory
from attnsteer.errors import ConfigError
from attnsteer.validation import real_number

from ._regions import region

MAX_STRENGTH = 1e4  # a logit bias: far above any useful value (the authors' 25), far below float32 overflow


def _size_regulariser(trajectory: Trajectory, strength: float):
    """values(layout) -> [seq_len]: ``strength * (1 - area of the frame's box)`` on each frame's tokens."""

    def values(layout: at.TokenLayout) -> torch.Tensor:
        out = torch.zeros(layout.seq_len, dtype=torch.float64)
        for f in range(layout.num_frames):
            x0, y0, x1, y1 = trajectory.box_at(f, layout.num_frames)
            start = layout.video_start + f * layout.tokens_per_frame
            out[start : start + layout.tokens_per_frame] = strength * (1.0 - (x1 - x0) * (y1 - y0))
        return out

    values.__name__ = f"{strength:g}*size_reg"
    return values


@at.recipe
def direct_a_video(
    phrase: str,
    box: str = "0.25,0.25,0.75,0.75",
    end_box: str | None = None,
    strength: float = 25.0,
    amplify: float = 0.05,
    branch: str = "cond",
    attention: str = "self",
) -> at.Recipe:
    """Move an object along a box path: amplify its phrase inside the box early, block it outside.

    ``box``/``end_box`` are "x0,y0,x1,y1" fractions of the frame (the box moves linearly from one to
    the other); ``strength`` is the authors' lambda; ``amplify`` the fraction of steps amplified
    (1 - tau); ``attention="cross"`` for models with separate text cross-attention (Wan), as the
    authors' UNet has. Needs the prompt on the session: ``at.steer(pipe, recipe, prompt=...)``.
    """
    if not isinstance(phrase, str) or not phrase.strip():
        raise ConfigError(f"direct_a_video(phrase=...) must be a word or phrase of the prompt, got {phrase!r}")
    strength = real_number(strength, "direct_a_video(strength=...)")
    if abs(strength) > MAX_STRENGTH:
        raise ConfigError(f"direct_a_video(strength=...) must be a number of magnitude <= {MAX_STRENGTH:g} (it is a "
                          f"logit bias; the authors use 25), got {strength!r}")
    amplify = real_number(amplify, "direct_a_video(amplify=...)")
    if not 0.0 <= amplify <= 1.0:
        raise ConfigError(f"direct_a_video(amplify=...) must be a fraction of the steps in [0, 1], got {amplify!r}")
    where = region(box, end_box)
    words = at.words(phrase)
    rules = [] if amplify == 0 else [  # amplify=0: no step is amplified, the blocks alone remain
        at.Rule(where, words, at.query_bias(_size_regulariser(where, strength)),
                when=at.progress(stop=amplify, include_stop=True), branch=branch, attention=attention)]
    rules += [
        at.Rule(at.video & ~where, words, at.block(), branch=branch, attention=attention),
        at.Rule(at.video, at.prompt & ~words, at.block(), branch=branch, attention=attention),
    ]
    params = {"phrase": phrase, "box": box}
    if end_box is not None:
        params["end_box"] = end_box
    params.update(strength=strength, amplify=amplify)
    if branch != "cond":
        params["branch"] = branch
    if attention != "self":
        params["attention"] = attention
    return at.Recipe("direct_a_video", rules, params)


__all__ = ["direct_a_video"]
