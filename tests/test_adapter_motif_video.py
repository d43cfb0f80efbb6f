"""Motif-Video beyond the shared battery (tests/test_families.py, which checks DyMoS and frame maps with padded
text against dense on tiny-motif-video, whose dense reference leaves the decoder block's 2x-video calls alone):
which blocks are hooked."""

from __future__ import annotations

import pytest

import attnsteer as at


def test_the_decoder_blocks_are_not_hooked_and_cannot_be_skipped():
    from attnsteer.contract.registry import require_adapter
    from attnsteer.testing.tiny import build_tiny

    pipe, _ = build_tiny("tiny-motif-video")
    adapter = require_adapter(pipe.transformer)
    assert pipe.transformer.config.num_decoder_layers == 1
    assert [n for n, _ in adapter.attention_modules(pipe.transformer)] == [
        "transformer_blocks.0.attn", "single_transformer_blocks.0.attn"]
    assert [n for n, _ in adapter.blocks(pipe.transformer)] == ["transformer_blocks.0", "single_transformer_blocks.0"]
    with pytest.raises(at.SteeringError, match="declares no cross-attention modules"):
        with at.steer(pipe, at.Rule(at.frames[1:], at.text, at.bias(1.0), attention="cross")):
            pass
