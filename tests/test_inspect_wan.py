"""Recording frame-level attention on the tiny Wan I2V pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import attnsteer as at
from dense_reference import DenseAttention

TOKENS_PER_FRAME = 16
NUM_FRAMES = 3
NUM_LAYERS = 2
NUM_STEPS = 4


def dense_masses(run):
    """Per (step, layer, branch): the dense frame-to-frame mass, averaged over heads (batch of 1)."""
    dense = DenseAttention(groups=lambda q: torch.arange(q.shape[-2]) // TOKENS_PER_FRAME, seq_len=NUM_FRAMES * TOKENS_PER_FRAME)
    with dense:
        run()
    assert len(dense.masses) == NUM_STEPS * 2 * NUM_LAYERS
    out = {}
    for call, mass in enumerate(dense.masses):
        forward, layer = divmod(call, NUM_LAYERS)
        step, branch = forward // 2, ("cond", "uncond")[forward % 2]  # Wan: cond, then uncond, per step
        out[(step, layer, branch)] = mass[0].mean(0)
    return out


def test_frame_maps_equal_dense_computation_everywhere(wan_pipe, run_wan):
    vanilla = run_wan()
    with at.inspect(wan_pipe) as rec:
        recorded = run_wan()
    np.testing.assert_allclose(recorded, vanilla, atol=1e-6)
    assert rec.steps == list(range(NUM_STEPS)) and rec.branches == ["cond", "uncond"]
    for (step, layer, branch), expected in dense_masses(run_wan).items():
        got = rec.frame_map(steps=[step], layers=[layer], branch=branch)
        assert got.shape == (NUM_FRAMES, NUM_FRAMES)
        torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(rec.frame_map().sum(-1), torch.ones(NUM_FRAMES), atol=1e-5, rtol=0)
    with pytest.raises(at.ConfigError, match="no text tokens"):  # video-only self-attention: no silent zeros
        rec.text_mass()


def test_heads_are_kept_on_request(wan_pipe, run_wan):
    with at.inspect(wan_pipe, heads=True) as rec:
        run_wan()
    per_head = [rec.frame_map(heads=[h]) for h in range(2)]
    torch.testing.assert_close((per_head[0] + per_head[1]) / 2, rec.frame_map(), atol=1e-6, rtol=0)
    assert not torch.allclose(per_head[0], per_head[1])
    with at.inspect(wan_pipe) as pooled:
        run_wan()
    with pytest.raises(at.ConfigError, match="heads=True"):
        pooled.frame_map(heads=[0])


def test_inspect_with_steer_records_the_steered_attention(wan_pipe, run_wan):
    with at.steer(wan_pipe, at.recipes.dymos(gamma=2.0, until_step=2)):
        steered = run_wan()
    with at.inspect(wan_pipe) as vanilla:
        run_wan()
    with at.inspect(wan_pipe) as rec, at.steer(wan_pipe, at.recipes.dymos(gamma=2.0, until_step=2)):
        both = run_wan()
    np.testing.assert_allclose(both, steered, atol=1e-6)
    for layer in range(NUM_LAYERS):
        for step in range(NUM_STEPS):
            for branch in ("cond", "uncond"):
                steps, mine = rec.reference_mass(by="step", layers=[layer], branch=branch)
                _, base = vanilla.reference_mass(by="step", layers=[layer], branch=branch)
                i = steps.index(step)
                if branch == "cond" and step < 2:
                    assert mine[i] < base[i] - 1e-3, (layer, step, branch)
                elif step == 0:  # the rule is off and the inputs of step 0 are the same: identical attention
                    assert abs(float(mine[i] - base[i])) < 1e-6, (layer, step, branch)
    delta = rec.diff(vanilla).frame_map(steps=[0], branch="cond")
    assert (delta[1:, 0] < 0).all()


def test_reference_mass_by_layer_and_save_load(wan_pipe, run_wan, tmp_path):
    with at.inspect(wan_pipe) as rec:
        run_wan()
    layers, curve = rec.reference_mass(by="layer")
    assert layers == [0, 1] and curve.shape == (2,)
    path = rec.save(tmp_path / "rec.npz")
    loaded = at.Record.load(path)
    assert loaded.layout == rec.layout and loaded.steps == rec.steps and loaded.timesteps == rec.timesteps
    torch.testing.assert_close(loaded.frame_map(branch="cond"), rec.frame_map(branch="cond"))
    assert loaded.metadata["model"] == "WanImageToVideoPipeline"


def test_selection_errors_name_what_was_recorded(wan_pipe, run_wan):
    with at.inspect(wan_pipe) as rec:
        run_wan()
    with pytest.raises(at.ConfigError, match=r"recorded steps \[0, 1, 2, 3\]"):
        rec.frame_map(steps=[9])
    with pytest.raises(at.ConfigError, match="branch must be one of"):
        rec.frame_map(branch="foo")
    with pytest.raises(at.ConfigError, match="empty"):
        at.Record().frame_map()
