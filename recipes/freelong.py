"""FreeLong (Lu et al., NeurIPS 2024): SpectralBlend temporal attention, as a multi-pass rule.

The authors' code (aniki-ly/FreeLong: LaVie ``models/attention.py`` l.484-651, ``freelong_utils.py``; VideoCrafter2
``lvdm/modules/attention.py``) runs each temporal self-attention twice on the same input: globally (all frames),
and locally with a mask that is -inf outside a window of ``window`` frames around the query frame. It blends the
two outputs in the 3-D Fourier domain over (frames, rows, cols), per channel: the Gaussian low-pass
(``d_s``, ``d_t``) of the global output plus the high-pass of the local one; every step, both guidance branches.

- ``window`` counts latent frames as :func:`local_window` does. ``mask="lavie"`` (default) is LaVie's
  ``get_adjusted_local_mask``: i-w/2 .. i+w/2, windows clipped at the ends shifted to keep w frames;
  ``mask="videocrafter2"`` is VideoCrafter2's window i-w/2 .. i+w/2 clipped at the ends.
- The frame count is the call's (the authors hard-code 128 frames and a table of resolutions).
- The authors' top-resolution rule: at the UNet's largest resolution (LaVie's ``d == 2560``) they use the local
  output alone, no blend. Here ``local_at_top=True`` (default) does so in temporal calls whose folded spatial grid
  is the model input's full latent grid (AnimateDiff's and the ModelScope UNets' first blocks). DiT calls (Wan,
  the toy) and Latte's patchified temporal calls are never at the latent's full grid, so every call blends there.
- Where attnsteer differs: the blend acts on the attention output before ``to_out`` (the authors': after it). The
  FFT acts on (frames, rows, cols) and ``to_out`` on channels, with low-pass + high-pass = 1, so the two are equal
  in exact arithmetic (not bit for bit). The FFT runs in float32 (float64 for float64 models), as the authors'.
- On DiT video self-attention (Wan: video tokens only, a known token grid) the same two passes run over whole
  frames of tokens; layouts with text in the self-attention sequence are refused (the blend is over video).
- The authors' pipelines also shuffle the initial noise (FreeNoise's rescheduling): add
  ``at.recipes.freenoise``'s noise part with ``at.Recipe("noise", (), initial_noise=at.shuffled_noise(w, s))``.
"""

from __future__ import annotations

import attrs

import attnsteer as at
from attnsteer.validation import integer, real_number


@attrs.frozen
class FreeLongPasses:
    """The passes of one call: (global, local), or the local one alone at the top resolution."""

    local: at.Pass
    local_at_top: bool

    def __call__(self, call: at.PassCall) -> tuple[at.Pass, ...]:
        if self.local_at_top and call.top:
            return (self.local,)
        return (at.Pass(), self.local)

    def __repr__(self) -> str:
        return f"freelong_passes(local={self.local.rules[0].pairs!r}, local_at_top={self.local_at_top})"


@at.recipe(help={"window": "local window in latent frames", "d_s": "spatial cut-off of the Gaussian low-pass",
                 "d_t": "temporal cut-off of the Gaussian low-pass",
                 "mask": "lavie: shifted at the ends to keep window frames; videocrafter2: clipped",
                 "local_at_top": "at a UNet's full-resolution temporal calls, the local pass alone (the authors')"},
           choices={"mask": ("lavie", "videocrafter2")})
def freelong(window: int = 16, d_s: float = 0.25, d_t: float = 0.25, mask: str = "lavie",
             local_at_top: bool = True) -> at.Recipe:
    """FreeLong: blend global and windowed temporal attention in 3-D frequency space (long videos)."""
    window = integer(window, "freelong(window=...)", minimum=1)
    for name, value in (("d_s", d_s), ("d_t", d_t)):
        if real_number(value, f"freelong({name}=...)") <= 0:
            raise at.ConfigError(f"freelong({name}=...) must be > 0, got {value!r}")
    local = at.Pass(rules=(at.Rule(at.video, at.video, at.block(),
                                   pairs=~at.frame_window(window, adjusted=mask == "lavie")),))
    transform = at.multi_pass(FreeLongPasses(local, local_at_top), at.spectral_blend(d_s, d_t))
    rule = at.Rule(at.video, at.tokens, transform)
    return at.Recipe("freelong", (rule,), {"window": window, "d_s": d_s, "d_t": d_t, "mask": mask,
                                           "local_at_top": local_at_top})
