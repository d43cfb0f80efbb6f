"""Kandinsky 5 beyond the shared battery (tests/test_families.py): sparse "nabla" attention (fractal token
order, flex BlockMask) cannot be steered exactly, so a session on such a forward raises naming why."""

from __future__ import annotations

import pytest
import torch

import attnsteer as at
from attnsteer.testing.tiny import build_tiny, test_image

pytestmark = pytest.mark.usefixtures("one_thread")


def test_sparse_nabla_attention_is_refused_with_its_reason():
    pipe, call_kwargs = build_tiny("tiny-kandinsky5-i2v")
    # what the pipeline passes for attention_type="nabla" checkpoints (contents unused: the session refuses first)
    pipe.get_sparse_params = lambda sample, device: {"to_fractal": True, "attention_type": "nabla"}
    kwargs = call_kwargs(output_type="latent", num_inference_steps=1)
    with pytest.raises(at.SteeringError, match="nabla.*BlockMask.*attention_type='regular'"):
        with at.steer(pipe, at.recipes.dymos(gamma=1.0)):
            pipe(image=test_image(32), generator=torch.Generator().manual_seed(0), **kwargs)
