"""Wan VACE beyond the shared battery: the VACE context blocks are self-attention over the control stream,
addressed by layer filters; reference frames are the leading frames the control mask keeps.

From the tiny config: 64x64 pixels, VAE /8, patch 2x2 -> 4x4 tokens per frame; 5 frames -> 2 latent frames,
after one latent frame per reference image. Per forward the self-attention calls are the two VACE context
blocks, then the two main blocks (vace_layers [0, 1]).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import attnsteer as at
from dense_reference import DenseAttention, ForwardCounter, frame_bias

pytestmark = pytest.mark.usefixtures("one_thread")
PER_FRAME, VACE_BLOCKS, MAIN_BLOCKS = 16, 2, 2


@pytest.fixture(scope="module")
def pipe():
    from attnsteer.testing.tiny import tiny_wan_vace

    return tiny_wan_vace()


def run(pipe, **overrides):
    from attnsteer.testing.tiny import wan_vace_call_kwargs

    kwargs = wan_vace_call_kwargs(**{"output_type": "latent", "num_inference_steps": 2, **overrides})
    return np.asarray(pipe(generator=torch.Generator().manual_seed(0), **kwargs).frames)


def test_a_rule_filtered_to_the_vace_blocks_biases_only_the_control_stream(pipe, image):
    vanilla = run(pipe, reference_images=image)
    rule = at.Rule(at.frames[1:], at.frames[0], at.bias(-3.0), layers=r"vace_blocks\..*")
    with at.steer(pipe, rule) as steering:
        steered = run(pipe, reference_images=image)
    assert steering.summary()["rules"][0]["layers"] == [f"transformer.vace_blocks.{j}.attn1" for j in range(VACE_BLOCKS)]
    frames, calls = 3, []
    counter = ForwardCounter(pipe.transformer)

    def extra(q):  # both branches; the first VACE_BLOCKS self-attention calls of each forward are the VACE ones
        calls.append(counter.count)
        in_forward = sum(1 for c in calls if c == counter.count) - 1
        if in_forward >= VACE_BLOCKS:
            return None
        return frame_bias(q.shape[-2], 0, frames, PER_FRAME, -3.0, list(range(q.shape[0])), q.shape[0])

    try:
        with DenseAttention(extra, seq_len=frames * PER_FRAME):
            reference = run(pipe, reference_images=image)
    finally:
        counter.remove()
    assert len(calls) == (counter.count + 1) * (VACE_BLOCKS + MAIN_BLOCKS)
    assert np.abs(steered - vanilla).max() > 1e-3
    np.testing.assert_allclose(steered, reference, atol=1e-4)


def test_layer_order_is_call_order_and_main_blocks_are_reachable_alone(pipe, image):
    with at.inspect(pipe) as rec:
        run(pipe, reference_images=image)
    assert sorted(rec.layers, key=rec.layers.get) == [f"transformer.vace_blocks.{j}.attn1" for j in range(VACE_BLOCKS)] + [
        f"transformer.blocks.{i}.attn1" for i in range(MAIN_BLOCKS)]
    rule = at.Rule(at.frames[1:], at.frames[0], at.bias(-1.0), layers=r"blocks\.\d+\.attn1")
    with at.steer(pipe, rule) as steering:
        run(pipe, reference_images=image)
    assert steering.summary()["rules"][0]["layers"] == [f"transformer.blocks.{i}.attn1" for i in range(MAIN_BLOCKS)]


def test_reference_frames_are_the_leading_frames_the_mask_keeps(pipe, image):
    with at.inspect(pipe) as rec:
        run(pipe, reference_images=[image, image])
    assert (rec.layout.num_frames, rec.layout.reference_frames) == (4, (0, 1))
    with at.inspect(pipe) as rec:
        run(pipe)  # text-to-video: every frame is generated
    assert (rec.layout.num_frames, rec.layout.reference_frames) == (2, ())
    with pytest.warns(at.AttnsteerWarning, match="never applied"), \
            at.steer(pipe, at.recipes.dymos(gamma=2.0, stop=1.0)) as steering:
        run(pipe)
    assert steering.summary()["rules"][0]["steps"] == []  # no reference frame: DyMoS has no keys to bias
