"""LTX-Video (``LTXVideoTransformer3DModel``): ``LTXPipeline``, ``LTXImageToVideoPipeline``, ``LTXConditionPipeline``.

Layout facts:

- Self-attention is ``transformer_blocks[i].attn1`` (``LTXAttention`` through
  ``dispatch_attention_fn``; it has no ``is_cross_attention`` attribute); ``attn2`` is the
  cross-attention to text.
- It sees video tokens only, packed by the pipeline before the transformer: frame-major, one token
  per latent pixel. The token grid comes from the forward arguments the way the model's RoPE takes
  it: ``video_coords`` [B, 3, S] when given, otherwise ``num_frames`` x ``height`` x ``width``
  (the token grid itself: diffusers' LTX RoPE runs with patch size 1 only).
- ``video_coords`` (``LTXConditionPipeline``) hold, per token, the (t, y, x) pixel coordinates of
  its latent patch, t divided by the frame rate. Latent frame j covers pixel frames
  ``r*(j-1)+1 .. r*j`` (frame 0: pixel frame 0) and its t is its first pixel frame, so the video's
  first frame has t = 0 and t increases over its frames.
- ``LTXConditionPipeline`` prepends, for each image or video condition with ``frame_index`` k > 0,
  its first latent frame(s) as extra tokens before the video, with t = k (k + 1 for a second latent
  frame). Such a block belongs to the last video frame whose t is <= its own (the frame that covers
  pixel frame k); consecutive blocks of one frame form a ``Segment("condition", frame=j)``, which
  ``at.frames[j]`` selects together with frame j. Conditions at frame 0 are blended into the video
  tokens and add none. Sequences that do not read this way (several blocks at t = 0, or t not
  increasing after the video start, as in ``LTXI2VLongMultiPromptPipeline`` windows with overlap
  or guiding latents) raise ``SteeringError`` instead of being guessed.
- Reference frame: latent frame 0, which holds the image latent in I2V (its tokens get timestep 0).
  Condition tokens of later frames are not reference frames.
- Per-token timesteps [B, S]: the timestep of a forward is the maximum over tokens.
- Guidance: one forward per step, batch [uncond, cond], ``cache_context("cond_uncond")``.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from typing import Any

import torch

from ..contract.adapter import Adapter
from ..errors import SteeringError
from ..language.layout import Segment, TokenLayout


class LTXAdapter(Adapter):
    family = "ltx"
    model_classes = ("LTXVideoTransformer3DModel",)
    self_attention = r"transformer_blocks\.\d+\.attn1"
    cross_attention = r"transformer_blocks\.\d+\.attn2"
    text = "cross"
    branches = "batched-uncond-cond"
    tiny_models = ("tiny-ltx", "tiny-ltx-condition")
    tested = ("LTXConditionPipeline with an image condition at a later frame: DyMoS and a frame-to-frame rule "
              "against dense (leaving the condition tokens out of their frame would not match), group masses and "
              "frame maps against dense; video_coords parsing (two-frame video conditions, two images at one frame, "
              "ambiguous windows raise); the flex backend is steered like native")

    def layout(self, model: torch.nn.Module, inputs: Mapping[str, Any]) -> TokenLayout:
        """Video tokens only, pre-packed frame-major; condition tokens prepended for frames k > 0 join their frame."""
        coords = inputs.get("video_coords")
        if coords is not None:
            layout = layout_from_video_coords(coords)
        else:
            grid = [inputs.get(k) for k in ("num_frames", "height", "width")]
            if any(v is None for v in grid):
                raise SteeringError(
                    f"{type(model).__name__} was called with neither video_coords nor num_frames/height/width; "
                    "attnsteer cannot map its tokens to frames"
                )
            frames, height, width = (int(v) for v in grid)
            layout = self.token_layout(frames, (height, width))
        tokens = inputs["hidden_states"].shape[1]
        if layout.seq_len != tokens:
            raise SteeringError(
                f"{type(model).__name__} got {tokens} tokens but its position arguments describe {layout.seq_len}: "
                f"{layout.describe()}"
            )
        return layout


def layout_from_video_coords(coords: torch.Tensor) -> TokenLayout:
    """The layout of a sequence from its ``video_coords`` [B, 3, S]: condition blocks, then the video."""
    if coords.dim() != 3 or coords.shape[1] != 3:
        raise SteeringError(f"video_coords must be [B, 3, S], got shape {tuple(coords.shape)}")
    if not bool((coords == coords[:1]).all()):
        raise SteeringError("video_coords differ between batch rows; attnsteer needs one token layout per call")
    t, yx = coords[0, 0], coords[0, 1:]
    per_frame = int(torch.unique(yx, dim=1).shape[1])  # every block covers the same latent pixel grid
    if t.numel() % per_frame:
        raise SteeringError(f"video_coords: {t.numel()} tokens are not whole frames of {per_frame} positions")
    blocks = t.numel() // per_frame
    t_blocks, yx_blocks = t.view(blocks, per_frame), yx.reshape(2, blocks, per_frame)
    if not bool((t_blocks == t_blocks[:, :1]).all()) or not bool((yx_blocks == yx_blocks[:, :1]).all()):
        raise SteeringError("video_coords are not frame-major blocks of one latent pixel grid")
    times = t_blocks[:, 0].tolist()
    starts = [i for i, v in enumerate(times) if v == 0]
    video = times[starts[0]:] if len(starts) == 1 else []
    before = times[: len(times) - len(video)]
    if not video or any(b <= a for a, b in zip(video, video[1:])) or any(v < 0 for v in before):
        raise SteeringError(
            f"video_coords: cannot tell the video frames from extra tokens (frame times per block: {times}); "
            "attnsteer reads condition blocks with t > 0, then one video starting at t = 0 with increasing t"
        )
    segments: list[Segment] = []
    for block, time in enumerate(before):
        frame = bisect.bisect_right(video, time) - 1
        start, stop = block * per_frame, (block + 1) * per_frame
        if segments and segments[-1].frame == frame:
            start = segments.pop().start
        segments.append(Segment("condition", start, stop, frame=frame, name=f"condition (frame {frame})"))
    rows, cols = (int(torch.unique(yx[i, :per_frame]).numel()) for i in range(2))
    return TokenLayout(
        num_frames=len(video), tokens_per_frame=per_frame, video_start=len(before) * per_frame, segments=segments,
        grid=(rows, cols) if rows * cols == per_frame else None,
    )
