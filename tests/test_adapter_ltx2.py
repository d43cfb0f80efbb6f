"""LTX-2 beyond the shared battery: its audio streams, and the "audio" segment kind.

LTX-2's video and audio streams never share a self-attention sequence. attention="self" rules (DyMoS) touch the video
self-attention (attn1) only, and at.audio raises there; the audio self-attention (audio_attn1), the audio-to-video and
the video-to-audio calls are reached by Rule(attention="audio" | "a2v" | "v2a"), each checked here against a dense
computation written in the test. The extra guidance forwards (spatio-temporal and modality-isolation guidance) are
guidance negatives, left alone by a "cond" rule. The audio segment itself is tested on a small joint audio+video
transformer through at.GenericAdapter, against dense.

From the tiny config: 32x32 pixels, VAE /2 in space and time -> 16x16 tokens per frame; 5 frames -> 3 latent frames;
5 audio tokens.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import attnsteer as at
from dense_reference import DenseAttention, EditedAttention, frame_bias, hook_state

pytestmark = pytest.mark.usefixtures("one_thread")
FRAMES, PER_FRAME, GAMMA = 3, 256, 2.0


@pytest.fixture(scope="module")
def pipe():
    from attnsteer.testing.tiny import tiny_ltx2

    return tiny_ltx2()


def run(pipe, **overrides):
    from attnsteer.testing.tiny import ltx2_call_kwargs
    from attnsteer.testing.tiny import test_image

    kwargs = ltx2_call_kwargs(**{"output_type": "latent", "num_inference_steps": 2, **overrides})
    out = pipe(image=test_image(32), generator=torch.Generator().manual_seed(0), **kwargs)
    return np.asarray(out.frames), np.asarray(out.audio)


def test_guidance_negative_forwards_are_left_alone_by_a_cond_rule(pipe):
    guidance = dict(stg_scale=1.0, audio_stg_scale=1.0, modality_scale=3.0, audio_modality_scale=3.0)
    vanilla, _ = run(pipe, **guidance)
    with at.steer(pipe, at.recipes.dymos(gamma=GAMMA, stop=1.0)) as steering:
        steered, _ = run(pipe, **guidance)
    assert steering.summary()["rules"][0]["branches"] == ["cond"]

    def cond_half(q):  # [uncond, cond] forwards: the second row; the STG and modality forwards (batch 1): none
        if q.shape[0] != 2:
            return None
        return frame_bias(q.shape[-2], 0, FRAMES, PER_FRAME, -GAMMA, [1], 2)

    with DenseAttention(cond_half, seq_len=FRAMES * PER_FRAME):
        reference, _ = run(pipe, **guidance)
    assert np.abs(steered - vanilla).max() > 1e-3
    np.testing.assert_allclose(steered, reference, atol=1e-4)


def test_self_rules_touch_only_the_video_self_attention_and_at_audio_raises_there(pipe):
    audio_outputs = []
    handles = [m.register_forward_hook(lambda m, a, out: audio_outputs.append(out.detach().clone()))
               for n, m in pipe.transformer.named_modules()
               if n.endswith(("audio_attn1", "audio_to_video_attn", "video_to_audio_attn"))]
    try:
        rule = at.Rule(at.tokens, at.tokens, at.bias(0.0), branch="all")  # identity: every call goes through the kernel
        with at.steer(pipe, rule) as steering:
            run(pipe)
        assert all(name.endswith(".attn1") and ".audio" not in name for name in steering.summary()["rules"][0]["layers"])
        with_session = audio_outputs[:]
        audio_outputs.clear()
        run(pipe)
    finally:
        for h in handles:
            h.remove()
    assert len(with_session) == len(audio_outputs) > 0
    assert all(torch.equal(a, b) for a, b in zip(with_session, audio_outputs))  # not even re-routed through a kernel
    with pytest.raises(at.ConfigError, match="no audio tokens.*attention='audio'"):
        with at.steer(pipe, at.Rule(at.video, at.audio, at.bias(-1.0), branch="all")):
            run(pipe)


# --- the audio streams: attention="audio" / "a2v" / "v2a" against dense ------------------------------------------

AUDIO = 5  # audio tokens of the tiny call (one per audio latent frame)
VIDEO = FRAMES * PER_FRAME


def shapes(nq, nk):
    return lambda q, k: q.shape[-2] == nq and k.shape[-2] == nk


def edit_cond_row(edit):
    """Apply ``edit`` to the conditional row (1) of the batched [uncond, cond] forwards."""
    def apply(logits):
        logits = logits.clone()
        logits[1] = edit(logits[1])
        return logits
    return apply


def _audio_self(logits):  # audio queries 1.. -> audio key 0, head 1 only
    logits[1, 1:, 0] -= GAMMA
    return logits


def _a2v(logits):  # video queries of frames 1.. -> audio keys 0, 1
    logits[:, PER_FRAME:, :2] -= GAMMA
    return logits


def _v2a(logits):  # audio queries 2.. -> video keys of frame 0
    logits[:, 2:, :PER_FRAME] -= GAMMA
    return logits


def _v2a_scored(logits):  # audio queries 2.. -> video keys of frame 0, logits halved (a per-element transform)
    logits[:, 2:, :PER_FRAME] /= 2.0
    return logits


def _audio_identity(logits):  # audio queries 1.. attend to themselves only
    own = torch.eye(AUDIO, dtype=torch.bool)[1:]
    logits[:, 1:] = torch.where(own, logits[:, 1:], float("-inf"))
    return logits


STREAM_CASES = {
    "audio": (at.Rule(at.audio[1:], at.audio[0], at.bias(-GAMMA), attention="audio", branch="cond", heads=1),
              shapes(AUDIO, AUDIO), _audio_self),
    "a2v": (at.Rule(at.frames[1:], at.audio[:2], at.bias(-GAMMA), attention="a2v", branch="cond"),
            shapes(VIDEO, AUDIO), _a2v),
    "v2a": (at.Rule(at.audio[2:], at.frames[0], at.bias(-GAMMA), attention="v2a", branch="cond"),
            shapes(AUDIO, VIDEO), _v2a),
    "v2a-scored": (at.Rule(at.audio[2:], at.frames[0], at.temperature(2.0), attention="v2a", branch="cond"),
                   shapes(AUDIO, VIDEO), _v2a_scored),
    "audio-identity": (at.Rule(at.audio[1:], at.tokens, at.identity(), attention="audio", branch="cond"),
                       shapes(AUDIO, AUDIO), _audio_identity),
}
MODULES = {"audio": "audio_attn1", "a2v": "audio_to_video_attn", "v2a": "video_to_audio_attn"}
KINDS = ("a2v", "audio", "v2a")


@pytest.mark.parametrize("case", sorted(STREAM_CASES))
def test_a_stream_rule_steers_exactly_its_own_calls_against_dense(pipe, case):
    rule, applies, edit = STREAM_CASES[case]
    kind = rule.attention
    vanilla = run(pipe)
    with at.steer(pipe, rule) as steering:
        steered = run(pipe)
    touched = steering.summary()["rules"][0]
    assert touched["layers"] == [f"transformer.transformer_blocks.{i}.{MODULES[kind]}" for i in range(2)]
    assert touched["branches"] == ["cond"]
    with EditedAttention(edit_cond_row(edit), applies) as dense:
        reference = run(pipe)
    assert dense.calls == 2 * 2  # 2 blocks x 2 steps
    for got, want, before in zip(steered, reference, vanilla):  # video and audio latents
        np.testing.assert_allclose(got, want, atol=1e-4)
    assert max(np.abs(s - v).max() for s, v in zip(steered, vanilla)) > 1e-3


@pytest.mark.parametrize("kind", KINDS)
def test_a_zero_stream_rule_is_the_identity_and_exits_clean(pipe, kind):
    before = hook_state(pipe.transformer)
    vanilla = run(pipe)
    with at.steer(pipe, at.Rule(at.tokens, at.tokens, at.bias(0.0), attention=kind)) as steering:
        steered = run(pipe)
    assert len(steering.summary()["rules"][0]["layers"]) == 2  # the zero rule did run through the kernel
    for got, want in zip(steered, vanilla):
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert hook_state(pipe.transformer) == before
    with pytest.raises(RuntimeError, match="inside"):
        with at.steer(pipe, STREAM_CASES[kind][0]):
            raise RuntimeError("inside")
    assert hook_state(pipe.transformer) == before
    for got, want in zip(run(pipe), vanilla):
        np.testing.assert_array_equal(got, want)


def test_audio_indices_select_audio_tokens_and_raise_out_of_range():
    from attnsteer.language.selectors import SelectionContext

    layout = at.TokenLayout(num_frames=2, tokens_per_frame=2, video_start=5, segments=[at.Segment("audio", 0, 5)])
    mask = lambda s: s.token_mask(SelectionContext(layout)).nonzero().flatten().tolist()  # noqa: E731
    assert [mask(at.audio[0]), mask(at.audio[-1]), mask(at.audio[1:3]), mask(at.audio[::2])] == [
        [0], [4], [1, 2], [0, 2, 4]]
    assert mask(at.audio[3:] | at.frames[0]) == [3, 4, 5, 6]
    with pytest.raises(at.ConfigError, match=r"audio\[5\] is out of range for a call with 5 audio tokens"):
        mask(at.audio[5])
    with pytest.raises(at.ConfigError, match="no audio tokens"):
        at.audio[0].token_mask(SelectionContext(at.TokenLayout(num_frames=2, tokens_per_frame=2)))


def test_a_stream_rule_selecting_none_of_its_queries_or_keys_raises_naming_them(pipe):
    with pytest.raises(at.ConfigError, match="query tokens of v2a attention calls.*audio queries, video keys"):
        with at.steer(pipe, at.Rule(at.frames[1:], at.frames[0], at.bias(-1.0), attention="v2a")):
            run(pipe)
    with pytest.raises(at.ConfigError, match="key tokens of audio attention calls"):
        with at.steer(pipe, at.Rule(at.audio, at.frames[0], at.bias(-1.0), attention="audio")):
            run(pipe)


def test_attention_kinds_are_checked_when_the_rule_is_made_and_when_it_is_attached():
    kinds = r"\('self', 'cross', 'audio', 'a2v', 'v2a'\)"
    with pytest.raises(at.ConfigError, match=r"Rule.attention must be one of " + kinds):
        at.Rule(at.audio, at.audio, at.bias(-1.0), attention="audio2")
    with pytest.raises(at.ConfigError, match="identity.*attention='a2v'"):
        at.Rule(at.frames[1:], at.tokens, at.identity(), attention="a2v")
    model = JointAudioVideo()
    adapter = at.GenericAdapter(layout=joint_layout, attention=r"attn")
    with pytest.raises(at.SteeringError, match=r"has no audio-to-video attention.*kinds of this model are \('self',\)"):
        with at.steer(model, at.Rule(at.frames[1:], at.audio, at.bias(-1.0), attention="a2v"), adapter=adapter):
            pass


# --- the audio segment kind on a joint audio+video sequence ----------------------------------------------------

VIDEO_FRAMES, VIDEO_TOKENS, AUDIO_TOKENS, DIM, HEADS = 3, 4, 5, 16, 2


class JointAttention(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv = torch.nn.Linear(DIM, 3 * DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, HEADS, DIM // HEADS).permute(2, 0, 3, 1, 4)
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, DIM)


class JointAudioVideo(torch.nn.Module):
    """[video tokens frame-major, audio tokens] -> same; one self-attention over the joint sequence."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = JointAttention()

    def forward(self, video: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        return self.attn(torch.cat([video.flatten(1, 2), audio], dim=1))


def joint_layout(model, inputs):
    video = VIDEO_FRAMES * VIDEO_TOKENS
    return at.TokenLayout(num_frames=VIDEO_FRAMES, tokens_per_frame=VIDEO_TOKENS,
                          segments=[at.Segment("audio", video, video + inputs["audio"].shape[1])])


def test_at_audio_selects_the_audio_segment_against_dense():
    torch.manual_seed(0)
    model = JointAudioVideo()
    video, audio = torch.randn(1, VIDEO_FRAMES, VIDEO_TOKENS, DIM), torch.randn(1, AUDIO_TOKENS, DIM)
    adapter = at.GenericAdapter(layout=joint_layout, attention=r"attn")
    with at.steer(model, at.Rule(at.frames[1:], at.audio, at.bias(-GAMMA), branch="all"), adapter=adapter):
        steered = model(video, audio)
    seq = VIDEO_FRAMES * VIDEO_TOKENS + AUDIO_TOKENS
    position = torch.arange(seq)
    queries = (position >= VIDEO_TOKENS) & (position < VIDEO_FRAMES * VIDEO_TOKENS)
    bias = (queries[:, None] & (position >= VIDEO_FRAMES * VIDEO_TOKENS)[None, :]).double() * -GAMMA
    with DenseAttention(lambda q: bias.expand(q.shape[0], 1, seq, seq)):
        reference = model(video, audio)
    assert (steered - model(video, audio)).abs().max() > 1e-3
    torch.testing.assert_close(steered, reference, atol=1e-5, rtol=0)
    with at.inspect(model, adapter=adapter) as rec:
        model(video, audio)
    assert [s.kind for s in rec.layout.segments] == ["audio"]
    with pytest.raises(at.ConfigError, match="no text tokens"):
        rec.text_mass()
