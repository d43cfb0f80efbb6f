"""Kandinsky 6 text/image-to-video+audio beyond the shared battery (which runs it text-to-video).

Facts stated here from diffusers' sources, not from the adapter: image-to-video appends the image latent as an
extra, last latent frame (the pipeline's ``tail_cond``), so the self-attention sequence holds 3 generated latent
frames then the image frame; the video, audio and text streams never share a self-attention sequence (video
and audio meet only in the va/av cross-attention calls, video queries / audio keys and audio queries / video keys,
none masked), so attention="self" rules touch the video self-attention only and ``at.audio`` raises there, while
Rule(attention="audio" | "a2v" | "v2a") reaches the audio self-attention, va and av calls, each checked here against
a dense computation written in the test; the text cross-attention masks padded text tokens.

From the tiny config: 32x64 pixels, VAE /8 -> 4x8 latents, patch 2x2 -> 2x4 = 8 tokens per frame; 9 frames ->
3 latent frames (+1 with an image); 9 frames at 24 fps of 1600 Hz audio, latent hop 100 -> 6 audio tokens.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

import attnsteer as at
from attnsteer.testing.tiny import build_tiny, test_image
from dense_reference import DenseAttention, EditedAttention, ForwardCounter, frame_bias, hook_state, sdpa_arguments

pytestmark = pytest.mark.usefixtures("one_thread")
GENERATED, PER_FRAME, AUDIO, TEXT, GAMMA = 3, 8, 6, 8, 2.0
FRAMES = GENERATED + 1  # image-to-video: the image frame is appended last
SEQ = FRAMES * PER_FRAME
AUDIO_MODULES = ("audio_dec_block.self_attention", "va_cross_attention", "av_cross_attention")


@pytest.fixture(scope="module")
def tiny():
    return build_tiny("tiny-kandinsky6")


def run(tiny, image=True, **overrides):
    pipe, call_kwargs = tiny
    kwargs = call_kwargs(**{"output_type": "latent", "num_inference_steps": 2, **overrides})
    out = pipe(image=test_image(64) if image else None, generator=torch.Generator().manual_seed(0), **kwargs)
    return np.asarray(out.frames), np.asarray(out.audio)


def dense_first_cond_forward(tiny, key_frame: int):
    """The image-to-video run with -GAMMA from the other frames' queries to ``key_frame``'s keys, densely, in the
    first forward only (step 0's conditional forward: the pipeline runs cond, then uncond, per step)."""
    counter = ForwardCounter(tiny[0].transformer)

    def extra(q):
        return frame_bias(SEQ, 0, FRAMES, PER_FRAME, -GAMMA, [0], q.shape[0], key_frame) if counter.count == 0 else None

    try:
        with DenseAttention(extra, seq_len=SEQ):
            return run(tiny)
    finally:
        counter.remove()


def test_image_to_video_reference_is_the_appended_last_frame_and_dymos_matches_dense(tiny):
    vanilla, vanilla_audio = run(tiny)
    with at.inspect(tiny[0]) as rec:
        run(tiny)
    layout = rec.layout
    assert (layout.num_frames, layout.tokens_per_frame, layout.seq_len) == (FRAMES, PER_FRAME, SEQ)
    assert layout.reference_frames == (FRAMES - 1,) and layout.generated_frames == tuple(range(GENERATED))
    with at.steer(tiny[0], at.recipes.dymos(gamma=GAMMA, until_step=1)) as steering:
        steered, steered_audio = run(tiny)
    assert steering.summary()["rules"][0]["branches"] == ["cond"]
    assert np.abs(steered - vanilla).max() > 1e-3
    assert np.abs(steered_audio - vanilla_audio).max() > 1e-4  # the audio hears the steered video (av calls)
    reference, reference_audio = dense_first_cond_forward(tiny, key_frame=FRAMES - 1)
    np.testing.assert_allclose(steered, reference, atol=1e-4)
    np.testing.assert_allclose(steered_audio, reference_audio, atol=1e-4)
    assert np.abs(steered - dense_first_cond_forward(tiny, key_frame=0)[0]).max() > 1e-3, "frame 0 is not the image"


def test_frame_maps_hold_the_video_frames_only_and_match_dense(tiny):
    groups = torch.arange(FRAMES).repeat_interleave(PER_FRAME)
    with DenseAttention(groups=lambda q: groups, seq_len=SEQ) as dense:
        run(tiny)
    layers = len(tiny[0].transformer.visual_transformer_blocks)
    # first the VAE's mid-block attention over the image's 4x8 latent (32 tokens too), then 2 steps x (cond, uncond
    # forwards) x layers, in that order
    assert len(dense.masses) == 1 + 2 * 2 * layers
    masses = dense.masses[1:]
    with at.inspect(tiny[0]) as rec:
        run(tiny)
    assert rec.layout.segments == () and rec.layout.group_names() == [f"frame {f}" for f in range(FRAMES)]
    for step in range(2):
        for layer in range(layers):
            cond = masses[step * 2 * layers + layer].mean(dim=(0, 1)).float()
            got = rec.frame_map(steps=[step], layers=[layer], branch="cond")
            assert got.shape == (FRAMES, FRAMES)
            torch.testing.assert_close(got, cond, atol=1e-5, rtol=0)
            torch.testing.assert_close(got.sum(-1), torch.ones(FRAMES), atol=1e-5, rtol=0)
    with pytest.raises(at.ConfigError, match="no text tokens"):
        rec.text_mass()


def test_self_rules_touch_only_the_video_self_attention_and_at_audio_raises_there(tiny):
    outputs: dict[str, list[torch.Tensor]] = {}
    handles = [m.register_forward_hook(lambda m, a, out, n=n: outputs.setdefault(n, []).append(out.detach().clone()))
               for n, m in tiny[0].transformer.named_modules() if n.endswith(AUDIO_MODULES)]
    try:
        rule = at.Rule(at.tokens, at.tokens, at.bias(0.0), branch="all")  # every self call goes through the kernel
        with at.steer(tiny[0], rule) as steering:
            run(tiny)
        layers = steering.summary()["rules"][0]["layers"]
        with_session = {n: list(v) for n, v in outputs.items()}
        outputs.clear()
        run(tiny)
    finally:
        for h in handles:
            h.remove()
    assert layers and all(name.endswith("video_dec_block.self_attention") for name in layers)
    assert len(with_session) == 3 * len(tiny[0].transformer.visual_transformer_blocks)
    for name, calls in outputs.items():  # hooked as streams, but not even re-routed through a kernel by a self rule
        assert len(calls) == len(with_session[name]) > 0
        assert all(torch.equal(a, b) for a, b in zip(calls, with_session[name])), name
    with pytest.raises(at.ConfigError, match="no audio tokens.*attention='audio'"):
        with at.steer(tiny[0], at.Rule(at.video, at.audio, at.bias(-1.0), branch="all")):
            run(tiny)


# --- the audio streams: attention="audio" / "a2v" / "v2a" against dense ------------------------------------------

def in_cond_forwards(tiny, nq, nk):
    """``applies(q, k)`` for EditedAttention: calls with ``nq`` queries and ``nk`` keys in the conditional forwards
    (the pipeline runs cond, then uncond, per step), and a function removing the forward counter."""
    counter = ForwardCounter(tiny[0].transformer)
    return (lambda q, k: counter.count % 2 == 0 and q.shape[-2] == nq and k.shape[-2] == nk), counter.remove


def _audio_self(logits):  # audio queries 1.. -> audio key 0, head 1 only
    logits[:, 1, 1:, 0] -= GAMMA
    return logits


def _a2v(logits):  # video queries of frames 1.. (the image frame 3 included) -> audio keys 0, 1
    logits[..., PER_FRAME:, :2] -= GAMMA
    return logits


def _v2a(logits):  # audio queries 2.. -> video keys of the image frame (the last one)
    logits[..., 2:, GENERATED * PER_FRAME:] -= GAMMA
    return logits


def _v2a_scored(logits):  # audio queries 2.. -> video keys of frame 0, logits halved (a per-element transform)
    logits[..., 2:, :PER_FRAME] /= 2.0
    return logits


def _audio_identity(logits):  # audio queries 1.. attend to themselves only
    own = torch.eye(AUDIO, dtype=torch.bool)[1:]
    logits[..., 1:, :] = torch.where(own, logits[..., 1:, :], float("-inf"))
    return logits


STREAM_CASES = {
    "audio": (at.Rule(at.audio[1:], at.audio[0], at.bias(-GAMMA), attention="audio", branch="cond", heads=1),
              (AUDIO, AUDIO), _audio_self),
    "a2v": (at.Rule(at.frames[1:], at.audio[:2], at.bias(-GAMMA), attention="a2v", branch="cond"),
            (SEQ, AUDIO), _a2v),
    "v2a": (at.Rule(at.audio[2:], at.frames.reference, at.bias(-GAMMA), attention="v2a", branch="cond"),
            (AUDIO, SEQ), _v2a),
    "v2a-scored": (at.Rule(at.audio[2:], at.frames[0], at.temperature(2.0), attention="v2a", branch="cond"),
                   (AUDIO, SEQ), _v2a_scored),
    "audio-identity": (at.Rule(at.audio[1:], at.tokens, at.identity(), attention="audio", branch="cond"),
                       (AUDIO, AUDIO), _audio_identity),
}
STREAM_MODULES = {"audio": "audio_dec_block.self_attention", "a2v": "va_cross_attention", "v2a": "av_cross_attention"}
KINDS = ("a2v", "audio", "v2a")


@pytest.mark.parametrize("case", sorted(STREAM_CASES))
def test_a_stream_rule_steers_exactly_its_own_calls_against_dense(tiny, case):
    rule, (nq, nk), edit = STREAM_CASES[case]
    kind = rule.attention
    vanilla = run(tiny)
    with at.steer(tiny[0], rule) as steering:
        steered = run(tiny)
    touched = steering.summary()["rules"][0]
    layers = len(tiny[0].transformer.visual_transformer_blocks)
    assert touched["layers"] == [f"transformer.visual_transformer_blocks.{i}.{STREAM_MODULES[kind]}"
                                 for i in range(layers)]
    assert touched["branches"] == ["cond"]
    applies, remove = in_cond_forwards(tiny, nq, nk)
    try:
        with EditedAttention(edit, applies) as dense:
            reference = run(tiny)
    finally:
        remove()
    assert dense.calls == 2 * layers  # 2 steps x layers, conditional forwards only
    for got, want in zip(steered, reference):  # video and audio latents
        np.testing.assert_allclose(got, want, atol=1e-4)
    assert max(np.abs(s - v).max() for s, v in zip(steered, vanilla)) > 1e-3


@pytest.mark.parametrize("kind", KINDS)
def test_a_zero_stream_rule_is_the_identity_and_exits_clean(tiny, kind):
    before = hook_state(tiny[0].transformer)
    vanilla = run(tiny)
    with at.steer(tiny[0], at.Rule(at.tokens, at.tokens, at.bias(0.0), attention=kind)) as steering:
        steered = run(tiny)
    assert len(steering.summary()["rules"][0]["layers"]) == 2  # the zero rule did run through the kernel
    for got, want in zip(steered, vanilla):
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert hook_state(tiny[0].transformer) == before
    with pytest.raises(RuntimeError, match="inside"):
        with at.steer(tiny[0], STREAM_CASES[kind][0]):
            raise RuntimeError("inside")
    assert hook_state(tiny[0].transformer) == before
    for got, want in zip(run(tiny), vanilla):
        np.testing.assert_array_equal(got, want)


def test_stream_rule_errors_name_the_calls_and_a_run_without_audio_reports_the_rule(tiny):
    with pytest.raises(at.ConfigError, match="query tokens of v2a attention calls.*audio queries, video keys"):
        with at.steer(tiny[0], at.Rule(at.frames[1:], at.frames[0], at.bias(-1.0), attention="v2a")):
            run(tiny, num_inference_steps=1)
    with pytest.raises(at.ConfigError, match="key tokens of a2v attention calls.*video queries, audio keys"):
        with at.steer(tiny[0], at.Rule(at.video, at.frames[0], at.bias(-1.0), attention="a2v")):
            run(tiny, num_inference_steps=1)
    # without audio the audio and cross-modal calls do not run: the stream rule never applies, and says so
    with pytest.raises(at.SteeringError, match="never applied"):
        with at.steer(tiny[0], at.Rule(at.audio, at.audio[0], at.bias(-1.0), attention="audio"), strict=True):
            run(tiny, num_inference_steps=1, sample_audio=False)


class DenseMaskedCross(TorchFunctionMode):
    """The video text cross-attention calls (video queries, ``TEXT`` text keys) densely in float64 with their
    boolean key mask, the logits from ``query_tokens`` to every text key multiplied by ``factor``."""

    def __init__(self, factor: float, query_tokens: torch.Tensor) -> None:
        super().__init__()
        self.factor, self.query_tokens, self.calls = factor, query_tokens, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        named = sdpa_arguments(args, kwargs)
        q, k, v, mask = named["query"], named["key"], named["value"], named.get("attn_mask")
        if q.shape[-2] != SEQ or k.shape[-2] != TEXT:
            return func(*args, **kwargs)
        self.calls += 1
        logits = (q.double() @ k.double().transpose(-1, -2)) * q.shape[-1] ** -0.5
        logits[..., self.query_tokens, :] *= self.factor
        logits = logits.masked_fill(~mask, float("-inf"))
        return (logits.softmax(-1) @ v.double()).to(q.dtype)


def test_a_cross_attention_rule_with_padded_text_matches_dense(tiny):
    """Called directly (the pipeline passes no prompt mask with given embeddings): two prompts, the second with
    3 padded text tokens; a cross-attention rule sharpening frame 0's attention on the text (a bias on all text keys
    would cancel in the softmax) against dense masked attention."""
    transformer = tiny[0].transformer
    torch.manual_seed(1)
    mask = torch.ones(2, TEXT, dtype=torch.bool)
    mask[1, -3:] = False
    inputs = dict(hidden_states=torch.randn(2, FRAMES, 4, 8, 9), encoder_hidden_states=torch.randn(2, TEXT, 32),
                  pooled_projections=torch.randn(2, 16), timestep=torch.tensor([500.0, 500.0]),
                  audio_hidden_states=torch.randn(2, AUDIO, 4), encoder_attention_mask=mask, return_dict=False)
    with torch.no_grad():
        vanilla = transformer(**inputs)
        rule = at.Rule(at.frames[0], at.text, at.logit_scale(3.0), branch="all", attention="cross")
        with at.steer(transformer, rule):
            steered = transformer(**inputs)
        with DenseMaskedCross(3.0, torch.arange(PER_FRAME)) as dense:
            reference = transformer(**inputs)
    assert dense.calls == len(transformer.visual_transformer_blocks)
    for got, want, before in zip(steered, reference, vanilla):
        assert (got - before).abs().max() > 1e-3
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["pag", "stg-r"])
def test_perturbed_guidance_matches_the_authors_combination(tiny, mode):
    """PAG (identity video self-attention in layer 1) and STG-R (fused block 1 passes both streams through) in the
    perturbed forward, against test_recipe_perturbed's plain-torch reference (the video prediction is guided)."""
    from test_recipe_perturbed import reference

    pipe = tiny[0]
    block = pipe.transformer.visual_transformer_blocks[1]
    if mode == "pag":
        recipe = at.recipes.pag(scale=2.0, layers="1")
        expected = reference(pipe, lambda: run(tiny)[0], 2.0, 4.0, perturb_modules=[block.video_dec_block.self_attention])
    else:
        recipe = at.recipes.stg(mode="R", scale=2.0, layers="1")
        expected = reference(pipe, lambda: run(tiny)[0], 2.0, 4.0, skip_blocks=[block])
    with at.steer(pipe, recipe):
        got = run(tiny)[0]
    assert np.abs(got - run(tiny)[0]).max() > 1e-3
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)


def test_a_batched_sweep_equals_sequential_runs(tiny):
    """Image-to-video with one image per batch row (the pipeline encodes one image per prompt): two DyMoS values as
    the rows of one call equal two sequential runs, video and audio latents and recordings."""
    from attnsteer.sweeps.batched import batch_call_kwargs, run_batched

    pipe, call_kwargs = tiny
    kwargs = call_kwargs(output_type="latent", num_inference_steps=2, image=test_image(64))
    recipes = [at.recipes.dymos(gamma=g, stop=0.5) for g in (-1.0, GAMMA)]
    sequential = []
    for recipe in recipes:
        with at.inspect(pipe) as rec, at.steer(pipe, recipe):
            out = pipe(generator=torch.Generator().manual_seed(0), **kwargs)
        sequential.append(((out.frames[0], out.audio[0]), rec))

    def generate(n):
        out = pipe(**batch_call_kwargs(pipe, kwargs, n, seed=0))
        return list(zip(out.frames, out.audio))

    batched = run_batched(pipe, recipes, generate, chunk=2)
    assert (sequential[0][0][0] - sequential[1][0][0]).abs().max() > 1e-3  # the values really differ
    for ((video, audio), rec), ((b_video, b_audio), b_rec) in zip(sequential, batched):
        torch.testing.assert_close(b_video, video, atol=1e-5, rtol=0)
        torch.testing.assert_close(b_audio, audio, atol=1e-5, rtol=0)
        assert b_rec.layout.reference_frames == (FRAMES - 1,)
        torch.testing.assert_close(b_rec.frame_map(branch="cond"), rec.frame_map(branch="cond"), atol=1e-6, rtol=0)
