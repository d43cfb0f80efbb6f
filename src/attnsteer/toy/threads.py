"""Torch on one thread while a toy experiment runs."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Torch on one thread for the block: the toy's tensors are small, and a second thread that waits
    for a busy core costs far more than it gains (measured in docs/toy.md)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
