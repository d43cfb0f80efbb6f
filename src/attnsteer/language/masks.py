"""Token masks as selectors: a boolean mask per latent frame on the token grid, such as the mask
``at.masks.from_attention`` draws from a recording ("the tokens that attend to 'cat'").

The mask is pure data ([F, rows, cols] bool). In a call with the same latent frames and grid it selects
exactly its tokens; on another grid of the same frame count it is resampled as ``at.mask`` resamples
pixels (area average, tokens at least half covered). A frame count that differs raises: which mask
frame belongs to which latent frame would be a guess.
"""

from __future__ import annotations

import attrs
import torch

from ..errors import ConfigError
from .layout import TokenLayout
from .selectors import SelectionContext, Selector


def _token_grid(value: object) -> torch.Tensor:
    """A boolean [F, rows, cols] tensor on the CPU, or ConfigError."""
    try:
        tokens = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"TokenMask(tokens) must be a boolean [F, rows, cols] array, got {value!r} ({exc})") from None
    if tokens.dtype != torch.bool or tokens.dim() != 3 or tokens.numel() == 0:
        raise ConfigError(f"TokenMask(tokens) must be a non-empty boolean [F, rows, cols] array (one token grid per "
                          f"latent frame), got {tokens.dtype} of shape {tuple(tokens.shape)}")
    if not bool(tokens.any()):
        raise ConfigError("TokenMask(tokens) marks no token: a rule on it would apply nowhere")
    return tokens.detach().cpu().clone()


def _grid(selector: Selector, layout: TokenLayout) -> tuple[int, int]:
    """The call's token grid, or ConfigError: a per-token mask needs it."""
    if layout.grid is None:
        raise ConfigError(f"{selector!r} needs the token grid of a frame, which this model's adapter does not report "
                          f"(layout {layout.describe()})")
    return layout.grid


@attrs.frozen(repr=False, eq=False)
class TokenMask(Selector):
    """The video tokens marked in ``tokens`` ([F, rows, cols] bool, one token grid per latent frame);
    ``source`` says where the mask came from (shown in its repr and in saved files)."""

    group_level = False
    tokens: torch.Tensor = attrs.field(converter=_token_grid)
    source: str = "mask"

    @property
    def count(self) -> int:
        """How many tokens the mask holds, over all frames."""
        return int(self.tokens.sum())

    def frame_region(self, frame: int, ctx: SelectionContext) -> torch.Tensor:
        """The [rows, cols] mask of latent frame ``frame`` on the call's token grid."""
        grid = _grid(self, ctx.layout)
        region = self.tokens[frame]
        if tuple(region.shape) == tuple(grid):
            return region
        covered = torch.nn.functional.interpolate(region[None, None].double(), size=grid, mode="area")
        return covered[0, 0] >= 0.5

    def compute_mask(self, ctx: SelectionContext) -> torch.Tensor:
        layout = ctx.layout
        frames = self.tokens.shape[0]
        if layout.num_frames != frames:
            raise ConfigError(f"{self!r} holds {frames} latent frames but this call has {layout.num_frames}; draw "
                              "the mask from a recording of the same video length")
        grid = _grid(self, layout)
        mask = torch.zeros(layout.seq_len, dtype=torch.bool)
        for f in range(frames):
            start = layout.video_start + f * layout.tokens_per_frame
            mask[start : start + layout.tokens_per_frame] = self.frame_region(f, ctx).reshape(-1)
        if not bool(mask.any()):
            raise ConfigError(f"{self!r} covers no token on this call's {grid[0]}x{grid[1]} token grid (a token is "
                              "inside when at least half its cell is); record at a closer size")
        return mask

    def __repr__(self) -> str:
        shape = "x".join(map(str, self.tokens.shape))
        return f"token_mask({self.source}, {shape}, {self.count} tokens)"


__all__ = ["TokenMask"]
