"""Region, window and temperature recipes against plain re-implementations of their authors' formulas.

Each reference below is written from the authors' code as transcribed in the docstrings of the
recipes (and shared/notes/interventions.md): it edits the dense float64 logits of every
self-attention call of the tiny pipeline by hand — token geometry from the pipeline's call
arguments, boxes by the centre rule, steps counted by a plain forward pre-hook — and never uses
attnsteer's selectors, plans or kernels. Both sides run the pipelines in float64.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

import attnsteer as at
from attnsteer import recipes
from dense_reference import EditedAttention, float64_arguments, sdpa_arguments, to_dtype

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 2
WAN = dict(text=0, frames=3, rows=4, cols=4)  # 64x64, 9 frames: 3 latent frames of 4x4 tokens, video only
COG = dict(text=16, frames=3, rows=4, cols=4)  # text first (max_sequence_length=16), then the video


def run_reference(pipe, run, seq, edit, steps_per_call=1):
    """Run the pipeline with every self-attention call of ``seq`` tokens computed densely after
    ``edit(logits, step)``; the step is counted from the transformer's forwards."""
    calls = [-1]

    def count(module, args, kwargs):
        calls[0] += 1

    handle = pipe.transformer.register_forward_pre_hook(count, with_kwargs=True)
    mode = EditedAttention(lambda s: edit(s, calls[0] // steps_per_call),
                           lambda q, k: q.shape[-2] == k.shape[-2] == seq)
    try:
        with mode:
            return run()
    finally:
        handle.remove()


def tokens(geo):
    """Per token: (kind, frame, cx, cy), text first, by plain loops."""
    out = [("text", -1, None, None)] * geo["text"]
    for f in range(geo["frames"]):
        for r in range(geo["rows"]):
            for c in range(geo["cols"]):
                out.append(("video", f, (c + 0.5) / geo["cols"], (r + 0.5) / geo["rows"]))
    return out


def inside(tok, box) -> bool:
    kind, _, cx, cy = tok
    x0, y0, x1, y1 = box
    return kind == "video" and x0 <= cx < x1 and y0 <= cy < y1


def matrix(geo, predicate) -> torch.Tensor:
    table = tokens(geo)
    return torch.tensor([[predicate(i, j, table[i], table[j]) for j in range(len(table))] for i in range(len(table))])


@pytest.fixture(scope="module")
def wan_pipe():
    """The tiny Wan I2V pipeline in float64 (this module's own): whole float32 runs compared with each other differ
    by rounding that grows through the layers and steps by no bounded amount (attnsteer.testing.tolerance)."""
    from attnsteer.testing.tiny import tiny_wan

    pipe = tiny_wan()
    to_dtype(pipe, torch.float64)
    return pipe


@pytest.fixture(scope="module")
def wan_run(wan_pipe, image):
    from attnsteer.testing.tiny import wan_call_kwargs

    def run(**overrides):
        kwargs = float64_arguments(wan_call_kwargs(num_inference_steps=STEPS, output_type="latent", **overrides))
        return np.asarray(wan_pipe(image=image, generator=torch.Generator().manual_seed(0), **kwargs).frames[0])

    return run


@pytest.fixture(scope="module")
def cog():
    from attnsteer.testing.tiny import cogvideox_call_kwargs, test_image, tiny_cogvideox

    pipe = tiny_cogvideox()
    to_dtype(pipe, torch.float64)

    def run(**overrides):
        kwargs = float64_arguments(cogvideox_call_kwargs(num_inference_steps=STEPS, output_type="latent", **overrides))
        return np.asarray(pipe(image=test_image(), generator=torch.Generator().manual_seed(0), **kwargs).frames[0])

    return pipe, run


class WordTokenizer:
    """A stand-in fast tokenizer (the tiny pipelines have none): a start token, then one token per
    word, with character offsets."""

    def __call__(self, prompt, return_offsets_mapping=True, add_special_tokens=True):
        return {"offset_mapping": [(0, 0)] + [m.span() for m in re.finditer(r"\w+", prompt)]}


def assert_latents_close(a, b):
    """float64 runs on both sides, apart by summation order only (~1e-13); a wrong rule moves latents by >1e-3."""
    np.testing.assert_allclose(a, b, atol=1e-9, rtol=0)


@pytest.mark.exactness
def test_local_window_is_freelongs_adjusted_mask(wan_pipe, wan_run):
    window, frames = 2, WAN["frames"]
    allowed = torch.zeros(frames, frames, dtype=torch.bool)
    for i in range(frames):  # get_adjusted_local_mask, transcribed
        start, end = max(0, i - window // 2), min(frames, i + window // 2 + 1)
        if end - start < window:
            if start == 0:
                end = min(frames, start + window)
            else:
                start = max(0, end - window)
        allowed[i, start:end] = True
    keep = matrix(WAN, lambda i, j, a, b: bool(allowed[a[1], b[1]]))
    expected = run_reference(wan_pipe, wan_run, keep.shape[0], lambda s, step: s.masked_fill(~keep, float("-inf")),
                             steps_per_call=2)
    with at.steer(wan_pipe, recipes.local_window(window=window)):
        got = wan_run()
    assert_latents_close(got, expected)
    assert not np.allclose(got, wan_run(), atol=1e-4)  # the window changes the video


@pytest.mark.exactness
def test_ultravico_matches_the_authors_kernel_formula(wan_pipe, wan_run):
    alpha, train_frames, frame_tokens = 0.5, 1, WAN["rows"] * WAN["cols"]
    n = WAN["frames"] * frame_tokens
    m_idx, n_idx = torch.arange(n)[:, None], torch.arange(n)[None, :]
    window_th = frame_tokens * train_frames / 2
    dist_mask = (m_idx - n_idx).abs() <= window_th
    window3 = (m_idx <= frame_tokens) & (n_idx > train_frames * frame_tokens)

    def edit(qk, step):  # attn_qk_int8_per_block.py, in float
        negative_mask = qk < 0
        qk = torch.where(dist_mask | negative_mask, qk, qk * alpha)
        return torch.where(window3, torch.full_like(qk, -1e4), qk)

    expected = run_reference(wan_pipe, wan_run, n, edit, steps_per_call=2)
    with at.steer(wan_pipe, recipes.ultravico(alpha=alpha, train_frames=train_frames, smooth_k=False)):
        got = wan_run()
    assert_latents_close(got, expected)


class SmoothKAttention(EditedAttention):
    """Dense float64 attention whose logits come from keys centred over the call, as SageAttention's
    ``smooth_k=True`` computes them (``km = k.mean(dim=seq)``, then ``q @ (k - km)^T``), edited by ``edit``."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not torch.nn.functional.scaled_dot_product_attention:
            return func(*args, **kwargs)
        named = sdpa_arguments(args, kwargs)
        q, k, v = named["query"], named["key"], named["value"]
        if not self.applies(q, k):
            return func(*args, **kwargs)
        assert named.get("attn_mask") is None, "SmoothKAttention handles unmasked calls only"
        self.calls += 1
        scale = named.get("scale") or q.shape[-1] ** -0.5
        k_smooth = k.double() - k.double().mean(dim=-2, keepdim=True)
        logits = self.edit((q.double() @ k_smooth.transpose(-1, -2)) * scale)
        return (logits.softmax(-1) @ v.double()).to(q.dtype)


@pytest.mark.exactness
def test_ultravico_with_smooth_k_matches_the_authors_formula_on_centred_keys(wan_pipe, wan_run):
    alpha, train_frames, frame_tokens = 0.5, 1, WAN["rows"] * WAN["cols"]
    n = WAN["frames"] * frame_tokens
    m_idx, n_idx = torch.arange(n)[:, None], torch.arange(n)[None, :]
    dist_mask = (m_idx - n_idx).abs() <= frame_tokens * train_frames / 2
    window3 = (m_idx <= frame_tokens) & (n_idx > train_frames * frame_tokens)

    def edit(qk):  # attn_qk_int8_per_block.py in float, on the logits of the smoothed keys
        qk = torch.where(dist_mask | (qk < 0), qk, qk * alpha)
        return torch.where(window3, torch.full_like(qk, -1e4), qk)

    mode = SmoothKAttention(edit, lambda q, k: q.shape[-2] == k.shape[-2] == n)
    with mode:
        expected = wan_run()
    assert mode.calls > 0
    with at.steer(wan_pipe, recipes.ultravico(alpha=alpha, train_frames=train_frames)):  # smooth_k=True: the default
        got = wan_run()
    assert_latents_close(got, expected)
    with at.steer(wan_pipe, recipes.ultravico(alpha=alpha, train_frames=train_frames, smooth_k=False)):
        raw = wan_run()
    assert not np.allclose(raw, expected, atol=1e-4)  # centring the keys changes which logits are damped


@pytest.mark.exactness
def test_proportional_attention_scales_every_logit(wan_pipe, wan_run):
    n = WAN["frames"] * WAN["rows"] * WAN["cols"]
    factor = math.sqrt(math.log(n, 16))  # Lumina: sqrt(log(N, N_base))
    expected = run_reference(wan_pipe, wan_run, n, lambda s, step: s * factor, steps_per_call=2)
    with at.steer(wan_pipe, recipes.proportional_attention(train_tokens=16)):
        got = wan_run()
    assert_latents_close(got, expected)
    with at.steer(wan_pipe, recipes.proportional_attention(train_tokens=n)):  # training length: no change
        assert_latents_close(wan_run(), wan_run())


@pytest.mark.exactness
def test_peekaboo_separates_the_box_from_the_rest_in_the_first_steps(wan_pipe, wan_run):
    box = (0.0, 0.0, 0.5, 0.5)
    table = tokens(WAN)
    differ = matrix(WAN, lambda i, j, a, b: inside(a, box) != inside(b, box))

    def edit(s, step):
        return s - 10000.0 * differ.double() if step < 1 else s

    expected = run_reference(wan_pipe, wan_run, len(table), edit, steps_per_call=2)
    with at.steer(wan_pipe, recipes.peekaboo(box="0,0,0.5,0.5", frozen_steps=1)):
        got = wan_run()
    assert_latents_close(got, expected)
    assert not np.allclose(got, wan_run(), atol=1e-4)  # the isolation changes the video


@pytest.mark.exactness
def test_peekaboo_with_a_phrase_keeps_fg_on_its_words(cog):
    pipe, run = cog
    prompt, box = "a red dog runs", (0.5, 0.0, 1.0, 1.0)
    dog = 3  # the start token, 'a', 'red', then 'dog' at text position 3

    def edit(s, step):
        if step >= 1:
            return s
        bias = matrix(COG, lambda i, j, a, b: (
            (a[0] == b[0] == "video" and inside(a, box) != inside(b, box))
            or (inside(a, box) and b[0] == "text" and j != dog)
            or (a[0] == "video" and not inside(a, box) and b[0] == "text" and j == dog)
        )).double()
        return s - 10000.0 * bias

    expected = run_reference(pipe, run, COG["text"] + 48, edit)
    recipe = recipes.peekaboo(box="0.5,0,1,1", phrase="dog", frozen_steps=1)
    with at.steer(pipe, recipe, prompt=prompt, tokenizer=WordTokenizer()):
        got = run()
    assert_latents_close(got, expected)


@pytest.mark.exactness
def test_direct_a_video_amplifies_inside_and_suppresses_outside(cog):
    pipe, run = cog
    prompt, box, end_box, lam, tau = "a dog on grass", (0.0, 0.0, 0.5, 0.5), (0.5, 0.5, 1.0, 1.0), 25.0, 0.6
    table = tokens(COG)
    spans = [(0, 0)] + [m.span() for m in re.finditer(r"\w+", prompt)]
    dog = [i for i, (a, b) in enumerate(spans) if prompt[a:b] == "dog"]
    eos_words = [i for i, (a, b) in enumerate(spans) if b > a]  # every prompt word (positions 1 .. eos)

    def frame_box(f):  # the object's box moves linearly over the latent frames
        w = f / (COG["frames"] - 1)
        return tuple(p + w * (q - p) for p, q in zip(box, end_box))

    def edit(s, step):
        t_now = 1 - step / STEPS
        rows = torch.zeros(s.shape[0], dtype=torch.bool)
        rows[s.shape[0] // 2 :] = True  # cond half of the batched [uncond, cond] forward
        gain = torch.zeros(s.shape[-1], s.shape[-1], dtype=torch.float64)
        neg = torch.zeros(s.shape[-1], s.shape[-1], dtype=torch.bool)
        for i, a in enumerate(table):
            if a[0] != "video":
                continue
            fb = frame_box(a[1])
            size_reg = 1 - (fb[2] - fb[0]) * (fb[3] - fb[1])
            for j in eos_words:
                if j in dog:
                    if inside(a, fb):
                        gain[i, j] = lam * size_reg
                    else:
                        neg[i, j] = True
                else:
                    neg[i, j] = True
        edited = s + (gain if t_now >= tau else 0.0)
        edited = edited.masked_fill(neg, float("-inf"))
        return torch.where(rows[:, None, None, None], edited, s)

    expected = run_reference(pipe, run, COG["text"] + 48, edit)
    recipe = recipes.direct_a_video("dog", box="0,0,0.5,0.5", end_box="0.5,0.5,1,1", strength=lam, amplify=1 - tau)
    with at.steer(pipe, recipe, prompt=prompt, tokenizer=WordTokenizer()) as steering:
        got = run()
    assert_latents_close(got, expected)
    steps_hit = steering.summary()["rules"][0]["steps"]
    assert steps_hit == [0]  # 1 - i/N >= 0.6 holds for i = 0 only of 2 steps


@pytest.mark.exactness
def test_direct_a_video_on_wans_cross_attention(wan_pipe, image):
    from attnsteer.testing.tiny import wan_call_kwargs, word_tokenizer

    prompt, box, lam = "a dog on grass", (0.5, 0.0, 1.0, 1.0), 25.0
    kwargs = float64_arguments(wan_call_kwargs(prompt=prompt, num_inference_steps=STEPS, output_type="latent"))

    def run():
        return np.asarray(wan_pipe(image=image, generator=torch.Generator().manual_seed(0), **kwargs).frames[0])

    queries = [inside(t, box) for t in tokens(WAN)]
    words = {1: "dog", 0: "a", 2: "on", 3: "grass"}  # word-level tokenizer: one token per word
    calls = []

    def edit(s):
        step = len(calls) // 4  # 2 blocks x 2 branches per step
        cond = len(calls) % 4 < 2  # Wan runs the conditional forward first
        calls.append(1)
        if cond:
            size_reg = 1 - 0.5 * 1.0
            for i, fg in enumerate(queries):
                for j, word in words.items():
                    if word == "dog" and fg and 1 - step / STEPS >= 0.95:
                        s[..., i, j] += lam * size_reg
                    elif word != "dog" or not fg:
                        s[..., i, j] = float("-inf")
        return s

    with EditedAttention(edit, lambda q, k: k.shape[-2] == 512 and q.shape[-2] != 512):
        expected = run()
    recipe = recipes.direct_a_video("dog", box="0.5,0,1,1", strength=lam, attention="cross")
    with at.steer(wan_pipe, recipe, prompt=prompt, tokenizer=word_tokenizer()):
        got = run()
    assert_latents_close(got, expected)


def test_recipe_parameters_are_validated():
    with pytest.raises(at.ConfigError, match="phrase"):
        recipes.direct_a_video("  ")
    with pytest.raises(at.ConfigError, match=r"box must be 'x0,y0,x1,y1'"):
        recipes.peekaboo(box="left")
    with pytest.raises(at.ConfigError, match=r"local_window\(window=...\) must be an int >= 1"):
        recipes.local_window(window=0)
    with pytest.raises(at.ConfigError, match="ultravico"):
        recipes.ultravico(alpha=float("nan"))
