"""Attention kernels: the exact grouped kernel, and its dense reference for tests."""

from .grouped import grouped_attention
from .oracle import dense_attention

__all__ = ["dense_attention", "grouped_attention"]
