"""Enhance-A-Video: the cross-frame-intensity readout, output transforms after the output projection,
and the recipe against the authors' formula on tiny Wan, CogVideoX and HunyuanVideo pipelines.

The reference is written here without attnsteer: the authors' ``enhance_score`` transcribed, fed
with the q and k of each module's SDPA call (read by a test-local TorchFunctionMode), and applied
by a plain forward hook on the modules the authors' injection picks, as their processors do.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention import AttentionModuleMixin
from diffusers.models.attention_processor import Attention
from torch.overrides import TorchFunctionMode

import attnsteer as at
from attnsteer.language.readouts import ReadoutCall
from attnsteer.testing import tiny
from attnsteer.testing.tiny import (cogvideox_call_kwargs, hunyuan_call_kwargs, tiny_cogvideox, tiny_hunyuan, tiny_wan,
                            wan_call_kwargs)
from attnsteer.testing.tolerance import assert_close
from dense_reference import float64_arguments, hook_state, to_dtype

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 2
SCORE_OPS = 256  # float32 roundings along a cross-frame score (a mean of a few hundred probabilities, see close)


# --- the authors' code, transcribed (enhance_a_video/enhance.py, models/*.py) -----------------------
def authors_enhance_score(query_image, key_image, head_dim, num_frames, enhance_weight):
    scale = head_dim**-0.5
    query_image = query_image * scale
    attn_temp = query_image @ key_image.transpose(-2, -1)
    attn_temp = attn_temp.to(torch.float32)
    attn_temp = attn_temp.softmax(dim=-1)
    attn_temp = attn_temp.reshape(-1, num_frames, num_frames)
    diag_mask = torch.eye(num_frames, device=attn_temp.device).bool()
    diag_mask = diag_mask.unsqueeze(0).expand(attn_temp.shape[0], -1, -1)
    attn_wo_diag = attn_temp.masked_fill(diag_mask, 0)
    num_off_diag = num_frames * num_frames - num_frames
    mean_scores = attn_wo_diag.sum(dim=(1, 2)) / num_off_diag
    enhance_scores = mean_scores.mean() * (num_frames + enhance_weight)
    enhance_scores = enhance_scores.clamp(min=1)
    return enhance_scores


def sdpa_qk(args, kwargs):
    """q and k of an F.scaled_dot_product_attention call, positional or by name."""
    named = {**dict(zip(("query", "key"), args)), **kwargs}
    return named["query"], named["key"]


def rearrange_per_location(x, num_frames):
    """einops ``"B N (T S) C -> (B S) N T C"``."""
    b, n, ts, c = x.shape
    return x.view(b, n, num_frames, ts // num_frames, c).permute(0, 3, 1, 2, 4).reshape(-1, n, num_frames, c)


class CaptureSDPA(TorchFunctionMode):
    """Passes every SDPA call through and keeps the q and k of self-attention calls."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            q, k = sdpa_qk(args, kwargs)
            if q.shape[-2] == k.shape[-2]:
                self.calls.append((q, k))
        return func(*args, **kwargs)


class AuthorsEnhance:
    """Enhance-A-Video injected the authors' way, with plain torch hooks (model untouched otherwise)."""

    def __init__(self, transformer, family, weight, modules=None, per_row=False):
        """``per_row=True`` scores each batch row on its own (not the authors' batch mean; for contrast)."""
        self.family, self.weight, self.capture, self.scores, self.per_row = family, weight, CaptureSDPA(), [], per_row
        config = transformer.config
        frames_of = {
            "wan": lambda h: h.shape[2] // config.patch_size[0],
            "cogvideox": lambda h: h.shape[1],
            "hunyuanvideo": lambda h: h.shape[2] // config.patch_size_t,
        }[family]
        chosen = modules or {
            "wan": lambda name: "attn1" in name,
            "cogvideox": lambda name: "attn" in name,
            "hunyuanvideo": lambda name: "attn" in name and "transformer_blocks" in name,
        }[family]

        def on_forward(module, args, kwargs):
            hidden_states = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            self.num_frames = frames_of(hidden_states)

        self.handles = [transformer.register_forward_pre_hook(on_forward, with_kwargs=True)]
        for name, module in transformer.named_modules():
            if chosen(name) and isinstance(module, (Attention, AttentionModuleMixin)):
                self.handles.append(module.register_forward_pre_hook(lambda m, a: self.capture.calls.clear()))
                self.handles.append(module.register_forward_hook(self.scale_output, with_kwargs=True))

    def scale_output(self, module, args, kwargs, output):
        (q, k), = self.capture.calls
        text = kwargs.get("encoder_hidden_states")
        if self.family == "cogvideox":
            q, k = q[:, :, text.shape[1]:], k[:, :, text.shape[1]:]
        elif self.family == "hunyuanvideo":
            q, k = q[:, :, : -text.shape[1]], k[:, :, : -text.shape[1]]
        t = self.num_frames
        if self.per_row:
            score = torch.stack([self.score(q[i : i + 1], k[i : i + 1], t) for i in range(q.shape[0])])[:, None, None]
            self.scores.append(score.flatten().tolist())
        else:
            score = self.score(q, k, t)
            self.scores.append(float(score))
        if isinstance(output, tuple):
            return (output[0] * score, output[1])
        return output * score

    def score(self, q, k, t):
        return authors_enhance_score(rearrange_per_location(q, t), rearrange_per_location(k, t), q.shape[-1], t,
                                     self.weight)

    def __enter__(self):
        self.capture.__enter__()
        return self

    def __exit__(self, *exc):
        self.capture.__exit__(*exc)
        for h in self.handles:
            h.remove()


# --- tiny pipelines ----------------------------------------------------------------------------------
FAMILIES = {
    "wan": (tiny_wan, wan_call_kwargs, 4.0),
    "cogvideox": (tiny_cogvideox, cogvideox_call_kwargs, 3.4),
    "hunyuanvideo": (tiny_hunyuan, hunyuan_call_kwargs, 4.0),
}


@pytest.fixture(scope="module")
def pipes():
    """The tiny pipelines in float64: whole float32 runs compared with each other differ by rounding that grows
    through the layers and steps by no bounded amount (attnsteer.testing.tolerance), float64 ones by ~1e-13."""
    built = {family: build() for family, (build, _, _) in FAMILIES.items()}
    for pipe in built.values():
        to_dtype(pipe, torch.float64)
    return built


def close(got, expected):
    """Latents of float64 pipelines whose one float32 computation is the cross-frame score (the authors cast the
    logits to float32; attnsteer's frame mass is float32): its rounding, over ``SCORE_OPS`` terms, reaches the
    latents in proportion to their size (a wrong weight or a missing clamp moves them by more than 1e-3)."""
    assert_close(got, expected, dtype=torch.float32, ops=SCORE_OPS)


def run_latents(pipe, family, **overrides):
    kwargs = float64_arguments(FAMILIES[family][1](**{"output_type": "latent", "num_inference_steps": STEPS,
                                                        **overrides}))
    out = pipe(image=tiny.test_image(), generator=torch.Generator().manual_seed(0), **kwargs).frames[0]
    return out.detach().clone()


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.exactness
def test_recipe_matches_authors_formula(pipes, family):
    pipe = pipes[family]
    with AuthorsEnhance(pipe.transformer, family, FAMILIES[family][2]) as reference:
        expected = run_latents(pipe, family)
    with at.steer(pipe, at.recipes.enhance_a_video()):
        got = run_latents(pipe, family)
    assert max(reference.scores) > 1.0  # the clamp does not make it a no-op here
    assert not torch.allclose(expected, run_latents(pipe, family), atol=1e-3)
    close(got, expected)


@pytest.mark.exactness
def test_explicit_weight_and_double_stream_only_on_hunyuan(pipes):
    pipe, pattern = pipes["hunyuanvideo"], r"transformer_blocks\.\d+\.attn"
    double = lambda name: re.fullmatch(pattern, name) is not None  # noqa: E731
    with AuthorsEnhance(pipe.transformer, "hunyuanvideo", 2.5, modules=double) as reference:
        expected = run_latents(pipe, "hunyuanvideo")
    with at.steer(pipe, at.recipes.enhance_a_video(weight=2.5, layers=pattern)) as steering:
        got = run_latents(pipe, "hunyuanvideo")
    assert steering.summary()["rules"][0]["layers"] == ["transformer.transformer_blocks.0.attn"]
    assert len(reference.scores) == 2 * STEPS  # one call per forward, cond and uncond forwards
    close(got, expected)


def test_cogvideox_batched_cfg_shares_one_score(pipes):
    """One score per call over both CFG halves (the authors' batch mean), not one per half: a reference
    scoring each half on its own gives other latents."""
    pipe = pipes["cogvideox"]
    with at.steer(pipe, at.recipes.enhance_a_video()):
        shared = run_latents(pipe, "cogvideox")
    with AuthorsEnhance(pipe.transformer, "cogvideox", 3.4, per_row=True) as per_half:
        separate = run_latents(pipe, "cogvideox")
    assert len(per_half.scores) == 2 * STEPS  # 2 modules x 1 batched forward per step, one score per half
    assert any(uncond != cond for uncond, cond in per_half.scores)
    assert (shared - separate).abs().max() > 1e-4


# --- output transforms: after the projection, on the selected rows --------------------------------
class ScaleRows:
    """Plain forward hooks multiplying the video rows from ``first_token`` on, in batch ``rows``, of module outputs."""

    def __init__(self, modules, factor, rows, first_token):
        self.handles = [m.register_forward_hook(lambda m, a, out: self.scale(out)) for m in modules]
        self.factor, self.rows, self.first = factor, rows, first_token

    def scale(self, output):
        video = output[0] if isinstance(output, tuple) else output
        video = video.clone()
        video[self.rows, self.first:] *= self.factor
        return (video, output[1]) if isinstance(output, tuple) else video

    def remove(self):
        for h in self.handles:
            h.remove()


def test_output_scale_rows_frames_and_branch_on_cogvideox(pipes):
    pipe = pipes["cogvideox"]
    blocks = [b.attn1 for b in pipe.transformer.transformer_blocks]
    per_frame = (64 // 8 // 2) ** 2
    reference = ScaleRows(blocks, 1.7, rows=[1], first_token=per_frame)  # batch [uncond, cond]; frames 1..
    try:
        expected = run_latents(pipe, "cogvideox")
    finally:
        reference.remove()
    rule = at.Rule(query=at.frames[1:], key=at.video, transform=at.output_scale(1.7), branch="cond")
    with at.steer(pipe, rule):
        got = run_latents(pipe, "cogvideox")
    torch.testing.assert_close(got, expected)  # float64 throughout: torch's float64 tolerances


class ScaleAttentionOutput(TorchFunctionMode):
    """Scales the SDPA output of self-attention calls of ``seq`` tokens: scaling before the projection."""

    def __init__(self, factor, seq):
        super().__init__()
        self.factor, self.seq = factor, seq

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func is F.scaled_dot_product_attention:
            q, k = sdpa_qk(args, kwargs)
            if q.shape[-2] == k.shape[-2] == self.seq:
                out = out * self.factor
        return out


def test_output_scale_is_after_the_projection_not_before(pipes):
    pipe = pipes["wan"]
    modules = [b.attn1 for b in pipe.transformer.blocks]
    assert all(m.to_out[0].bias is not None and m.to_out[0].bias.abs().max() > 0 for m in modules)
    reference = ScaleRows(modules, 2.0, rows=slice(None), first_token=0)
    try:
        after = run_latents(pipe, "wan")
    finally:
        reference.remove()
    with ScaleAttentionOutput(2.0, seq=3 * 16):
        before = run_latents(pipe, "wan")
    with at.steer(pipe, at.Rule(query=at.video, key=at.video, transform=at.output_scale(2.0))):
        got = run_latents(pipe, "wan")
    torch.testing.assert_close(got, after)  # float64 throughout: torch's float64 tolerances
    assert (got - before).abs().max() > 1e-3


def test_clean_exit_and_identity_without_rules(pipes):
    pipe = pipes["wan"]
    before = hook_state(pipe.transformer)
    vanilla = run_latents(pipe, "wan")
    with pytest.raises(RuntimeError, match="boom"):
        with at.steer(pipe, at.recipes.enhance_a_video()):
            run_latents(pipe, "wan")
            raise RuntimeError("boom")
    assert hook_state(pipe.transformer) == before
    torch.testing.assert_close(run_latents(pipe, "wan"), vanilla, atol=0, rtol=0)
    with at.steer(pipe, at.Rule(query=at.video, key=at.video, transform=at.output_scale(1.0))):
        torch.testing.assert_close(run_latents(pipe, "wan"), vanilla, atol=0, rtol=0)


# --- the readout against a dense computation ---------------------------------------------------------
def dense_cfi(q, k, positions, scale):
    """Mean over rows, heads and locations of the mean off-diagonal frame-to-frame probability (float64 loops);
    ``positions[t][s]`` is the token of frame t at location s."""
    frames, locations = len(positions), len(positions[0])
    total, count = 0.0, 0
    for b in range(q.shape[0]):
        for h in range(q.shape[1]):
            for s in range(locations):
                idx = [positions[t][s] for t in range(frames)]
                logits = (q[b, h, idx].double() * scale) @ k[b, h, idx].double().T
                p = logits.softmax(-1)
                total += float((p.sum() - p.diagonal().sum()) / (frames * frames - frames))
                count += 1
    return total / count


def random_layout(rng):
    frames, rows, cols = int(rng.integers(2, 6)), int(rng.integers(1, 4)), int(rng.integers(1, 4))
    text, where = int(rng.integers(1, 5)), rng.choice(["none", "before", "after"])
    video = frames * rows * cols
    if where == "before":
        return at.TokenLayout(frames, rows * cols, video_start=text, segments=[at.Segment("text", 0, text)],
                              grid=(rows, cols))
    if where == "after":
        return at.TokenLayout(frames, rows * cols, segments=[at.Segment("text", video, video + text)],
                              grid=(rows, cols))
    return at.TokenLayout(frames, rows * cols, grid=(rows, cols))


@pytest.mark.parametrize("seed", range(6))
def test_cross_frame_intensity_matches_dense(seed):
    rng = np.random.default_rng(seed)
    layout = random_layout(rng)
    b, h, d = int(rng.integers(1, 3)), int(rng.integers(1, 4)), int(rng.choice([4, 8]))
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(b, h, layout.seq_len, d, generator=g) * 2 for _ in range(2))
    per_frame, start = layout.tokens_per_frame, layout.video_start
    first = int(rng.integers(0, layout.num_frames - 1))  # keep >= 2 frames
    selector = at.frames[first:]
    tokens = selector.token_mask(at.SelectionContext(layout))
    positions = [[start + t * per_frame + s for s in range(per_frame)] for t in range(first, layout.num_frames)]
    scale = d**-0.5 * float(rng.uniform(0.5, 2))
    call = ReadoutCall(layout, tokens, scale, "wan")
    expected = dense_cfi(q, k, positions, scale)
    got = at.readouts.cross_frame_intensity().read(q, k, call)
    assert got.dtype == torch.float32 and got.dim() == 0
    assert math.isclose(float(got), expected, rel_tol=1e-5, abs_tol=1e-6)
    weight, frames = float(rng.uniform(-2, 6)), len(positions)
    scored = at.readouts.cross_frame_intensity(weight={"wan": weight}).read(q, k, call)
    assert math.isclose(float(scored), max(1.0, expected * (frames + weight)), rel_tol=1e-5, abs_tol=1e-6)


class LargestTensor(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor):
            self.numel = max(self.numel, out.numel())
        return out


def test_cross_frame_intensity_memory_is_linear_in_tokens():
    layout = at.TokenLayout(num_frames=4, tokens_per_frame=256, grid=(16, 16))
    n, b, h = layout.seq_len, 1, 2
    q, k = torch.randn(b, h, n, 8), torch.randn(b, h, n, 8)
    call = ReadoutCall(layout, torch.ones(n, dtype=torch.bool), 8**-0.5, "wan")
    with LargestTensor() as largest:
        at.readouts.cross_frame_intensity().read(q, k, call)
    assert largest.numel <= b * h * n * max(layout.num_frames, 8)  # O(N x T) (or the inputs), never N x N
    assert largest.numel < b * h * n * n // 100


# --- bad input and rules that cannot apply -----------------------------------------------------------
@pytest.mark.parametrize("bad", ["2", float("nan"), float("inf"), True, None])
def test_output_scale_rejects_bad_factors(bad):
    with pytest.raises(at.ConfigError, match="output_scale"):
        at.output_scale(bad)


@pytest.mark.parametrize("bad", ["4", float("inf"), {}, {"wan": "x"}, True])
def test_cross_frame_intensity_rejects_bad_weights(bad):
    with pytest.raises(at.ConfigError, match="weight"):
        at.readouts.cross_frame_intensity(weight=bad)


def test_rules_with_output_transforms_refuse_heads_and_pairs():
    with pytest.raises(at.ConfigError, match="Rule.heads"):
        at.Rule(query=at.video, key=at.video, transform=at.output_scale(2), heads=[0])
    with pytest.raises(at.ConfigError, match="Rule.pairs"):
        at.Rule(query=at.video, key=at.video, transform=at.output_scale(2), pairs=at.same_location())
    with pytest.raises(at.ConfigError, match="Rule.attention"):
        at.Rule(query=at.video, key=at.text, transform=at.output_scale(2), attention="cross")
    with pytest.raises(at.ConfigError, match="weight"):
        at.recipes.enhance_a_video(weight="high")
    with pytest.raises(at.ConfigError, match="layers"):
        at.recipes.enhance_a_video(layers=3)


class ToyAttention(torch.nn.Module):
    def __init__(self, dim=8, heads=2, calls=1, drop_rows=0):
        super().__init__()
        self.qkv, self.out = torch.nn.Linear(dim, 3 * dim), torch.nn.Linear(dim, dim)
        self.heads, self.calls, self.drop_rows = heads, calls, drop_rows

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = (t.view(b, n, self.heads, -1).transpose(1, 2) for t in self.qkv(x).chunk(3, dim=-1))
        for _ in range(self.calls):
            o = F.scaled_dot_product_attention(q, k, v)
        return self.out(o.transpose(1, 2).reshape(b, n, c))[:, self.drop_rows:]


class Toy(torch.nn.Module):
    def __init__(self, **attention):
        super().__init__()
        self.attn = ToyAttention(**attention)

    def forward(self, hidden_states):
        return self.attn(hidden_states)


def steer_toy(rule, frames=3, **attention):
    torch.manual_seed(0)
    model = Toy(**attention)
    layout = at.TokenLayout(num_frames=frames, tokens_per_frame=4, video_start=2, segments=[at.Segment("text", 0, 2)],
                            grid=(2, 2))
    adapter = at.GenericAdapter(layout=layout, attention=r"attn")
    with at.steer(model, rule, adapter=adapter):
        return model(torch.randn(2, layout.seq_len, 8))


def enhance(key=at.video, weight=1.0):
    return at.Rule(query=at.video, key=key, transform=at.output_scale(at.readouts.cross_frame_intensity(weight)))


def test_errors_name_the_rule_the_module_and_why():
    with pytest.raises(at.ConfigError, match=r"rule .*module 'attn'.*outside them"):
        steer_toy(enhance(key=at.tokens))
    with pytest.raises(at.ConfigError, match="part of frames"):
        steer_toy(enhance(key=at.box(0, 0, 0.5, 0.5)))
    with pytest.raises(at.ConfigError, match=r"no weight for model family 'generic'.*wan=4"):
        steer_toy(at.recipes.enhance_a_video())
    with pytest.raises(at.SteeringError, match=r"module 'attn'.*at least 2 frames"):
        steer_toy(enhance(), frames=1)
    with pytest.raises(at.SteeringError, match=r"module 'attn' returned a tensor of shape \(2, 13, 8\)"):
        steer_toy(enhance(), drop_rows=1)
    with pytest.raises(at.SteeringError, match=r"module 'attn'.*more than one self-attention call"):
        steer_toy(enhance(), calls=2)


def test_toy_output_scale_matches_a_hook():
    rule = at.Rule(query=at.frames[2], key=at.video, transform=at.output_scale(-0.5))
    got = steer_toy(rule)
    torch.manual_seed(0)
    model = Toy()
    expected = model(torch.randn(2, 14, 8))
    expected[:, 2 + 8:] *= -0.5
    torch.testing.assert_close(got, expected, atol=0, rtol=0)


# --- the docs example runs as written ----------------------------------------------------------------
def test_docs_example_runs():
    text = (Path(__file__).parents[1] / "docs" / "recipes.md").read_text()
    section = text.split("## enhance_a_video", 1)[1].split("\n## ", 1)[0]
    code = re.findall(r"```python\n(.*?)```", section, re.S)
    assert code
    for block in code:
        exec(compile(block, "docs/recipes.md", "exec"), {})
