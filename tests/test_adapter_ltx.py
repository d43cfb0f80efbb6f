"""LTX-Video beyond the shared battery (tests/test_families.py): condition tokens of ``LTXConditionPipeline``
tied to the latent frame they condition, ``video_coords`` parsing, the flex backend.

The dense references take the geometry from the pipeline's compression ratios and the call
arguments: latent frame j covers pixel frames r*(j-1)+1 .. r*j, one token per latent pixel, and
LTXConditionPipeline puts the tokens of an image condition at frame k > 0 before the video.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers.pipelines.ltx.pipeline_ltx_condition import LTXVideoCondition

import attnsteer as at
from attnsteer.plugins.ltx import layout_from_video_coords
from attnsteer.testing.tiny import ltx_call_kwargs, test_image
from dense_reference import DenseAttention, ForwardCounter

SIZE, NUM_FRAMES, CONDITION_AT = 32, 17, 6  # pixel frame 6 lies in latent frame 2 (pixels 5..8) when r = 4
STEPS, UNTIL = 2, 1  # rules below act in step 0 only
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pipe():
    from attnsteer.testing.tiny import tiny_ltx

    return tiny_ltx()


@pytest.fixture(scope="module")
def cpipe():
    from attnsteer.testing.tiny import tiny_ltx_condition

    return tiny_ltx_condition()


def grid(pipe, num_frames):
    """(latent frames, tokens per frame) from the pipeline's own compression ratios."""
    frames = (num_frames - 1) // pipe.vae_temporal_compression_ratio + 1
    side = SIZE // pipe.vae_spatial_compression_ratio
    return frames, side * side


def run_i2v(pipe, **overrides):
    kwargs = ltx_call_kwargs(**{"output_type": "latent", "num_inference_steps": STEPS, **overrides})
    return np.asarray(pipe(image=test_image(SIZE), generator=torch.Generator().manual_seed(0), **kwargs).frames)


def run_condition(cpipe, **overrides):
    conditions = [LTXVideoCondition(image=test_image(SIZE), frame_index=0),
                  LTXVideoCondition(image=test_image(SIZE).rotate(90), frame_index=CONDITION_AT)]
    kwargs = ltx_call_kwargs(**{"output_type": "latent", "num_frames": NUM_FRAMES, "num_inference_steps": STEPS,
                                **overrides})
    return np.asarray(cpipe(conditions=conditions, generator=torch.Generator().manual_seed(0), **kwargs).frames)


def dense_run(pipe, run, bias, until_step, rows, seq):
    """``run()`` with ``bias(rows, batch)`` added densely in the first ``until_step`` forwards (one per step)."""
    counter = ForwardCounter(pipe.transformer)
    try:
        with DenseAttention(lambda q: None if counter.count >= until_step else bias(rows, q.shape[0]), seq_len=seq):
            return run()
    finally:
        counter.remove()


def assert_clean(pipe):
    assert not any(hasattr(m, "_diffusers_hook") or "forward" in m.__dict__
                   for name, m in pipe.transformer.named_modules() if name)


def test_flex_backend_is_steered_like_native(pipe):
    with at.steer(pipe, at.recipes.dymos(gamma=2.0, until_step=1)):
        native = run_i2v(pipe, num_inference_steps=1)
    pipe.transformer.set_attention_backend("flex")
    try:
        with at.steer(pipe, at.recipes.dymos(gamma=2.0, until_step=1)) as steering:
            flex = run_i2v(pipe, num_inference_steps=1)
    finally:
        pipe.transformer.set_attention_backend("native")
    np.testing.assert_allclose(flex, native, atol=1e-5)
    assert set(steering.summary()["steered_calls_by_backend"]) == {"flex"}
    assert_clean(pipe)


def condition_geometry(cpipe):
    """(latent frames, tokens per frame, the latent frame of the condition at CONDITION_AT)."""
    frames, tokens = grid(cpipe, NUM_FRAMES)
    return frames, tokens, math.ceil(CONDITION_AT / cpipe.vae_temporal_compression_ratio)


def test_condition_tokens_are_tied_to_their_frame(cpipe):
    frames, tokens, cond_frame = condition_geometry(cpipe)
    seq = tokens + frames * tokens  # one image condition's latent frame, then the video
    frame = torch.cat([torch.full((tokens,), cond_frame), torch.arange(frames).repeat_interleave(tokens)])
    video = torch.arange(seq) >= tokens

    def dense(queries, keys, rows, value=-2.0):
        """The pipeline with a dense ``value`` bias from ``queries`` to ``keys`` (token masks) in ``rows``, step 0."""
        def bias(rows, batch):
            out = torch.zeros(batch, 1, seq, seq, dtype=torch.float64)
            out[rows, 0] = (queries[:, None] & keys[None, :]).double() * value
            return out
        return dense_run(cpipe, lambda: run_condition(cpipe), bias, UNTIL, rows, seq)

    vanilla = run_condition(cpipe)
    with at.steer(cpipe, at.recipes.dymos(gamma=0.0, stop=1.0)):
        np.testing.assert_allclose(run_condition(cpipe), vanilla, atol=1e-5)
    with at.steer(cpipe, at.recipes.dymos(gamma=2.0, until_step=UNTIL)):
        steered = run_condition(cpipe)
    assert np.abs(steered - vanilla).max() > 1e-3
    frame0 = (frame == 0) & video
    np.testing.assert_allclose(steered, dense(frame != 0, frame0, [1]), atol=1e-4)  # conditions are generated
    with at.steer(cpipe, at.Rule(at.frames[1], at.frames[cond_frame], at.bias(4.0), when=at.steps(stop=UNTIL))):
        to_frame = run_condition(cpipe)
    frame1 = (frame == 1) & video
    np.testing.assert_allclose(to_frame, dense(frame1, frame == cond_frame, [0, 1], 4.0), atol=1e-4)
    assert np.abs(to_frame - dense(frame1, (frame == cond_frame) & video, [0, 1], 4.0)).max() > 1e-3, \
        "the condition tokens must be keys of their frame"
    assert np.array_equal(run_condition(cpipe), vanilla)
    assert_clean(cpipe)


def test_condition_frame_maps_match_dense(cpipe):
    """Group masses keep the condition segment apart; frame maps count its tokens in their frame."""
    frames, tokens, cond_frame = condition_geometry(cpipe)
    seq = tokens + frames * tokens
    video_groups = torch.arange(frames).repeat_interleave(tokens)
    apart = torch.cat([torch.full((tokens,), frames), video_groups])
    in_frame = torch.cat([torch.full((tokens,), cond_frame), video_groups])
    dense_apart = DenseAttention(groups=lambda q: apart, seq_len=seq)
    dense_in_frame = DenseAttention(groups=lambda q: in_frame, seq_len=seq)
    for dense in (dense_apart, dense_in_frame):
        with dense:
            run_condition(cpipe, num_inference_steps=1)
    with at.inspect(cpipe) as rec:
        run_condition(cpipe, num_inference_steps=1)
    assert rec.frame_map().shape == (frames, frames)
    for layer, (apart_mass, in_frame_mass) in enumerate(zip(dense_apart.masses, dense_in_frame.masses)):
        for row, branch in enumerate(("uncond", "cond")):
            got = rec.group_mass(layers=[layer], branch=branch)  # frames, then the condition segment
            torch.testing.assert_close(got.double(), apart_mass[row].mean(0), atol=1e-5, rtol=0)
            got = rec.frame_map(layers=[layer], branch=branch)
            torch.testing.assert_close(got.double(), in_frame_mass[row].mean(0), atol=1e-5, rtol=0)
    assert rec.group_mass()[:frames, frames].min() > 1e-3  # the condition tokens do take attention
    torch.testing.assert_close(rec.frame_map().sum(-1), torch.ones(frames), atol=1e-5, rtol=0)


def coords(times, per_frame=4):
    """video_coords [2, 3, S] with one block of ``per_frame`` positions (a 2x2 grid) per time in ``times``."""
    t = torch.tensor(times, dtype=torch.float32).repeat_interleave(per_frame)
    yx = torch.arange(per_frame).repeat(len(times))
    return torch.stack([t, yx // 2 * 32.0, yx % 2 * 32.0]).expand(2, 3, -1)


def test_video_coords_layouts():
    def summary(times):
        layout = layout_from_video_coords(coords(times))
        segments = [(s.kind, s.start, s.stop, s.frame) for s in layout.segments]
        return layout.num_frames, layout.tokens_per_frame, layout.video_start, segments

    # a two-latent-frame video condition at pixel frame 8 (t = 8, 9), then 5 latent frames (t = 0, 1, 5, 9, 13)
    assert summary([8, 9, 0, 1, 5, 9, 13]) == (5, 4, 8, [("condition", 0, 4, 2), ("condition", 4, 8, 3)])
    assert summary([6, 6, 0, 1, 5]) == (3, 4, 8, [("condition", 0, 8, 2)])  # two images at one frame: one segment
    assert summary([0, 1, 5]) == (3, 4, 0, [])
    for ambiguous in ([0, 1, 5, 0, 1], [0, 1, 5, -4], [-1, 0, 1]):  # overlap or negative-index windows
        with pytest.raises(at.SteeringError, match="video frames"):
            layout_from_video_coords(coords(ambiguous))
