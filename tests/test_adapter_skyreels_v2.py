"""SkyReels-V2 diffusion forcing beyond the shared battery: in asynchronous mode (``ar_step=1``) one forward holds
frames at different noise levels, and a schedule follows each frame's own step.

From the tiny config: 64x64 pixels, VAE /8, patch 2x2 -> 4x4 tokens per frame; 9 frames -> 3 latent frames, frame 0
the image (a clean prefix frame at t = 0). A frame's own step, as documented in attnsteer.runtime.stepping and computed here
from the scheduler's timesteps: how many of them lie above the frame's timestep.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import attnsteer as at
from dense_reference import DenseAttention

pytestmark = pytest.mark.usefixtures("one_thread")
FRAMES, PER_FRAME, STEPS, GAMMA = 3, 16, 3, 2.0


@pytest.fixture(scope="module")
def pipe():
    from attnsteer.testing.tiny import tiny_skyreels_v2_df

    return tiny_skyreels_v2_df()


def run(pipe, image):
    from attnsteer.testing.tiny import skyreels_v2_df_call_kwargs

    kwargs = skyreels_v2_df_call_kwargs(output_type="latent", num_inference_steps=STEPS, ar_step=1)
    return np.asarray(pipe(image=image, generator=torch.Generator().manual_seed(0), **kwargs).frames)


class ForwardTimesteps:
    """The per-frame timestep row of each forward, logged by a plain torch pre-hook."""

    def __init__(self, model):
        self.rows: list[torch.Tensor] = []
        self._handle = model.register_forward_pre_hook(
            lambda m, args, kwargs: self.rows.append(kwargs["timestep"][0].clone()), with_kwargs=True)

    def remove(self):
        self._handle.remove()


def biased_frames_bias(q: torch.Tensor, query_frames: list[int]) -> torch.Tensor:
    """[B, 1, S, S]: -GAMMA from queries of ``query_frames`` to keys of frame 0, in batch row 0 (one-row forwards)."""
    frame = torch.arange(FRAMES * PER_FRAME) // PER_FRAME
    rows = torch.isin(frame, torch.tensor(query_frames, dtype=torch.long))[:, None]
    bias = torch.zeros(q.shape[0], 1, q.shape[-2], q.shape[-2], dtype=torch.float64)
    bias[0, 0] = (rows & (frame == 0)[None, :]).double() * -GAMMA
    return bias


def dense_run(pipe, image, frames_of_forward) -> np.ndarray:
    """The run with the bias added densely in conditional forwards (even forwards) to the queries ``frames_of_forward``
    picks from that forward's timestep row."""
    pipe.scheduler.set_timesteps(STEPS)  # the grid the run sets again: same values for the same step count
    grid = pipe.scheduler.timesteps.clone().float()
    log = ForwardTimesteps(pipe.transformer)

    def extra(q):
        forward = len(log.rows) - 1
        if forward % 2:
            return None
        chosen = frames_of_forward(log.rows[forward], grid)
        return biased_frames_bias(q, chosen) if chosen else None

    try:
        with DenseAttention(extra, seq_len=FRAMES * PER_FRAME):
            return run(pipe, image)
    finally:
        log.remove()


def test_asynchronous_frames_are_at_different_steps(pipe, image):
    log = ForwardTimesteps(pipe.transformer)
    try:
        run(pipe, image)
    finally:
        log.remove()
    assert any(len(set(row[1:].tolist())) > 1 for row in log.rows), "ar_step=1 must stagger the generated frames"


def test_a_step_schedule_follows_each_frames_own_step(pipe, image):
    vanilla = run(pipe, image)
    rule = at.Rule(at.frames[1:], at.frames[0], at.bias(-GAMMA), when=at.steps(stop=1), branch="cond")
    with at.steer(pipe, rule):
        steered = run(pipe, image)

    def own_first_step(row, grid):  # generated frames whose own step is 0
        return [f for f in range(1, FRAMES) if int((grid > float(row[f]) + 1e-3).sum()) < 1]

    def whole_forward(row, grid):  # what a per-forward schedule would do: every generated frame while any is on
        return list(range(1, FRAMES)) if own_first_step(row, grid) else []

    reference = dense_run(pipe, image, own_first_step)
    assert np.abs(steered - vanilla).max() > 1e-3
    np.testing.assert_allclose(steered, reference, atol=1e-4)
    assert np.abs(steered - dense_run(pipe, image, whole_forward)).max() > 1e-3


def test_a_progress_schedule_is_evaluated_per_frame_too(pipe, image):
    vanilla = run(pipe, image)
    rule = at.Rule(at.frames[1:], at.frames[0], at.bias(-GAMMA), when=at.progress(start=0.5), branch="cond")
    with at.steer(pipe, rule):
        steered = run(pipe, image)
    assert np.abs(steered - vanilla).max() > 1e-3

    def late_frames(row, grid):  # own step / STEPS >= 0.5, i.e. own step >= 2 of 3 (finished frames: past the end)
        steps = [int((grid > float(row[f]) + 1e-3).sum()) for f in range(FRAMES)]
        return [f for f in range(1, FRAMES) if 0.5 <= steps[f] / STEPS < 1.0]

    np.testing.assert_allclose(steered, dense_run(pipe, image, late_frames), atol=1e-4)


def test_a_cross_attention_rule_on_some_frames_only_raises(pipe, image):
    rule = at.Rule(at.video, at.text, at.bias(1.0), when=at.steps(stop=1), attention="cross")
    with pytest.raises(at.SteeringError, match="per-frame"):
        with at.steer(pipe, rule):
            run(pipe, image)
