"""Attention kernels: the exact grouped kernel, the chunked score-function kernel, and the dense
reference for tests."""

from .grouped import QueryMass, grouped_attention
from .oracle import dense_attention
from .scored import scored_attention

__all__ = ["QueryMass", "dense_attention", "grouped_attention", "scored_attention"]
