"""SANA-WM's LTX-2 refiner: chunk-causal refinement whose self-attention keys are a KV-cached window
[sink, history, block], steered exactly on that window (not in the shared battery: the adapter must be told the
latent grid, and these calls are steered, not recorded).

The tiny call (attnsteer.testing.tiny): a stage-1 latent of 6 latent frames of 4x4 tokens, sink 1 frame,
blocks of 2 frames, a window of at most 4 frames. Forwards: one sink capture (16 queries and keys), then per block
3 denoising steps and one history capture; their self-attention keys are the sink (16 tokens), the history (0, 32
and 48 tokens) and the block (32, 32, 16 tokens). The dense references below edit the logits of exactly those calls,
found from each forward's kv_cache_mode, which a plain torch pre-hook reads.
"""

from __future__ import annotations

import pytest
import torch

import attnsteer as at
from attnsteer.plugins.sana_wm_refiner import SanaWMRefinerAdapter
from dense_reference import EditedAttention, hook_state

pytestmark = pytest.mark.usefixtures("one_thread")
GAMMA, PER_FRAME = 2.0, 16


@pytest.fixture(scope="module")
def pipe():
    from attnsteer.testing.tiny import tiny_sana_wm_refiner

    return tiny_sana_wm_refiner()


def adapter():
    return SanaWMRefinerAdapter(grid=(4, 4))


def run(pipe):
    from attnsteer.testing.tiny import sana_wm_refiner_call_kwargs

    return pipe(**sana_wm_refiner_call_kwargs())


class Modes:
    """The kv_cache_mode of the transformer forward running now (plain torch pre-hook)."""

    def __init__(self, model):
        self.mode = None
        self.handle = model.register_forward_pre_hook(self.pre, with_kwargs=True)

    def pre(self, module, args, kwargs):
        self.mode = kwargs.get("kv_cache_mode")


def dense(pipe, edit, modes_steered):
    """The run with ``edit`` on the self-attention logits [B, H, queries, window] of forwards in ``modes_steered``
    (self-attention calls: keys at least as many as queries; the text cross-attention has 8 keys)."""
    modes = Modes(pipe.transformer)
    applies = lambda q, k: modes.mode in modes_steered and k.shape[-2] >= q.shape[-2]  # noqa: E731
    try:
        with EditedAttention(edit, applies) as edited:
            return run(pipe), edited.calls
    finally:
        modes.handle.remove()


def test_dymos_lowers_the_blocks_attention_to_the_sink_against_dense(pipe):
    vanilla = run(pipe)
    with at.steer(pipe, at.recipes.dymos(gamma=GAMMA, stop=1.0), adapter=adapter()) as steering:
        steered = run(pipe)
    summary = steering.summary()["rules"][0]
    assert summary["steps"] == [0, 1, 2] and summary["branches"] == ["cond"]

    def sink(logits):  # every query of the block -> the sink frame (the window's first 16 keys)
        logits[..., :PER_FRAME] -= GAMMA
        return logits

    # the denoising forwards only: the sink capture has no generated queries, each block's history capture (sigma 0)
    # comes after the block's last step, where progress(stop=1.0) is off
    reference, calls = dense(pipe, sink, ("inject",))
    assert calls == 3 * 3 * 2  # blocks x steps x layers
    assert (steered - vanilla).abs().max() > 1e-3
    torch.testing.assert_close(steered, reference, atol=1e-4, rtol=0)


def test_a_window_frame_rule_reaches_history_and_capture_forwards_against_dense(pipe):
    rule = at.Rule(at.tokens, at.frames[1:2], at.bias(-GAMMA))  # window frame 1: the oldest history frame, if any
    with at.steer(pipe, rule, adapter=adapter()):
        steered = run(pipe)

    def frame_1(logits):  # window positions 16..31 (the first block's own first frame while there is no history)
        logits[..., PER_FRAME:2 * PER_FRAME] -= GAMMA
        return logits

    # the sink capture holds one frame only (no frame 1): left alone
    reference, calls = dense(pipe, frame_1, ("inject", "inject_and_capture_post_rope"))
    assert calls == 3 * 4 * 2
    torch.testing.assert_close(steered, reference, atol=1e-4, rtol=0)


def test_a_zero_rule_is_the_identity_and_every_exit_is_clean(pipe):
    vanilla = run(pipe)
    before = hook_state(pipe.transformer)
    with at.steer(pipe, at.Rule(at.tokens, at.tokens, at.bias(0.0)), adapter=adapter()) as steering:
        torch.testing.assert_close(run(pipe), vanilla, atol=1e-5, rtol=0)
    assert steering.summary()["attention_calls_steered"] > 0
    with pytest.raises(RuntimeError, match="inside"):
        with at.steer(pipe, at.recipes.dymos(gamma=GAMMA), adapter=adapter()):
            raise RuntimeError("inside")
    assert hook_state(pipe.transformer) == before
    assert torch.equal(run(pipe), vanilla)


def test_without_a_grid_or_when_recording_it_raises_naming_why(pipe):
    with pytest.raises(at.SteeringError, match=r"no frame grid.*SanaWMRefinerAdapter\(grid="):
        with at.steer(pipe, at.recipes.dymos(gamma=GAMMA)):
            run(pipe)
    with pytest.raises(at.SteeringError, match="recording not supported in self-attention over a key window"):
        with at.inspect(pipe, adapter=adapter()):
            run(pipe)
    with pytest.raises(at.ConfigError, match="grid must be"):
        SanaWMRefinerAdapter(grid=(4,))
