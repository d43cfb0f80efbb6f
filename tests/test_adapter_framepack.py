"""HunyuanVideo Framepack beyond the shared battery: the compressed history (4x, 2x) is a pair of condition
segments before the frames, the 1x history frame sits between the start image and the section, and padded text
is dropped by the model (batch 1), so the sequence length follows each forward's own text mask.

From the tiny config: 64x64 pixels, VAE /8 -> 8x8 latents; history 4x: 16 frames / (4, 8, 8) = 4 tokens,
history 2x: 2 frames / (2, 4, 4) = 4 tokens; then start image, 1x history and 3 section frames of 4x4 tokens;
then 16 SigLIP image tokens and the valid text tokens.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import attnsteer as at
from dense_reference import DenseAttention

pytestmark = pytest.mark.usefixtures("one_thread")
HISTORY, FRAMES, PER_FRAME, IMAGE_TOKENS, GAMMA = 8, 5, 16, 16, 2.0


@pytest.fixture(scope="module")
def pipe():
    from attnsteer.testing.tiny import tiny_framepack

    return tiny_framepack()


def run(pipe, image, **overrides):
    from attnsteer.testing.tiny import framepack_call_kwargs

    kwargs = framepack_call_kwargs(**{"output_type": "latent", "num_inference_steps": 2, **overrides})
    return np.asarray(pipe(image=image, generator=torch.Generator().manual_seed(0), **kwargs).frames)


def section_to_history(q: torch.Tensor) -> torch.Tensor:
    """[B, 1, S, S]: -GAMMA from the section's queries (frames 2..) to the history 4x/2x keys, every row and call."""
    seq = q.shape[-2]
    position = torch.arange(seq)
    section = (position >= HISTORY + 2 * PER_FRAME) & (position < HISTORY + FRAMES * PER_FRAME)
    bias = (section[:, None] & (position < HISTORY)[None, :]).double() * -GAMMA
    return bias.expand(q.shape[0], 1, seq, seq)


def test_a_rule_from_the_section_to_the_compressed_history_matches_dense(pipe, image):
    vanilla = run(pipe, image)
    rule = at.Rule(at.frames[2:], ~at.video & ~at.text, at.bias(-GAMMA), branch="all")
    with at.steer(pipe, rule):
        steered = run(pipe, image)
    with DenseAttention(section_to_history, seq_len=HISTORY + FRAMES * PER_FRAME + IMAGE_TOKENS + 8):
        reference = run(pipe, image)
    assert np.abs(steered - vanilla).max() > 1e-3
    np.testing.assert_allclose(steered, reference, atol=1e-4)


def test_padded_text_is_dropped_per_forward(pipe, image):
    masks = dict(prompt_attention_mask=torch.tensor([[1, 1, 1, 0, 0, 0, 0, 0]]),
                 negative_prompt_attention_mask=torch.tensor([[1, 0, 0, 0, 0, 0, 0, 0]]))
    lengths = []
    vanilla = run(pipe, image, **masks)
    with at.steer(pipe, at.recipes.dymos(gamma=GAMMA, stop=1.0)) as steering:
        steered = run(pipe, image, **masks)
    assert steering.summary()["rules"][0]["branches"] == ["cond"]

    def dymos_cond(q):  # conditional forwards have 3 valid text tokens, unconditional ones 1
        seq = q.shape[-2]
        lengths.append(seq)
        if seq != HISTORY + FRAMES * PER_FRAME + IMAGE_TOKENS + 3:
            return None
        position = torch.arange(seq)
        frame = torch.where((position >= HISTORY) & (position < HISTORY + FRAMES * PER_FRAME),
                            (position - HISTORY) // PER_FRAME, -1)
        bias = (((frame > 0)[:, None]) & (frame == 0)[None, :]).double() * -GAMMA
        return bias.expand(q.shape[0], 1, seq, seq)

    with DenseAttention(dymos_cond):
        reference = run(pipe, image, **masks)
    base = HISTORY + FRAMES * PER_FRAME + IMAGE_TOKENS
    assert {n for n in lengths if n >= base} == {base + 3, base + 1}
    assert np.abs(steered - vanilla).max() > 1e-3
    np.testing.assert_allclose(steered, reference, atol=1e-4)
