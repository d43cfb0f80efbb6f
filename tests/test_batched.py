"""Batched sweeps: K recipes as batch rows of one call equal K sequential runs (latents and recordings)."""

from __future__ import annotations

import pytest
import torch

import attnsteer as at
from attnsteer.sweeps.batched import batch_call_kwargs, chunks, run_batched
from attnsteer.cli import main
from attnsteer.errors import ConfigError, SteeringError
from attnsteer.contract.branches import item_of_rows
from attnsteer.testing import assert_close
from attnsteer.testing.tiny import build_tiny, test_image
from dense_reference import as_float64, to_dtype

GAMMAS = [-1.0, 0.6, 1.0]


def _sequential(pipe, kwargs, recipes):
    out = []
    for recipe in recipes:
        with at.inspect(pipe) as rec, at.steer(pipe, recipe):
            out.append((pipe(generator=torch.Generator().manual_seed(0), **kwargs).frames[0], rec))
    return out


@pytest.mark.exactness
@pytest.mark.parametrize("name", ["tiny-wan", "tiny-cogvideox"])  # separate forwards per branch; batched [uncond, cond]
def test_batched_equals_sequential(name):
    """In float64: a float32 layer's sums depend on the batch size through the CPU's matmul blocking (1.05e-5
    apart on tiny CogVideoX on one CPU); what stays float32 is the kernel's accumulation of the attention."""
    pipe, call_kwargs = build_tiny(name)
    to_dtype(pipe, torch.float64)
    kwargs = call_kwargs(prompt="a cat", output_type="latent", num_inference_steps=2, image=test_image())
    kwargs = {k: as_float64(v) for k, v in kwargs.items()}
    recipes = [at.recipes.dymos(gamma=g, stop=0.5) for g in GAMMAS]
    sequential = _sequential(pipe, kwargs, recipes)
    calls = []

    def generate(n):
        calls.append(n)
        return list(pipe(**batch_call_kwargs(pipe, kwargs, n, seed=0)).frames)

    batched = run_batched(pipe, recipes, generate, chunk=2)
    assert calls == [2, 1]  # chunked: two values in the first call, one in the second
    assert (sequential[0][0] - sequential[2][0]).abs().max() > 1e-2  # the values really differ
    for (latent, rec), (b_latent, b_rec) in zip(sequential, batched):
        assert_close(b_latent, latent, dtype=torch.float32)  # the kernel's float32 accumulation, once
        assert b_rec.branches == rec.branches == ["cond", "uncond"]
        for branch in ("cond", "uncond"):  # float32 sums of weights (at most 1) over the call's keys
            assert_close(b_rec.frame_map(branch=branch), rec.frame_map(branch=branch), magnitude=1.0,
                         ops=rec.layout.seq_len)


def test_item_of_rows_follows_the_branch_convention():
    assert item_of_rows(("uncond", "uncond", "cond", "cond"), 4, 2) == (0, 1, 0, 1)  # CogVideoX [uncond, cond]
    assert item_of_rows(("cond",) * 3, 3, 3) == (0, 1, 2)  # one branch's separate forward
    assert item_of_rows(None, 2, 2) == (0, 1)
    with pytest.raises(SteeringError, match="folds other axes"):
        item_of_rows(("cond",) * 6, 6, 2)  # e.g. frames folded into the batch


def test_batched_refuses_a_model_that_folds_frames_into_the_batch():
    pipe, call_kwargs = build_tiny("tiny-svd")
    kwargs = call_kwargs(num_inference_steps=2, output_type="latent", image=test_image(32))

    recipes = [at.recipes.dymos(gamma=g, stop=0.5) for g in (0.0, 1.0)]

    def generate(n):  # SVD takes no prompt: its batch comes from the images; it folds frames into attention rows
        batched = batch_call_kwargs(pipe, kwargs, n, seed=0)
        return list(pipe(**{**batched, "image": [kwargs["image"]] * n}).frames)

    with pytest.raises(SteeringError, match="folds other axes"):
        run_batched(pipe, recipes, generate, chunk=2)
    with pytest.raises(SteeringError, match="could not run 2 items batched"):  # generators beyond its batch of 1
        run_batched(pipe, recipes, lambda n: pipe(**batch_call_kwargs(pipe, kwargs, n, seed=0)).frames, chunk=2)


def test_batch_item_refusals():
    pipe, _ = build_tiny("tiny-wan")
    with pytest.raises(ConfigError, match="batch_item must be"):
        at.steer(pipe, at.recipes.dymos(gamma=1.0), batch_item=(2, 2))
    with pytest.raises(ConfigError, match="spatial maps"):
        at.inspect(pipe, maps=at.maps.onto(at.frames[0]), batch_item=(0, 2))
    with pytest.raises(ConfigError, match="chunk must be"):
        chunks([1, 2], 0)
    with pytest.raises(ConfigError, match="num_videos_per_prompt"):
        batch_call_kwargs(pipe, {"num_videos_per_prompt": 2}, 2, 0)


def test_cli_sweep_batch_matches_sequential(tmp_path):
    common = ["sweep", "--model", "tiny-wan", "--gamma", "0,1", "--stop", "0.5", "--steps", "2", "--format", "gif"]
    assert main([*common, "--out", str(tmp_path / "seq")]) == 0
    assert main([*common, "--batch", "2", "--out", str(tmp_path / "bat")]) == 0
    for g in ("gamma_0", "gamma_1"):
        a, b = (at.Record.load(tmp_path / d / f"{g}.npz") for d in ("seq", "bat"))
        torch.testing.assert_close(b.frame_map(branch="cond"), a.frame_map(branch="cond"), atol=1e-6, rtol=0)
    seq, bat = ((tmp_path / d / "metrics.txt").read_text() for d in ("seq", "bat"))
    assert seq == bat
