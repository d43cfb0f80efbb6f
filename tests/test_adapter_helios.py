"""Helios beyond the shared battery: the long and mid history are condition segments before the frames, the short
history (kept first frame, 1x history) precedes the chunk's frames, history keys are amplified by the model before
the kernel (so steering sees the model's own logits), no kept first frame means no reference frame, and what
cannot be laid out (a reduced-resolution pyramid stage, cross-attention rules) is refused.

From the tiny config: 32x32 pixels, VAE /8 -> 4x4 latents; history sizes [4, 2, 1]: long 4 frames padded to
(4, 8, 8) = 1 token, mid 2 frames padded to (2, 4, 4) = 1 token; then the kept first frame, one 1x history frame
and the chunk's 2 frames of 2x2 tokens.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import attnsteer as at
from dense_reference import DenseAttention, frame_bias

pytestmark = pytest.mark.usefixtures("one_thread")
HISTORY, FRAMES, PER_FRAME, GAMMA = 2, 4, 4, 2.0
SEQ = HISTORY + FRAMES * PER_FRAME


@pytest.fixture(scope="module")
def pipe():
    from attnsteer.testing.tiny import tiny_helios

    return tiny_helios()


def run(pipe, image, **overrides):
    from attnsteer.testing.tiny import helios_call_kwargs

    kwargs = helios_call_kwargs(**{"output_type": "latent", "num_inference_steps": 2, **overrides})
    kwargs = {k: v for k, v in kwargs.items() if v is not None}  # the pyramid pipeline takes no num_inference_steps
    return np.asarray(pipe(image=image, generator=torch.Generator().manual_seed(0), **kwargs).frames)


def chunk_to_history(q: torch.Tensor) -> torch.Tensor:
    """[B, 1, S, S]: -GAMMA from the chunk's queries (frames 2, 3) to the long and mid history tokens and the 1x
    history frame (frame 1), every row and call."""
    position = torch.arange(SEQ)
    chunk = position >= HISTORY + 2 * PER_FRAME
    keys = (position < HISTORY) | ((position >= HISTORY + PER_FRAME) & (position < HISTORY + 2 * PER_FRAME))
    return ((chunk[:, None] & keys[None, :]).double() * -GAMMA).expand(q.shape[0], 1, SEQ, SEQ)


def test_a_rule_from_the_chunk_to_the_history_matches_dense(pipe, image):
    vanilla = run(pipe, image)
    rule = at.Rule(at.frames[-2:], ~at.video | at.frames[1], at.bias(-GAMMA), branch="all")
    with at.steer(pipe, rule):
        steered = run(pipe, image)
    with DenseAttention(chunk_to_history, seq_len=SEQ):
        reference = run(pipe, image)
    assert np.abs(steered - vanilla).max() > 1e-3
    np.testing.assert_allclose(steered, reference, atol=1e-4)


def test_the_history_keys_are_amplified_in_the_tiny_model(pipe, image):
    """The battery's exact checks ran with amplified history keys: switching amplification off changes the output."""
    vanilla = run(pipe, image)
    attentions = [block.attn1 for block in pipe.transformer.blocks]
    try:
        for attn in attentions:
            attn.is_amplify_history = False
        plain = run(pipe, image)
    finally:
        for attn in attentions:
            attn.is_amplify_history = True
    assert np.abs(plain - vanilla).max() > 1e-3


def test_without_the_kept_first_frame_no_frame_is_the_reference(pipe):
    """keep_first_frame=False (its pipeline path fails in diffusers 0.42: called on the model) puts the short history
    after the long and mid history in time: its frame 0 is no kept first frame."""
    torch.manual_seed(0)
    latents = lambda frames: torch.randn(1, 16, frames, 4, 4)  # noqa: E731
    index = lambda start, stop: torch.arange(start, stop)[None]  # noqa: E731
    inputs = dict(
        hidden_states=latents(2), timestep=torch.tensor([500.0]), encoder_hidden_states=torch.randn(1, 8, 16),
        latents_history_long=latents(4), latents_history_mid=latents(2), latents_history_short=latents(2),
        indices_latents_history_long=index(0, 4), indices_latents_history_mid=index(4, 6),
        indices_latents_history_short=index(6, 8), indices_hidden_states=index(8, 10),
    )
    with at.inspect(pipe.transformer) as rec:
        pipe.transformer(**inputs)
    assert (rec.layout.num_frames, rec.layout.video_start, rec.layout.reference_frames) == (FRAMES, HISTORY, ())
    rule = at.Rule(at.frames.generated, at.frames.reference, at.bias(-GAMMA), branch="all")
    with pytest.warns(at.AttnsteerWarning, match="selected no"):
        with at.steer(pipe.transformer, rule):
            pipe.transformer(**inputs)
    kept = {**inputs, "indices_latents_history_short": torch.tensor([[0, 7]]),
            "indices_latents_history_long": index(1, 5), "indices_latents_history_mid": index(5, 7)}
    with at.inspect(pipe.transformer) as rec:
        pipe.transformer(**kept)
    assert rec.layout.reference_frames == (0,)


def test_dymos_biases_the_kept_first_frame(pipe, image):
    with at.steer(pipe, at.recipes.dymos(gamma=GAMMA, stop=1.0)):
        steered = run(pipe, image)
    cond = iter(range(10**6))  # forwards alternate cond, uncond; each has 2 layers

    def dymos(q):
        forward = next(cond) // 2
        rows = list(range(q.shape[0])) if forward % 2 == 0 else []
        return frame_bias(SEQ, HISTORY, FRAMES, PER_FRAME, -GAMMA, rows, q.shape[0])

    with DenseAttention(dymos, seq_len=SEQ):
        reference = run(pipe, image)
    np.testing.assert_allclose(steered, reference, atol=1e-4)


def test_text_to_video_over_two_chunks_restarts_the_steps_with_each_chunk(pipe):
    """10 frames make two chunks (5 frames each); each chunk runs its own 2 steps, DyMoS biases step 0 of both. Without
    an image the kept first frame is zeros in chunk 1 and the first generated latent frame in chunk 2."""
    def call(**overrides):
        from attnsteer.testing.tiny import helios_call_kwargs

        kwargs = helios_call_kwargs(output_type="latent", num_inference_steps=2, num_frames=10, **overrides)
        return np.asarray(pipe(generator=torch.Generator().manual_seed(0), **kwargs).frames)

    with at.steer(pipe, at.recipes.dymos(gamma=GAMMA, until_step=1)) as steering:
        steered = call()
    assert steering.summary()["rules"][0]["steps"] == [0]
    calls = iter(range(10**6))  # per chunk: step 0 cond, step 0 uncond, step 1 cond, step 1 uncond; 2 layers each

    def dymos(q):
        forward = next(calls) // 2
        rows = list(range(q.shape[0])) if forward % 4 == 0 else []
        return frame_bias(SEQ, HISTORY, FRAMES, PER_FRAME, -GAMMA, rows, q.shape[0])

    with DenseAttention(dymos, seq_len=SEQ):
        reference = call()
    assert steered.shape[2] == 2 * 2  # both chunks' latent frames
    assert np.abs(steered - call()).max() > 1e-3
    np.testing.assert_allclose(steered, reference, atol=1e-4)


def test_cross_attention_rules_are_refused(pipe, image):
    rule = at.Rule(at.video, at.text, at.bias(-1.0), attention="cross")
    with pytest.raises(at.SteeringError, match="video-only"):
        with at.steer(pipe, rule):
            run(pipe, image)


def test_pyramid_stages_below_full_resolution_are_refused_and_a_single_stage_is_steered(pipe, image):
    from diffusers import HeliosPyramidPipeline, HeliosScheduler

    def pyramid(steps: list[int]) -> HeliosPyramidPipeline:
        stages = len(steps)
        scheduler = HeliosScheduler(stages=stages, stage_range=[i / stages for i in range(stages + 1)],
                                    use_dynamic_shifting=True)
        p = HeliosPyramidPipeline(**{**pipe.components, "scheduler": scheduler})
        p.set_progress_bar_config(disable=True)
        return p

    def call(p, steps):
        return run(p, image, height=64, width=64, num_inference_steps=None, pyramid_num_inference_steps_list=steps)

    staged = pyramid([1, 1, 1])
    with pytest.raises(at.SteeringError, match="pyramid_num_inference_steps_list"):
        with at.steer(staged, at.recipes.dymos(gamma=GAMMA)):
            call(staged, [1, 1, 1])
    single = pyramid([2])
    vanilla = call(single, [2])
    with at.steer(single, at.recipes.dymos(gamma=GAMMA, stop=1.0)) as steering:
        steered = call(single, [2])
    assert steering.summary()["rules"][0]["steps"] == [0, 1]
    assert np.abs(steered - vanilla).max() > 1e-3
