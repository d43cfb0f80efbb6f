"""Block constancy of pair predicates: over a block of query rows, which keys a predicate holds for on every row
(*all in*), on some row (*any in*), so that a block decomposition runs the all-in and all-out keys fused.

:func:`block_states` answers exactly or conservatively (``all_in`` never claims a key that is not in for every
row, ``any_in`` never misses one that is in for some row; a key in doubt is treated as mixed, which stays exact,
only slower):

- ``token_distance(m)`` over contiguous rows ``[a, b)``, in closed form: all in for keys ``j < a - m`` or
  ``j > b - 1 + m``, any in for ``j > a + m`` or ``j < b - 1 - m``; O(N) per block.
- predicates that are not elementwise (``frame_window``, ``frame_distance``, ``same_region``) depend on a query
  only through its layout group and the regions they read: they are evaluated on one row per such class.
- ``&``, ``|``, ``~`` combine their parts' answers (conservatively for ``&``'s any and ``|``'s all).
- anything else (``same_location``, a user's elementwise predicate) is evaluated on every row of the block; a
  user's :class:`~attnsteer.language.pairs.Pairs` may define ``block_states(ctx, rows, keys)`` to answer itself.
"""

from __future__ import annotations

import torch

from .pairs import BothPairs, EitherPairs, NotPairs, Pairs, TokenDistance
from .selectors import SelectionContext

States = tuple[torch.Tensor, torch.Tensor]


def block_states(pairs: Pairs, ctx: SelectionContext, rows: torch.Tensor, keys: torch.Tensor) -> States:
    """(all_in, any_in), bool [len(keys)]: keys ``pairs`` holds for with every / some query of ``rows`` (sorted)."""
    own = getattr(pairs, "block_states", None)
    if own is not None:
        return own(ctx, rows, keys)
    if isinstance(pairs, TokenDistance) and _contiguous(rows):
        a, b, m = int(rows[0]), int(rows[-1]) + 1, pairs.min
        return (keys < a - m) | (keys > b - 1 + m), (keys > a + m) | (keys < b - 1 - m)
    if isinstance(pairs, EitherPairs):  # before BothPairs, its base class
        (la, ly), (ra, ry) = (block_states(p, ctx, rows, keys) for p in (pairs.left, pairs.right))
        return la | ra, ly | ry
    if isinstance(pairs, BothPairs):
        (la, ly), (ra, ry) = (block_states(p, ctx, rows, keys) for p in (pairs.left, pairs.right))
        return la & ra, ly & ry
    if isinstance(pairs, NotPairs):
        inner_all, inner_any = block_states(pairs.inner, ctx, rows, keys)
        return ~inner_any, ~inner_all
    if not pairs.elementwise:
        rows = representatives(pairs, ctx, rows)
    m = pairs.evaluate(ctx, rows, keys)
    return m.all(0), m.any(0)


def representatives(pairs: Pairs, ctx: SelectionContext, rows: torch.Tensor) -> torch.Tensor:
    """One row of ``rows`` per class of layout group x membership of the regions ``pairs`` reads (a predicate that
    is not elementwise answers alike for the rows of one class)."""
    code = ctx.layout.group_ids()[rows]
    for region in pairs.selectors():
        code = code * 2 + region.token_mask(ctx)[rows].long()
    _, which = torch.unique(code, return_inverse=True)
    n = rows.numel()
    first = torch.full((int(which.max()) + 1 if n else 0,), n, dtype=torch.long).scatter_reduce(
        0, which, torch.arange(n), reduce="amin")
    return rows[first]


def _contiguous(rows: torch.Tensor) -> bool:
    return rows.numel() > 0 and int(rows[-1]) - int(rows[0]) + 1 == rows.numel()


__all__ = ["block_states", "representatives"]
