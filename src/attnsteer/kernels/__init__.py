"""Attention kernels: the exact grouped kernel and the chunked score-function kernel (their dense
reference for tests is :func:`attnsteer.testing.oracle.dense_attention`)."""

from .grouped import QueryMass, grouped_attention
from .scored import scored_attention

__all__ = ["QueryMass", "grouped_attention", "scored_attention"]
