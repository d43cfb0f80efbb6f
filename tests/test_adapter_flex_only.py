"""Families whose self-attention runs only on the flex backend are refused with their reason (stand-in models of
the refused class names: adapters match by class name, and building the real ones needs a compiled flex kernel)."""

from __future__ import annotations

import pytest
import torch

import attnsteer as at


@pytest.mark.parametrize("class_name, family, reason", [
    ("AnyFlowFARTransformer3DModel", "anyflow-far", "only on the flex backend"),
    ("Kandinsky6SRTransformer3DModel", "kandinsky6-sr", "NABLA sparse self-attention"),
])
def test_a_session_raises_naming_the_reason(class_name, family, reason):
    model = type(class_name, (torch.nn.Module,), {})()
    for session in (lambda: at.steer(model, at.recipes.dymos(gamma=1.0)), lambda: at.inspect(model)):
        with pytest.raises(at.UnsupportedModelError, match=rf"\({family}\) cannot be steered .*{reason}"):
            session()
