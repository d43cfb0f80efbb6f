"""FreeLong (at.recipes.freelong) against the authors' code re-implemented here, on a tiny temporal-attention family
(AnimateDiff) and tiny Wan (DiT video self-attention), in float64.

The reference follows the authors' LaVie ``attention.py``: ``global = attn_temp(x)``, ``local = attn_temp(x,
attention_mask=local_mask)``, both module outputs (after ``to_out``) rearranged to [b, c, f, h, w] and mixed by
``freq_mix_3d`` with the Gaussian low-pass of ``freelong_utils``; at the top resolution the local output alone. It
runs as a plain forward hook on each attention module: the module's own output is the global pass (every SDPA
call dense float64 here), and the hook runs the module's forward again with the local mask on its SDPA calls.
attnsteer blends before ``to_out``; the difference is rounding only (to_out acts on channels, the FFT on
frames x rows x cols, and low-pass + high-pass = 1).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.fft as fft
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

import attnsteer as at
from attnsteer.contract.registry import require_adapter
from attnsteer.testing.tiny import animatediff_call_kwargs, test_image, tiny_animatediff, tiny_wan, wan_call_kwargs
from dense_reference import hook_state, sdpa_arguments, to_dtype

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 2
TOL = dict(rtol=0, atol=1e-10)  # float64 on both sides; the two sides differ by FFT and summation order only


# --- the authors' code, transcribed (freelong_utils.py, attention.py) -----------------------------
def authors_gaussian_low_pass_filter(shape, d_s=0.25, d_t=0.25):
    T, H, W = shape[-3], shape[-2], shape[-1]
    mask = torch.zeros(shape, dtype=torch.float64)
    for t in range(T):
        for h in range(H):
            for w in range(W):
                d_square = ((d_s / d_t) * (2 * t / T - 1)) ** 2 + (2 * h / H - 1) ** 2 + (2 * w / W - 1) ** 2
                mask[..., t, h, w] = math.exp(-1 / (2 * d_s**2) * d_square)
    return mask


def authors_freq_mix_3d(x, noise, LPF):
    x_freq = fft.fftshift(fft.fftn(x, dim=(-3, -2, -1)), dim=(-3, -2, -1))
    noise_freq = fft.fftshift(fft.fftn(noise, dim=(-3, -2, -1)), dim=(-3, -2, -1))
    HPF = 1 - LPF
    x_freq_mixed = x_freq * LPF + noise_freq * HPF
    x_freq_mixed = fft.ifftshift(x_freq_mixed, dim=(-3, -2, -1))
    return fft.ifftn(x_freq_mixed, dim=(-3, -2, -1)).real


def authors_adjusted_local_mask(video_length, window_size):
    """LaVie's get_adjusted_local_mask: 0 on keys i-w/2 .. i+w/2 (windows clipped at an end shifted to w frames)."""
    mask = torch.full((video_length, video_length), float("-inf"), dtype=torch.float64)
    for i in range(video_length):
        start, end = max(0, i - window_size // 2), min(video_length, i + window_size // 2 + 1)
        if end - start < window_size:
            if start == 0:
                end = min(video_length, window_size)
            else:
                start = max(0, end - window_size)
        mask[i, start:end] = 0
    return mask


def videocrafter2_local_mask(video_length, window_size):
    """VideoCrafter2's window: keys i-w/2 .. i+w/2, clipped at the ends."""
    mask = torch.full((video_length, video_length), float("-inf"), dtype=torch.float64)
    for i in range(video_length):
        mask[i, max(0, i - window_size // 2):min(video_length, i + window_size // 2 + 1)] = 0
    return mask


# --- a dense float64 attention, with an optional frame mask, at the SDPA level -----------------------
class Dense(TorchFunctionMode):
    """Every self-attention SDPA call of length ``seq_len`` becomes dense float64 attention, plus ``frame_mask``
    [F, F] expanded over ``tokens_per_frame`` tokens per frame when given."""

    def __init__(self, seq_len, frame_mask=None, tokens_per_frame=1):
        super().__init__()
        self.seq_len, self.frame_mask, self.tokens_per_frame = seq_len, frame_mask, tokens_per_frame

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        named = sdpa_arguments(args, kwargs)
        q, k, v = named["query"], named["key"], named["value"]
        if q.shape[-2] != k.shape[-2] or q.shape[-2] != self.seq_len:
            return func(*args, **kwargs)
        assert named.get("attn_mask") is None
        logits = (q.double() @ k.double().transpose(-1, -2)) * (named.get("scale") or q.shape[-1] ** -0.5)
        if self.frame_mask is not None:
            t = self.tokens_per_frame
            logits = logits + self.frame_mask.repeat_interleave(t, 0).repeat_interleave(t, 1)
        return (logits.softmax(-1) @ v.double()).to(q.dtype)


class AuthorsFreeLong:
    """Forward hooks on the attention modules: output = blend(global, local) as the authors' ``combine``."""

    def __init__(self, modules, local_mask, to_video, seq_len, tokens_per_frame=1, top=None, d_s=0.25, d_t=0.25):
        self.local_mask, self.to_video, self.seq_len, self.t = local_mask, to_video, seq_len, tokens_per_frame
        self.top, self.d_s, self.d_t = top, d_s, d_t
        self.handles = [m.register_forward_hook(self.hook, with_kwargs=True) for m in modules]
        self.blended = self.local_only = 0

    def hook(self, module, args, kwargs, output):
        with Dense(self.seq_len, self.local_mask, self.t):
            local = module.forward(*args, **kwargs)  # module.forward: this hook is not re-entered
        to_video, back = self.to_video(output)
        if self.top is not None and self.top(output):
            self.local_only += 1
            return local
        self.blended += 1
        g, loc = to_video(output), to_video(local)
        lpf = authors_gaussian_low_pass_filter(g.shape[-3:], self.d_s, self.d_t)
        return back(authors_freq_mix_3d(g.double(), loc.double(), lpf).to(output.dtype))

    def remove(self):
        for h in self.handles:
            h.remove()


# --- AnimateDiff: temporal attention over (b h w, f, c) ---------------------------------------------
FRAMES = 9
LATENT = 8  # tiny AnimateDiff: 16 x 16 pixels, 8 x 8 latents
VIDEOS = 2  # [uncond, cond]


def temporal_video(output):
    rows = output.shape[0]
    side = int(math.isqrt(rows // VIDEOS))
    b, f, c = VIDEOS, output.shape[1], output.shape[2]
    to_video = lambda o: o.reshape(b, side, side, f, c).permute(0, 4, 3, 1, 2)  # "(b h w) f c -> b c f h w"
    back = lambda x: x.permute(0, 3, 4, 2, 1).reshape(rows, f, c)
    return to_video, back


@pytest.fixture(scope="module")
def animatediff():
    pipe = tiny_animatediff()
    to_dtype(pipe, torch.float64)
    return pipe


def temporal_modules(pipe):
    return [m for _, m in require_adapter(pipe.unet).attention_modules(pipe.unet)]


def run(pipe, kwargs, image=None):
    extra = {} if image is None else {"image": image}
    return pipe(**kwargs, **extra, generator=torch.Generator().manual_seed(0)).frames


@pytest.mark.parametrize("mask", ["lavie", "videocrafter2"])
def test_freelong_equals_the_authors_blend_on_animatediff_temporal_attention(animatediff, mask):
    kwargs = animatediff_call_kwargs(num_frames=FRAMES, num_inference_steps=STEPS, output_type="latent")
    window = 4
    local = (authors_adjusted_local_mask if mask == "lavie" else videocrafter2_local_mask)(FRAMES, window)
    reference = AuthorsFreeLong(temporal_modules(animatediff), local, temporal_video, FRAMES,
                                top=lambda out: out.shape[0] == VIDEOS * LATENT * LATENT)
    try:
        with Dense(FRAMES):
            expected = run(animatediff, kwargs)
    finally:
        reference.remove()
    assert reference.blended and reference.local_only  # both the blend and the authors' top-resolution rule ran
    with Dense(FRAMES):
        plain = run(animatediff, kwargs)
    with at.steer(animatediff, at.recipes.freelong(window=window, mask=mask), strict=True):
        steered = run(animatediff, kwargs)
    torch.testing.assert_close(steered, expected, **TOL)
    assert (steered - plain).abs().max() > 1e-4  # the recipe changed the video


def test_freelong_blends_every_call_when_local_at_top_is_off(animatediff):
    kwargs = animatediff_call_kwargs(num_frames=FRAMES, num_inference_steps=STEPS, output_type="latent")
    reference = AuthorsFreeLong(temporal_modules(animatediff), authors_adjusted_local_mask(FRAMES, 4),
                                temporal_video, FRAMES)
    try:
        with Dense(FRAMES):
            expected = run(animatediff, kwargs)
    finally:
        reference.remove()
    with at.steer(animatediff, at.recipes.freelong(window=4, local_at_top=False), strict=True):
        steered = run(animatediff, kwargs)
    torch.testing.assert_close(steered, expected, **TOL)


def test_freelong_is_the_plain_call_when_the_window_covers_every_frame(animatediff):
    kwargs = animatediff_call_kwargs(num_frames=FRAMES, num_inference_steps=STEPS, output_type="latent")
    plain = run(animatediff, kwargs)
    with at.steer(animatediff, at.recipes.freelong(window=2 * FRAMES, local_at_top=False), strict=True):
        steered = run(animatediff, kwargs)
    torch.testing.assert_close(steered, plain, **TOL)  # local == global: low-pass + high-pass of one output


# --- Wan: DiT video self-attention over (b, f h w, c) -----------------------------------------------
WAN_FRAMES, WAN_GRID = 5, (4, 4)  # 17 frames -> 5 latent frames; 64 x 64 -> 8 x 8 latents -> 4 x 4 patches


def dit_video(output):
    b, n, c = output.shape
    f, (h, w) = WAN_FRAMES, WAN_GRID
    return (lambda o: o.reshape(b, f, h, w, c).permute(0, 4, 1, 2, 3),  # "b (f h w) c -> b c f h w"
            lambda x: x.permute(0, 2, 3, 4, 1).reshape(b, n, c))


def test_freelong_equals_the_authors_blend_on_tiny_wan():
    pipe = tiny_wan()
    to_dtype(pipe, torch.float64)
    kwargs = wan_call_kwargs(num_frames=17, num_inference_steps=STEPS, output_type="latent")
    seq = WAN_FRAMES * WAN_GRID[0] * WAN_GRID[1]
    modules = [m for _, m in require_adapter(pipe.transformer).attention_modules(pipe.transformer)]
    reference = AuthorsFreeLong(modules, authors_adjusted_local_mask(WAN_FRAMES, 2), dit_video, seq,
                                tokens_per_frame=WAN_GRID[0] * WAN_GRID[1], d_s=0.3, d_t=0.2)
    image = test_image()
    try:
        with Dense(seq):
            expected = run(pipe, kwargs, image)
    finally:
        reference.remove()
    assert reference.blended and not reference.local_only
    before = hook_state(pipe.transformer)
    with at.steer(pipe, at.recipes.freelong(window=2, d_s=0.3, d_t=0.2), strict=True) as s:
        steered = run(pipe, kwargs, image)
    torch.testing.assert_close(steered, expected, **TOL)
    assert s.calls == reference.blended
    assert hook_state(pipe.transformer) == before


def test_freelong_leaves_the_model_clean_after_an_exception(animatediff):
    before = hook_state(animatediff.unet)
    kwargs = animatediff_call_kwargs(num_frames=FRAMES, num_inference_steps=1, output_type="latent")
    with pytest.raises(RuntimeError, match="stop here"):
        with at.steer(animatediff, at.recipes.freelong(window=4)):
            run(animatediff, kwargs)
            raise RuntimeError("stop here")
    assert hook_state(animatediff.unet) == before
    assert "prepare_latents" not in animatediff.__dict__


def test_freelong_refuses_bad_parameters_by_name():
    with pytest.raises(at.ConfigError, match=r"freelong\(d_s=...\)"):
        at.recipes.freelong(d_s=0)
    with pytest.raises(at.ConfigError, match=r"freelong\(mask=...\).*lavie"):
        at.recipes.freelong(mask="crafter")
    with pytest.raises(at.ConfigError, match="window"):
        at.recipes.freelong(window=0)


def test_a_multi_pass_rule_with_a_user_combination_gets_every_pass_output(animatediff):
    """at.combine_with: the user's function sees one output per pass; returning the second pass is that pass."""
    seen = []

    def second(outputs, passes, call):
        seen.append((len(outputs), call.layout.num_frames))
        return outputs[1]

    block_far = at.Rule(at.video, at.video, at.block(), pairs=~at.frame_window(3))
    rule = at.Rule(at.video, at.tokens, at.multi_pass([at.Pass(), at.Pass(rules=[block_far])], at.combine_with(second)))
    kwargs = animatediff_call_kwargs(num_frames=FRAMES, num_inference_steps=1, output_type="latent")
    with at.steer(animatediff, rule, strict=True):
        combined = run(animatediff, kwargs)
    with at.steer(animatediff, block_far, strict=True):
        local = run(animatediff, kwargs)
    torch.testing.assert_close(combined, local, **TOL)
    assert seen and all(s == (2, FRAMES) for s in seen)
