"""CogVideoX and CogVideoX 1.5 I2V beyond the shared battery (tests/test_families.py): the unconditional
branch, no guidance, ``at.text`` rules, a processor that bypasses SDPA, CogVideoX 1.5's temporal patch.

The dense references take the token geometry from the pipeline's config and call arguments only:
text first (max_sequence_length tokens), then video frame-major, 2x2 latent pixels per token, and
for CogVideoX 1.5 two latent frames per token frame after the pipeline pads the latent frames to
an even count.
"""

from __future__ import annotations

import math

import attrs
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import CogVideoXAttnProcessor2_0
from torch.overrides import TorchFunctionMode

import attnsteer as at
from dense_reference import DenseAttention, ForwardCounter, frame_bias

pytestmark = pytest.mark.usefixtures("one_thread")


@attrs.frozen
class Geometry:
    """Token geometry of one call: text tokens, token frames, tokens per token frame."""

    text: int
    frames: int
    per_frame: int

    @property
    def seq(self) -> int:
        return self.text + self.frames * self.per_frame

    @classmethod
    def of(cls, pipe, kwargs) -> Geometry:
        config = pipe.transformer.config
        latent_frames = (kwargs["num_frames"] - 1) // pipe.vae_scale_factor_temporal + 1
        patch_t = config.patch_size_t or 1
        padded = math.ceil(latent_frames / patch_t) * patch_t  # the pipeline pads to a multiple of patch_size_t
        side = kwargs["height"] // pipe.vae_scale_factor_spatial // config.patch_size
        return cls(text=kwargs["max_sequence_length"], frames=padded // patch_t, per_frame=side * side)

    def groups(self) -> torch.Tensor:
        """Frame of each video token, and group ``frames`` for the text tokens."""
        video = torch.arange(self.frames).repeat_interleave(self.per_frame)
        return torch.cat([torch.full((self.text,), self.frames), video])


def make_runner(pipe, call_kwargs):
    from attnsteer.testing.tiny import test_image

    def run(**overrides):
        kwargs = call_kwargs(**{"output_type": "latent", **overrides})
        return np.asarray(pipe(image=test_image(), generator=torch.Generator().manual_seed(0), **kwargs).frames[0])

    run.geometry = Geometry.of(pipe, call_kwargs())
    return run


@pytest.fixture(scope="module")
def pipe():
    from attnsteer.testing.tiny import tiny_cogvideox

    return tiny_cogvideox()


@pytest.fixture(scope="module")
def pipe15():
    from attnsteer.testing.tiny import tiny_cogvideox15

    return tiny_cogvideox15()


@pytest.fixture
def run(pipe):
    from attnsteer.testing.tiny import cogvideox_call_kwargs

    return make_runner(pipe, cogvideox_call_kwargs)


def dense_dymos(pipe, run, gamma, until_step, rows, **overrides):
    """DyMoS computed densely, one forward per step; ``rows`` are the batch rows to bias."""
    g = run.geometry
    counter = ForwardCounter(pipe.transformer)

    def extra(q):
        if counter.count >= until_step:
            return None
        return frame_bias(g.seq, g.text, g.frames, g.per_frame, -gamma, rows, q.shape[0])

    try:
        with DenseAttention(extra, seq_len=g.seq):
            return run(**overrides)
    finally:
        counter.remove()


def assert_clean(pipe):
    assert not any(hasattr(m, "_diffusers_hook") or "forward" in m.__dict__
                   for name, m in pipe.transformer.named_modules() if name)


def test_uncond_branch_rule_hits_the_first_half(pipe, run):
    with at.steer(pipe, at.recipes.dymos(gamma=2.0, until_step=2, branch="uncond")):
        steered = run()
    np.testing.assert_allclose(steered, dense_dymos(pipe, run, 2.0, 2, rows=[0]), atol=1e-4)


def test_no_guidance_means_every_row_is_conditional(pipe, run):
    with at.steer(pipe, at.recipes.dymos(gamma=2.0, until_step=2)):
        steered = run(guidance_scale=1.0)
    np.testing.assert_allclose(steered, dense_dymos(pipe, run, 2.0, 2, rows=[0], guidance_scale=1.0), atol=1e-4)


def test_text_selector_works_on_joint_sequences(pipe, run):
    vanilla = run()
    with at.steer(pipe, at.Rule(at.video, at.text, at.block(), when=at.steps(stop=1))):
        blocked = run()
    assert np.abs(blocked - vanilla).max() > 1e-3


class AttentionByHand(TorchFunctionMode):
    """Answers F.scaled_dot_product_attention with an explicit softmax, so F.sdpa itself never runs."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.scaled_dot_product_attention:
            q, k, v = args[:3]
            return (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(-1) @ v
        return func(*args, **(kwargs or {}))


class ByHandProcessor(CogVideoXAttnProcessor2_0):
    """CogVideoX's processor (same signature: Attention filters kwargs by it), attention computed by hand."""

    def __call__(self, attn, hidden_states, encoder_hidden_states, attention_mask=None, image_rotary_emb=None):
        with AttentionByHand():
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)


def test_a_processor_that_bypasses_sdpa_makes_active_rules_raise(pipe, run):
    original = pipe.transformer.attn_processors
    pipe.transformer.set_attn_processor(ByHandProcessor())
    try:
        with pytest.raises(at.SteeringError, match="without calling torch.nn.functional.scaled_dot_product_attention"):
            with at.steer(pipe, at.recipes.dymos(gamma=2.0, until_step=1)):
                run(num_inference_steps=1)
    finally:
        pipe.transformer.set_attn_processor(original)
    assert_clean(pipe)


def test_frames_not_a_multiple_of_the_temporal_patch_raise(pipe15):
    from attnsteer.contract.registry import require_adapter

    inputs = dict(hidden_states=torch.zeros(1, 5, 8, 8, 8), encoder_hidden_states=torch.zeros(1, 16, 32))
    with pytest.raises(at.SteeringError, match="patch_size_t=2"):
        require_adapter(pipe15.transformer).layout(pipe15.transformer, inputs)
