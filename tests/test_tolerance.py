"""attnsteer.testing's tolerance helper: derived from the dtype and magnitude, wide enough for another
reduction order, narrow enough to catch a real error."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnsteer.errors import ConfigError
from attnsteer.testing import assert_close, tolerance

pytestmark = pytest.mark.exactness


def test_tolerance_grows_with_epsilon_magnitude_and_the_square_root_of_the_roundings():
    base = tolerance(torch.float32)
    assert base == pytest.approx(10 * (2 / 12) ** 0.5 * torch.finfo(torch.float32).eps)
    assert tolerance(torch.float32, magnitude=8.0) == pytest.approx(8 * base)
    assert tolerance(torch.float32, ops=400) == pytest.approx(20 * base)
    assert tolerance(np.float64) == pytest.approx(base * 2.0**-29)
    assert tolerance(torch.bfloat16) == pytest.approx(base * 2.0**16)


def test_two_float32_reduction_orders_pass_and_a_wrong_bias_of_1e_3_fails():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 512, 16, generator=gen) for _ in range(3))
    exact = torch.softmax(q.double() @ k.double().transpose(-1, -2) / 4, -1)
    blocked = torch.cat([torch.softmax(q[:, :, i:i + 64] @ k.transpose(-1, -2) / 4, -1) for i in range(0, 512, 64)],
                        dim=2)  # another blocking of the same float32 computation
    assert_close(blocked, exact, ops=512)
    wrong = exact.clone()
    wrong[..., :64] = torch.softmax(q.double() @ k.double().transpose(-1, -2) / 4 + torch.cat(
        [torch.full((64,), 1e-3), torch.zeros(448)]).double(), -1)[..., :64]
    with pytest.raises(AssertionError, match="differ by more than"):
        assert_close(wrong.float(), exact, ops=512)
    out = (exact @ v.double()).float()
    assert_close(torch.nn.functional.scaled_dot_product_attention(q, k, v), out, ops=512)


def test_assert_close_reports_the_worst_element_and_refuses_bad_input():
    with pytest.raises(AssertionError, match=r"1 of 3 elements .* index \(2,\)"):
        assert_close(np.array([1.0, 2.0, 3.1], dtype=np.float32), np.array([1.0, 2.0, 3.0]))
    with pytest.raises(AssertionError, match="shapes differ"):
        assert_close(torch.zeros(2), torch.zeros(3))
    with pytest.raises(AssertionError, match="differ by more than"):
        assert_close(torch.tensor([float("nan")]), torch.tensor([1.0]))
    assert_close(torch.tensor([float("inf"), 1.0]), torch.tensor([float("inf"), 1.0]))
    with pytest.raises(ConfigError, match="ops must be an int >= 1"):
        tolerance(torch.float32, ops=0)
    with pytest.raises(ConfigError, match="magnitude must be"):
        tolerance(torch.float32, magnitude=float("nan"))
    with pytest.raises(ConfigError, match="floating dtype"):
        tolerance(torch.int64)
