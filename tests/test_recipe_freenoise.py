"""FreeNoise (at.recipes.freenoise) against the authors' code re-implemented here: the windowed attention fusion
(``attention_freenoise.py``: per-window softmax, pyramid weights, ``value / count`` before ``to_out``) at the
SDPA level in float64, on tiny AnimateDiff (temporal attention) and tiny Wan (DiT video self-attention), and the
noise rescheduling (``inference_freenoise.py``) against the authors' sequential shuffle, fed the permutations
the run's seed gives.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

import attnsteer as at
from attnsteer.testing.tiny import animatediff_call_kwargs, test_image, tiny_animatediff, tiny_wan, wan_call_kwargs
from dense_reference import hook_state, sdpa_arguments, to_dtype

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 2
TOL = dict(rtol=0, atol=1e-10)  # float64 on both sides
FRAMES = 9  # tiny AnimateDiff: 9 latent frames (no temporal compression)
SEED = 7


# --- the authors' code, transcribed (lvdm/modules/attention_freenoise.py, scripts/evaluation) ----------
def authors_get_views(video_length, window_size=16, stride=4):
    num_blocks_time = (video_length - window_size) // stride + 1
    return [(int(i * stride), int(i * stride) + window_size) for i in range(num_blocks_time)]


def authors_generate_weight_sequence(n):
    if n % 2 == 0:
        max_weight = n // 2
        weight_sequence = list(range(1, max_weight + 1, 1)) + list(range(max_weight, 0, -1))
    else:
        max_weight = (n + 1) // 2
        weight_sequence = list(range(1, max_weight, 1)) + [max_weight] + list(range(max_weight - 1, 0, -1))
    return weight_sequence


def authors_window_fusion(q, k, v, frames, tokens_per_frame, window, stride, scale):
    """One attention call's output [B, H, N, D]: per window a full softmax, fused with the pyramid weights."""
    value = torch.zeros(q.shape[:-1] + v.shape[-1:], dtype=torch.float64)
    count = torch.zeros(q.shape[-2], dtype=torch.float64)
    weights = torch.tensor(authors_generate_weight_sequence(window), dtype=torch.float64)
    for t_start, t_end in authors_get_views(frames, window, stride):
        sl = slice(t_start * tokens_per_frame, t_end * tokens_per_frame)
        logits = (q[:, :, sl].double() @ k[:, :, sl].double().transpose(-1, -2)) * scale
        out = logits.softmax(-1) @ v[:, :, sl].double()
        w = weights.repeat_interleave(tokens_per_frame)
        value[:, :, sl] += out * w[:, None]
        count[sl] += w
    return torch.where(count[:, None] > 0, value / count[:, None], value)


def authors_shuffle(noise, window, stride, permutations):
    """inference_freenoise.py: ``random.shuffle(list_index)`` stands for the next permutation given."""
    noise = noise.clone()
    for frame_index in range(window, noise.shape[2], stride):
        list_index = list(range(frame_index - window, frame_index + stride - window))
        order = next(permutations)
        list_index = [list_index[i] for i in order]
        noise[:, :, frame_index:frame_index + stride] = noise[:, :, list_index]
    return noise


def seeded_permutations(seed, stride):
    g = torch.Generator().manual_seed(seed)
    while True:
        yield torch.randperm(stride, generator=g).tolist()


class AuthorsFreeNoise(TorchFunctionMode):
    """Self-attention SDPA calls of ``frames * tokens_per_frame`` tokens become the authors' window fusion."""

    def __init__(self, frames, tokens_per_frame, window, stride):
        super().__init__()
        self.frames, self.t, self.window, self.stride, self.calls = frames, tokens_per_frame, window, stride, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        named = sdpa_arguments(args, kwargs)
        q, k, v = named["query"], named["key"], named["value"]
        if q.shape[-2] != k.shape[-2] or q.shape[-2] != self.frames * self.t:
            return func(*args, **kwargs)
        self.calls += 1
        scale = named.get("scale") or q.shape[-1] ** -0.5
        return authors_window_fusion(q, k, v, self.frames, self.t, self.window, self.stride, scale).to(q.dtype)


@pytest.fixture(scope="module")
def animatediff():
    pipe = tiny_animatediff()
    to_dtype(pipe, torch.float64)
    return pipe


def run(pipe, kwargs, image=None, seed=SEED):
    extra = {} if image is None else {"image": image}
    return pipe(**kwargs, **extra, generator=torch.Generator().manual_seed(seed)).frames


def first_input(pipe, kwargs, image=None, channels=None):
    """The latents the denoiser's first forward gets (its first batch row; ``channels``: the latent channels)."""
    model = getattr(pipe, "unet", None) or pipe.transformer
    seen = []
    handle = model.register_forward_pre_hook(
        lambda m, a, kw: seen.append((kw.get("sample", kw.get("hidden_states")) if not a else a[0]).clone()),
        with_kwargs=True)
    try:
        run(pipe, {**kwargs, "num_inference_steps": 1}, image)
    finally:
        handle.remove()
    return seen[0][:1, :channels]


def test_freenoise_attention_equals_the_authors_window_fusion_on_animatediff(animatediff):
    kwargs = animatediff_call_kwargs(num_frames=FRAMES, num_inference_steps=STEPS, output_type="latent")
    with AuthorsFreeNoise(FRAMES, 1, window=5, stride=2) as reference:
        expected = run(animatediff, kwargs)
    assert reference.calls
    plain = run(animatediff, kwargs)
    with at.steer(animatediff, at.recipes.freenoise(window=5, stride=2, noise=False), strict=True) as s:
        steered = run(animatediff, kwargs)
    torch.testing.assert_close(steered, expected, **TOL)
    assert s.calls == reference.calls
    assert (steered - plain).abs().max() > 1e-4


def test_freenoise_attention_equals_the_authors_window_fusion_on_tiny_wan():
    pipe = tiny_wan()
    to_dtype(pipe, torch.float64)
    kwargs = wan_call_kwargs(num_frames=17, num_inference_steps=STEPS, output_type="latent")  # 5 latent frames
    image = test_image()
    with AuthorsFreeNoise(5, 16, window=3, stride=1) as reference:  # 4 x 4 tokens per latent frame
        expected = run(pipe, kwargs, image)
    assert reference.calls
    with at.steer(pipe, at.recipes.freenoise(window=3, stride=1, noise=False), strict=True):
        steered = run(pipe, kwargs, image)
    torch.testing.assert_close(steered, expected, **TOL)


def test_freenoise_reschedules_the_initial_noise_as_the_authors_shuffle(animatediff):
    kwargs = animatediff_call_kwargs(num_frames=FRAMES, output_type="latent")
    drawn = first_input(animatediff, kwargs)
    with at.steer(animatediff, at.recipes.freenoise(window=3, stride=2)) as s:
        shuffled = first_input(animatediff, kwargs)
    expected = authors_shuffle(drawn, 3, 2, seeded_permutations(SEED, 2))
    assert torch.equal(shuffled, expected)
    assert not torch.equal(shuffled, drawn)
    assert s.calls  # the attention part ran too
    assert "prepare_latents" not in animatediff.__dict__  # the pipeline's own method is back


def test_freenoise_reschedules_wan_i2v_latents_and_leaves_its_condition():
    pipe = tiny_wan()
    kwargs = wan_call_kwargs(num_frames=17, output_type="latent")
    image = test_image()
    drawn = first_input(pipe, kwargs, image)
    with at.steer(pipe, at.recipes.freenoise(window=2, stride=1)):
        shuffled = first_input(pipe, kwargs, image)
    latent_channels = pipe.transformer.config.out_channels
    expected = authors_shuffle(drawn[:, :latent_channels], 2, 1, seeded_permutations(SEED, 1))
    assert torch.equal(shuffled[:, :latent_channels], expected)
    assert torch.equal(shuffled[:, latent_channels:], drawn[:, latent_channels:])  # the image condition


def test_freenoise_is_the_plain_run_when_the_window_covers_every_frame(animatediff):
    kwargs = animatediff_call_kwargs(num_frames=FRAMES, num_inference_steps=STEPS, output_type="latent")
    plain = run(animatediff, kwargs)
    with at.steer(animatediff, at.recipes.freenoise(window=FRAMES, stride=4), strict=True):
        steered = run(animatediff, kwargs)
    torch.testing.assert_close(steered, plain, rtol=0, atol=0)


def test_freenoise_leaves_pipeline_and_model_clean_after_an_exception(animatediff):
    before = hook_state(animatediff.unet)
    kwargs = animatediff_call_kwargs(num_frames=FRAMES, num_inference_steps=1, output_type="latent")
    with pytest.raises(RuntimeError, match="stop here"):
        with at.steer(animatediff, at.recipes.freenoise(window=5, stride=2)):
            assert "prepare_latents" in animatediff.__dict__
            run(animatediff, kwargs)
            raise RuntimeError("stop here")
    assert hook_state(animatediff.unet) == before
    assert "prepare_latents" not in animatediff.__dict__


def test_freenoise_refuses_windows_that_leave_frames_uncovered(animatediff):
    kwargs = animatediff_call_kwargs(num_frames=FRAMES, num_inference_steps=1, output_type="latent")
    with pytest.raises(at.SteeringError, match=r"\(frames - window\) % stride must be 0.*divides 5"):
        with at.steer(animatediff, at.recipes.freenoise(window=4, stride=2)):
            run(animatediff, kwargs)
    with pytest.raises(at.SteeringError, match=r"\(frames - size\) % stride must be 0"):
        with at.steer(animatediff, at.recipes.freenoise(window=4, stride=2, noise=False)):
            run(animatediff, kwargs)


def test_freenoise_refuses_bad_parameters_and_targets_by_name(animatediff):
    with pytest.raises(at.ConfigError, match=r"freenoise\(stride=5\) must be <= window=4"):
        at.recipes.freenoise(window=4, stride=5)
    with pytest.raises(at.ConfigError, match=r"freenoise\(window=...\)"):
        at.recipes.freenoise(window=0)
    before = hook_state(animatediff.unet)
    with pytest.raises(at.SteeringError, match="steer the pipeline, not a bare model"):
        with at.steer(animatediff.unet, at.recipes.freenoise()):
            pass
    assert hook_state(animatediff.unet) == before


def test_freenoise_noise_is_refused_on_the_toy_pipeline_which_has_no_prepare_latents():
    pipe = at.toy.ToyI2VPipeline.from_shipped()
    with pytest.raises(at.SteeringError, match="prepare_latents.*which ToyI2VPipeline does not have"):
        with at.steer(pipe, at.recipes.freenoise(window=5, stride=2)):
            pass
    assert "prepare_latents" not in pipe.__dict__
