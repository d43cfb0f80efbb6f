"""FreeLong's local temporal window (Lu et al., NeurIPS 2024), as a mask on video self-attention.

FreeLong (aniki-ly/FreeLong, LaVie) runs temporal attention twice — globally, and locally with a
mask that is 0 for keys in a window of ``window_size`` = 16 frames around the query frame and
-inf elsewhere (``get_adjusted_local_mask``: shifted at the ends to keep 16 frames) — and blends
the two outputs in 3-D frequency space. This recipe is the local pass's mask, in latent frames,
on every video query and key: video tokens attend only to video tokens of nearby frames (text
and other segments are untouched). The spectral blend with the global pass is not part of it.
A port to DiTs: the authors ran a UNet's separate temporal attention.
"""

from __future__ import annotations

import attnsteer as at
from attnsteer.validation import integer


@at.recipe
def local_window(window: int = 16, adjusted: bool = True) -> at.Recipe:
    """Block video attention between latent frames outside each query frame's window of ``window``
    frames (``adjusted``: windows at the ends shifted to keep their size, as the authors' mask)."""
    window = integer(window, "local_window(window=...)", minimum=1)
    rule = at.Rule(at.video, at.video, at.block(), pairs=~at.frame_window(window, adjusted=adjusted))
    return at.Recipe("local_window", (rule,), {"window": window, "adjusted": adjusted})
