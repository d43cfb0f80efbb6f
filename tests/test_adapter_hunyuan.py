"""HunyuanVideo: dual- and single-stream joint attention (video first, then padded text), branch by forward order.

The transformer is driven directly, as the pipeline does (no text encoders can be built offline):
two forwards per step, conditional first, when true CFG is on.
"""

from __future__ import annotations

import pytest
import torch

import attnsteer as at
from dense_reference import DenseAttention, ForwardCounter, frame_bias

FRAMES, SIDE, TEXT, VALID_TEXT = 3, 4, 6, 4
VIDEO = FRAMES * SIDE * SIDE
SEQ = VIDEO + TEXT


@pytest.fixture(scope="module")
def transformer():
    from diffusers import HunyuanVideoTransformer3DModel

    torch.manual_seed(0)
    return HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10, num_layers=1,
        num_single_layers=1, num_refiner_layers=1, patch_size=1, patch_size_t=1, guidance_embeds=True,
        text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 4, 4),
    ).eval()


def denoise(transformer, steps=3, true_cfg=True):
    """A tiny flow-matching loop: per step a conditional forward, then (true CFG) an unconditional one."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, FRAMES, SIDE, SIDE, generator=g)
    text, null = torch.randn(1, TEXT, 16, generator=g), torch.randn(1, TEXT, 16, generator=g)
    mask = torch.zeros(1, TEXT, dtype=torch.long)
    mask[:, :VALID_TEXT] = 1
    pooled, guidance = torch.randn(1, 8, generator=g), torch.tensor([6000.0])
    with torch.no_grad():
        for t in torch.linspace(1000, 400, steps):
            args = dict(hidden_states=x, timestep=t[None], encoder_attention_mask=mask, pooled_projections=pooled,
                        guidance=guidance, return_dict=False)
            v = transformer(encoder_hidden_states=text, **args)[0]
            if true_cfg:
                v = v + 2.0 * (v - transformer(encoder_hidden_states=null, **args)[0])
            x = x - 0.2 * v
    return x


def test_identity_and_clean_exit(transformer):
    vanilla = denoise(transformer)
    with at.steer(transformer, at.recipes.dymos(gamma=0.0, stop=1.0), num_steps=3):
        torch.testing.assert_close(denoise(transformer), vanilla, atol=1e-5, rtol=1e-5)
    assert torch.equal(denoise(transformer), vanilla)
    assert not any(hasattr(m, "_diffusers_hook") or "forward" in m.__dict__ for _, m in transformer.named_modules())


@pytest.mark.parametrize("true_cfg", [True, False])
def test_dymos_on_the_conditional_forward_matches_dense(transformer, true_cfg):
    vanilla = denoise(transformer, true_cfg=true_cfg)
    with at.steer(transformer, at.recipes.dymos(gamma=2.0, until_step=2)) as steering:
        steered = denoise(transformer, true_cfg=true_cfg)
    layers = steering.summary()["rules"][0]["layers"]
    assert set(layers) == {"transformer_blocks.0.attn", "single_transformer_blocks.0.attn"}
    counter = ForwardCounter(transformer)
    per_step = 2 if true_cfg else 1

    def extra(q):
        step, cond = divmod(counter.count, per_step)
        if cond != 0 or step >= 2:
            return None
        return frame_bias(SEQ, 0, FRAMES, SIDE * SIDE, -2.0, [0], 1)

    try:
        with DenseAttention(extra, seq_len=SEQ):
            reference = denoise(transformer, true_cfg=true_cfg)
    finally:
        counter.remove()
    assert (steered - vanilla).abs().max() > 1e-3
    torch.testing.assert_close(steered, reference, atol=1e-4, rtol=1e-4)


def test_frame_map_and_text_mass_with_padded_text(transformer):
    groups = torch.cat([torch.arange(FRAMES).repeat_interleave(SIDE * SIDE), torch.full((TEXT,), FRAMES)])
    dense = DenseAttention(groups=lambda q: groups, seq_len=SEQ)
    with dense:
        denoise(transformer, steps=1)
    with at.inspect(transformer) as rec:
        denoise(transformer, steps=1)
    assert rec.frame_map().shape == (FRAMES, FRAMES)
    for call, mass in enumerate(dense.masses):
        forward, layer = divmod(call, 2)
        branch = ("cond", "uncond")[forward]
        expected = mass[0].mean(0)
        torch.testing.assert_close(rec.frame_map(layers=[layer], branch=branch).double(), expected[:FRAMES, :FRAMES],
                                   atol=1e-5, rtol=0)
        torch.testing.assert_close(rec.text_mass(layers=[layer], branch=branch).double(), expected[:FRAMES, FRAMES],
                                   atol=1e-5, rtol=0)
    torch.testing.assert_close(rec.frame_map().sum(-1) + rec.text_mass(), torch.ones(FRAMES), atol=1e-5, rtol=0)
