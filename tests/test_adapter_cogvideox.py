"""CogVideoX I2V: joint text+video self-attention, both guidance branches batched as [uncond, cond]."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import attnsteer as at
from dense_reference import DenseAttention, ForwardCounter, frame_bias

TEXT, FRAMES, TOKENS_PER_FRAME = 16, 3, 16  # max_sequence_length, (9 - 1) // 4 + 1, (64 / 8 / 2) ** 2
SEQ = TEXT + FRAMES * TOKENS_PER_FRAME


@pytest.fixture(scope="module")
def pipe():
    from attnsteer.tiny import tiny_cogvideox

    return tiny_cogvideox()


@pytest.fixture
def run(pipe):
    from attnsteer.tiny import cogvideox_call_kwargs, test_image

    def run(**overrides):
        kwargs = cogvideox_call_kwargs(**{"output_type": "latent", **overrides})
        return np.asarray(pipe(image=test_image(), generator=torch.Generator().manual_seed(0), **kwargs).frames[0])

    return run


def dense_dymos(pipe, run, gamma, until_step, rows):
    """DyMoS with one forward per step; ``rows`` are the batch rows to bias."""
    counter = ForwardCounter(pipe.transformer)

    def extra(q):
        if counter.count >= until_step:
            return None
        return frame_bias(SEQ, TEXT, FRAMES, TOKENS_PER_FRAME, -gamma, rows, q.shape[0])

    try:
        with DenseAttention(extra, seq_len=SEQ):
            return run()
    finally:
        counter.remove()


def test_zero_bias_identity_and_clean_exit(pipe, run):
    vanilla = run()
    with at.steer(pipe, at.recipes.dymos(gamma=0.0, stop=1.0)):
        steered = run()
    np.testing.assert_allclose(steered, vanilla, atol=1e-5)
    assert np.array_equal(run(), vanilla)
    assert not any(hasattr(m, "_diffusers_hook") or "forward" in m.__dict__
                   for name, m in pipe.transformer.named_modules() if name)


def test_dymos_matches_dense_and_biases_only_the_second_half_of_the_batch(pipe, run):
    vanilla = run()
    with at.steer(pipe, at.recipes.dymos(gamma=2.0, until_step=2)) as steering:
        steered = run()
    assert np.abs(steered - vanilla).max() > 1e-3
    cond_second = dense_dymos(pipe, run, 2.0, 2, rows=[1])
    cond_first = dense_dymos(pipe, run, 2.0, 2, rows=[0])
    np.testing.assert_allclose(steered, cond_second, atol=1e-4)
    assert np.abs(steered - cond_first).max() > 1e-3, "rows swapped would have matched"
    assert steering.summary()["rules"][0]["branches"] == ["cond"]


def test_uncond_branch_rule_hits_the_first_half(pipe, run):
    with at.steer(pipe, at.recipes.dymos(gamma=2.0, until_step=2, branch="uncond")):
        steered = run()
    np.testing.assert_allclose(steered, dense_dymos(pipe, run, 2.0, 2, rows=[0]), atol=1e-4)


def test_no_guidance_means_every_row_is_conditional(pipe, run):
    with at.steer(pipe, at.recipes.dymos(gamma=2.0, until_step=2)):
        steered = run(guidance_scale=1.0)
    np.testing.assert_allclose(steered, dense_dymos(pipe, lambda: run(guidance_scale=1.0), 2.0, 2, rows=[0]), atol=1e-4)


def test_frame_maps_with_text_mass_match_dense(pipe, run):
    groups = torch.cat([torch.full((TEXT,), FRAMES), torch.arange(FRAMES).repeat_interleave(TOKENS_PER_FRAME)])
    dense = DenseAttention(groups=lambda q: groups, seq_len=SEQ)
    with dense:
        run(num_inference_steps=2)
    with at.inspect(pipe) as rec:
        run(num_inference_steps=2)
    assert len(dense.masses) == 2 * 2  # steps x layers, one forward per step
    for call, mass in enumerate(dense.masses):
        step, layer = divmod(call, 2)
        for row, branch in enumerate(("uncond", "cond")):
            expected = mass[row].mean(0)
            got = rec.frame_map(steps=[step], layers=[layer], branch=branch)
            torch.testing.assert_close(got.double(), expected[:FRAMES, :FRAMES], atol=1e-5, rtol=0)
            text = rec.text_mass(steps=[step], layers=[layer], branch=branch)
            torch.testing.assert_close(text.double(), expected[:FRAMES, FRAMES], atol=1e-5, rtol=0)
    torch.testing.assert_close(rec.frame_map().sum(-1) + rec.text_mass(), torch.ones(FRAMES), atol=1e-5, rtol=0)


def test_text_selector_works_on_joint_sequences(pipe, run):
    vanilla = run()
    with at.steer(pipe, at.Rule(at.video, at.text, at.block(), when=at.steps(stop=1))):
        blocked = run()
    assert np.abs(blocked - vanilla).max() > 1e-3
