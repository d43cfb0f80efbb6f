"""SEG and query transforms against the authors' code, re-implemented here without attnsteer, in float64.

The reference transcribes SusungHong/SEG-SDXL's ``gaussian_blur_2d`` and infinite-blur branch (``pipeline_seg.py``;
its ``linspace`` runs in float64 here, as the whole test does) and applies it per latent frame to the queries of
the chosen self-attention module's SDPA calls (a test-local TorchFunctionMode) in a perturbed forward that plain
torch hooks add after each conditional forward, combined as the authors do:
``eps_c + (w - 1)(eps_c - eps_u) + s (eps_c - eps_seg)`` (= ``uncond + w (cond - uncond) + s (cond - seg)``).
The transformers run in float64; the pipelines' own float32 scheduler steps are the same on both sides.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

import attnsteer as at
from attnsteer import recipes
from attnsteer.language.query_transforms import blur_frames, seg_kernel_size
from attnsteer.testing.tiny import (cogvideox_call_kwargs, test_image, tiny_cogvideox, tiny_wan, wan_call_kwargs)
from attnsteer.testing.tolerance import assert_close
from dense_reference import float64_inputs, hook_state

pytestmark = pytest.mark.usefixtures("one_thread")

INF_BLUR_THRESHOLD = 9999.0


# --- the authors' blur, transcribed (SEG-SDXL pipeline_seg.py) ------------------------------------------
def authors_gaussian_blur_2d(img, kernel_size, sigma):
    height = img.shape[-1]
    kernel_size = min(kernel_size, height - (height % 2 - 1))
    ksize_half = (kernel_size - 1) * 0.5
    x = torch.linspace(-ksize_half, ksize_half, steps=kernel_size, dtype=torch.float64)
    pdf = torch.exp(-0.5 * (x / sigma).pow(2))
    x_kernel = pdf / pdf.sum()
    x_kernel = x_kernel.to(device=img.device, dtype=img.dtype)
    kernel2d = torch.mm(x_kernel[:, None], x_kernel[None, :])
    kernel2d = kernel2d.expand(img.shape[-3], 1, kernel2d.shape[0], kernel2d.shape[1])
    padding = [kernel_size // 2, kernel_size // 2, kernel_size // 2, kernel_size // 2]
    img = F.pad(img, padding, mode="reflect")
    return F.conv2d(img, kernel2d, groups=img.shape[-3])


def authors_blur(query_ptb, sigma):
    """The authors' processor on ``query_ptb`` [B, C, H, W]: the mean above the threshold, else the Gaussian."""
    if sigma > INF_BLUR_THRESHOLD:
        query_ptb = query_ptb.clone()
        query_ptb[:] = query_ptb.mean(dim=(-2, -1), keepdim=True)
        return query_ptb
    kernel_size = math.ceil(6 * sigma) + 1 - math.ceil(6 * sigma) % 2
    return authors_gaussian_blur_2d(query_ptb, kernel_size, sigma)


def blur_video_queries(q, sigma, text, frames, rows, cols):
    """q [B, H, N, D] (N = text + frames * rows * cols): every frame's queries blurred as the authors blur an image,
    channels = heads * head_dim; the text queries untouched."""
    b, h, n, d = q.shape
    video = q[:, :, text:].reshape(b, h, frames, rows, cols, d).permute(0, 2, 1, 5, 3, 4)  # [B, F, H, D, r, c]
    blurred = authors_blur(video.reshape(b * frames, h * d, rows, cols), sigma)
    back = blurred.reshape(b, frames, h, d, rows, cols).permute(0, 2, 1, 4, 5, 3).reshape(b, h, -1, d)
    return torch.cat([q[:, :, :text], back], dim=2)


class BlurQueries(TorchFunctionMode):
    """While active, self-attention SDPA calls get the blurred queries."""

    def __init__(self, sigma, text, grid):
        super().__init__()
        self.active, self.sigma, self.text, self.grid = False, sigma, text, grid

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention and self.active:
            names = ("query", "key", "value")
            named = {**dict(zip(names, args)), **kwargs}
            if named["query"].shape[-2] == named["key"].shape[-2]:
                named["query"] = blur_video_queries(named["query"], self.sigma, self.text, *self.grid)
                rest = {k: v for k, v in named.items() if k not in names}
                return func(named["query"], named["key"], named["value"], **rest)
        return func(*args, **kwargs)


def reference(pipe, run, module, sigma, scale, guidance, text, grid, batched, to_q=False):
    """The run with the authors' SEG in ``module`` (its SDPA queries, or its ``to_q`` output) and their combination."""
    mode, state = BlurQueries(sigma, text, grid), {"perturbing": False, "calls": 0}
    handles = []
    if to_q:
        def blur_projection(m, args, output):
            if not state["perturbing"]:
                return output
            q = output[:, None]  # [B, 1, N, C]: one "head" of every channel
            return blur_video_queries(q, sigma, text, *grid)[:, 0]
        handles.append(module.to_q.register_forward_hook(blur_projection))
    else:
        handles.append(module.register_forward_pre_hook(lambda m, a: setattr(mode, "active", state["perturbing"])))
        handles.append(module.register_forward_hook(lambda m, a, o: setattr(mode, "active", False)))

    def combine(model, args, kwargs, output):
        if state["perturbing"]:
            return output
        state["perturbing"] = True
        with mode:
            perturbed = model(*args, **kwargs)[0]
        state["perturbing"] = False
        pred = output[0]
        if batched:  # [uncond, cond]: u' with u' + w (c - u') = u + w (c - u) + s (c - seg)
            uncond, cond = pred.chunk(2)
            fold = scale * (cond - perturbed.chunk(2)[1]) / (1 - guidance)
            return (torch.cat([uncond + fold, cond]),) + tuple(output[1:])
        state["calls"] += 1
        if state["calls"] % 2 == 1:  # Wan: the conditional forward first in each step
            state["cond"], state["perturbed"] = pred, perturbed
            return output
        return (pred + scale * (state["cond"] - state["perturbed"]) / (1 - guidance),) + tuple(output[1:])

    handles.append(pipe.transformer.register_forward_hook(combine, with_kwargs=True))
    try:
        return run()
    finally:
        for handle in handles:
            handle.remove()


@pytest.fixture(scope="module")
def wan():
    pipe = tiny_wan()
    pipe.transformer.to(torch.float64)

    def run():
        kwargs = wan_call_kwargs(num_inference_steps=2, output_type="latent")
        return np.asarray(pipe(image=test_image(), generator=torch.Generator().manual_seed(0), **kwargs).frames[0])

    return pipe, run


@pytest.fixture(scope="module")
def cog():
    pipe = tiny_cogvideox()
    pipe.transformer.to(torch.float64)
    handle = pipe.transformer.register_forward_pre_hook(float64_inputs, with_kwargs=True)

    def run():
        kwargs = cogvideox_call_kwargs(num_inference_steps=2, output_type="latent")
        return np.asarray(pipe(image=test_image(), generator=torch.Generator().manual_seed(0), **kwargs).frames[0])

    yield pipe, run
    handle.remove()


WAN_GRID = (3, 4, 4)  # 9 frames -> 3 latent frames; 64 px / 8 (VAE) / 2 (patch) = 4 x 4 tokens
COG_TEXT, COG_GRID = 16, (3, 4, 4)  # 16 text tokens before the video


def _close(got, expected):
    """The runs differ only by float64 rounding in the transformers, then by the same float32 scheduler steps."""
    assert_close(got, expected, dtype=torch.float32, ops=64)


# --- the blur itself ---------------------------------------------------------------------------------
@pytest.mark.parametrize("sigma", [0.3, 0.5, 1.0, 2.0, 10.0, 9999.0, 1e4, 9999999.0])
def test_blur_matches_the_authors_kernel_per_frame(sigma):
    q = torch.randn(2, 3, 6, 6, 5, dtype=torch.float64)  # [b, F, h, w, C]
    got = blur_frames(q, sigma)
    expected = authors_blur(q.permute(0, 1, 4, 2, 3).reshape(6, 5, 6, 6), sigma)
    expected = expected.reshape(2, 3, 5, 6, 6).permute(0, 1, 3, 4, 2)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_kernel_size_and_infinite_blur_threshold_are_the_authors():
    assert [seg_kernel_size(s) for s in (0.001, 0.5, 1.0, 1.2, 2.0)] == [1, 3, 7, 9, 13]
    q = torch.randn(1, 2, 4, 4, 3, dtype=torch.float64)
    frame_means = q.mean(dim=(2, 3), keepdim=True).expand_as(q)
    torch.testing.assert_close(blur_frames(q, 9999.5), frame_means, rtol=0, atol=1e-15)  # > 9999.0: the mean
    assert not torch.allclose(blur_frames(q, 9999.0), frame_means)  # 9999.0 itself is a (capped) Gaussian


def test_tiny_sigma_leaves_the_queries_exactly_as_they_are():
    q = torch.randn(2, 3, 4, 5, 7, dtype=torch.float64)
    assert torch.equal(blur_frames(q, 1e-3), q)


# --- the recipe against the authors' SEG ------------------------------------------------------------
@pytest.mark.parametrize("sigma", [1.0, 9999999.0], ids=["gaussian", "infinite"])
def test_seg_on_wan_matches_the_authors_blur_and_guidance(wan, sigma):
    pipe, run = wan
    vanilla = run()
    before = hook_state(pipe.transformer)
    expected = reference(pipe, run, pipe.transformer.blocks[1].attn1, sigma, 3.0, 5.0, 0, WAN_GRID, batched=False)
    with at.steer(pipe, recipes.seg(scale=3.0, sigma=sigma, layers="1")) as steering:
        got = run()
    _close(got, expected)
    assert not np.allclose(got, vanilla, atol=1e-3)  # the guidance changes the video
    assert steering.summary()["attention_calls_steered"] > 0
    after = hook_state(pipe.transformer)  # the root gains diffusers' own cache-context registry in a run
    assert after[1:] == before[1:] and after[0][2:] == before[0][2:]


def test_seg_on_batched_cogvideox_blurs_the_video_queries_only(cog):
    """Joint text + video self-attention with q-norm and RoPE, [uncond, cond] in one forward: the text queries
    stay, each frame's video queries are blurred after q-norm and RoPE."""
    pipe, run = cog
    module = pipe.transformer.transformer_blocks[0].attn1
    expected = reference(pipe, run, module, 1.0, 2.0, 6.0, COG_TEXT, COG_GRID, batched=True)
    with at.steer(pipe, recipes.seg(scale=2.0, sigma=1.0, layers="0")):
        got = run()
    _close(got, expected)


def test_to_q_placement_blurs_the_projection_before_q_norm_and_rope(cog):
    pipe, run = cog
    module = pipe.transformer.transformer_blocks[1].attn1
    expected = reference(pipe, run, module, 1.0, 2.0, 6.0, COG_TEXT, COG_GRID, batched=True, to_q=True)
    with at.steer(pipe, recipes.seg(scale=2.0, sigma=1.0, layers="1", placement="to_q")):
        got = run()
    _close(got, expected)
    authors = reference(pipe, run, module, 1.0, 2.0, 6.0, COG_TEXT, COG_GRID, batched=True)
    assert not np.allclose(got, authors, atol=1e-4)  # q-norm and RoPE make the two placements differ


def test_tiny_sigma_perturbed_branch_is_the_unperturbed_one(wan):
    """sigma 0.001: a 1-tap kernel, the perturbed forward equals the conditional one, so s (cond - seg) = 0."""
    pipe, run = wan
    vanilla = run()
    with at.steer(pipe, recipes.seg(scale=3.0, sigma=0.001, layers="0,1")) as steering:
        got = run()
    _close(got, vanilla)
    assert steering.summary()["attention_calls_steered"] > 0


def test_a_user_query_transform_sees_frame_grids_and_can_be_the_mean(wan):
    pipe, run = wan
    seen = []

    def frame_mean(q):
        seen.append((tuple(q.shape), q.dtype))
        return q.mean(dim=(2, 3), keepdim=True).expand_as(q).clone()

    rule = at.Rule(at.video, at.tokens, at.query_transform(frame_mean), branch="perturbed", layers=[1])
    with at.steer(pipe, at.Recipe("mine", (rule,), guidance=at.PerturbedGuidance(3.0))):
        got = run()
    with at.steer(pipe, recipes.seg(scale=3.0, sigma=1e7, layers="1")):
        expected = run()
    np.testing.assert_array_equal(got, expected)
    heads, head_dim = pipe.transformer.config.num_attention_heads, pipe.transformer.config.attention_head_dim
    assert set(seen) == {((1, *WAN_GRID, heads * head_dim), torch.float64)}


def test_default_layers_steer_the_middle_third(wan, cog):
    for pipe, run in (wan, cog):
        with at.steer(pipe, recipes.seg()) as steering:
            run()
        assert steering.summary()["attention_calls_steered"] > 0


def test_model_is_clean_after_an_exception(wan):
    pipe, run = wan
    vanilla = run()
    before = hook_state(pipe.transformer)
    with pytest.raises(RuntimeError, match="boom"):
        with at.steer(pipe, recipes.seg(sigma=1.0, layers="1", placement="to_q")):
            run()
            raise RuntimeError("boom")
    after = hook_state(pipe.transformer)
    assert after[1:] == before[1:] and after[0][2:] == before[0][2:]
    np.testing.assert_array_equal(run(), vanilla)


def test_fused_projections_refuse_the_to_q_placement_by_name(wan):
    pipe, run = wan
    pipe.transformer.fuse_qkv_projections()
    try:
        before = hook_state(pipe.transformer)
        with pytest.raises(at.SteeringError, match=r"never called its to_q projection.*placement='attention'"):
            with at.steer(pipe, recipes.seg(sigma=1.0, layers="1", placement="to_q")):
                run()
        after = hook_state(pipe.transformer)  # the to_q hook and the session's hooks are gone
        assert after[1:] == before[1:] and after[0][2:] == before[0][2:]
        with at.steer(pipe, recipes.seg(sigma=1.0, layers="1")) as steering:  # after q-norm and RoPE: reached
            run()
        assert steering.summary()["attention_calls_steered"] > 0
    finally:
        pipe.transformer.unfuse_qkv_projections()


def test_bad_input_is_refused_naming_the_field(cog):
    with pytest.raises(at.ConfigError, match=r"query_blur\(sigma\) must be > 0"):
        at.query_blur(0)
    with pytest.raises(at.ConfigError, match="placement must be one of"):
        at.query_blur(1.0, placement="after_rope")
    with pytest.raises(at.ConfigError, match="seg\\(placement=...\\) must be one of"):
        recipes.seg(placement="q")
    with pytest.raises(at.ConfigError, match="Rule.key must be at.tokens"):
        at.Rule(at.video, at.frames[0], at.query_mean())
    with pytest.raises(at.ConfigError, match="Rule.heads must be None"):
        at.Rule(at.video, at.tokens, at.query_mean(placement="to_q"), heads=[0])
    with pytest.raises(at.ConfigError, match="seg\\(scale=...\\) must be >= 0"):
        recipes.seg(scale=-1.0)
    pipe, run = cog
    with pytest.raises(at.SteeringError, match="selects other tokens too"):  # text queries have no frame grid
        with at.steer(pipe, at.Rule(at.tokens, at.tokens, at.query_mean(), layers=[0])):
            run()
    wrong = at.query_transform(lambda q: q[..., :1], name="narrow")
    with pytest.raises(at.ConfigError, match=r"query_transform\(narrow\) must return a tensor of its input's shape"):
        with at.steer(pipe, at.Rule(at.video, at.tokens, wrong, layers=[0])):
            run()


def test_cli_runs_seg_on_the_toy_model(tmp_path):
    from attnsteer.cli import main

    assert main(["run", "--model", "toy", "--recipe", "seg", "--sigma", "1.0", "--steps", "2",
                 "--out", str(tmp_path)]) == 0
    assert (tmp_path / "run.json").exists()


def test_query_transforms_declare_their_kind_and_subclass_the_public_base():
    for transform in (at.query_blur(1.0), at.query_mean(), at.query_transform(lambda q: q, placement="to_q")):
        assert transform.kind == "query" and isinstance(transform, at.QueryTransform)


def test_temporal_self_attention_has_no_frame_grid_and_is_refused_by_name():
    from attnsteer.testing.tiny import build_tiny

    pipe, call_kwargs = build_tiny("tiny-latte")
    with pytest.raises(at.SteeringError, match=r"temporal_transformer_blocks.*no per-frame token grid"):
        with at.steer(pipe, recipes.seg(sigma=1.0)):
            pipe(generator=torch.Generator().manual_seed(0), **call_kwargs(num_inference_steps=1, output_type="latent"))
