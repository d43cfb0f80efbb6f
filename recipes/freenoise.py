"""FreeNoise (Qiu et al., ICLR 2024): windowed temporal attention fused with pyramid weights, and noise rescheduling.

The authors' code (AILab-CVC/FreeNoise ``lvdm/modules/attention_freenoise.py`` l.87-200, ``scripts/evaluation``)
evaluates temporal self-attention separately on each window of ``window`` frames, ``[i*stride, i*stride + window)``
for ``i = 0 .. (F - window) // stride`` (a full softmax inside the window), and fuses the outputs per frame with
pyramid weights ``1, 2, .., window/2, window/2, .., 1``: ``value / count``. At the start it reschedules the initial
noise: for f in range(window, F, stride), frames ``[f, f + stride)`` are a shuffled copy of frames
``f - window .. f - window + stride - 1``, in sequence. Defaults: window 16, stride 4; every step, both branches.

- ``window`` and ``stride`` count latent frames; the frame count is the call's. Where ``window >= F`` the method is
  the plain call (one window) and the noise is left as drawn.
- Refused (SteeringError) where ``(F - window) % stride != 0``: the authors' attention leaves the last frames'
  output at zero there and their shuffle fails; choose a stride that divides ``F - window``.
- The fusion acts on the attention output before ``to_out``, as the authors' (``to_out(value / count)``). Not
  diffusers' ``enable_free_noise``, which windows the whole temporal transformer block.
- The shuffle draws one permutation per block from a generator seeded with the run generator's seed
  (``torch.randperm``, not Python's ``random.shuffle``): the same seed gives the same video. It goes through the
  pipeline's ``prepare_latents`` (where diffusers pipelines draw the noise or take ``latents=``); pipelines without
  one (the toy model) refuse it: pass ``noise=False`` to run the attention part alone.
- On DiT video self-attention (Wan) each window is all tokens of its frames; layouts with text in the
  self-attention sequence are refused.
"""

from __future__ import annotations

import attnsteer as at
from attnsteer.validation import integer


@at.recipe(help={"window": "window in latent frames", "stride": "latent frames between window starts",
                 "noise": "also reschedule the initial noise (needs a pipeline with prepare_latents)"})
def freenoise(window: int = 16, stride: int = 4, noise: bool = True) -> at.Recipe:
    """FreeNoise: pyramid-weighted windowed temporal attention and shuffled initial noise (long videos)."""
    window = integer(window, "freenoise(window=...)", minimum=1)
    stride = integer(stride, "freenoise(stride=...)", minimum=1)
    if stride > window:
        raise at.ConfigError(f"freenoise(stride={stride}) must be <= window={window}: windows must overlap or touch")
    rule = at.Rule(at.video, at.tokens, at.multi_pass(at.frame_windows(window, stride), at.weighted_mean()))
    return at.Recipe("freenoise", (rule,), {"window": window, "stride": stride, "noise": noise},
                     initial_noise=at.shuffled_noise(window, stride) if noise else None)
