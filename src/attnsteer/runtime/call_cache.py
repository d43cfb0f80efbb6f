"""The steady state of a steered run: what an attention call derives from things that change only with the step class
(which rules are on), the layout, the branches, the batch and heads, the dtype and the device, derived once and looked
up by every later call with the same ones.

Two levels, both held by the model's :class:`~attnsteer.runtime.controller.Controller` and dropped whenever a session
attaches or leaves (their keys hold the ids of the sessions' rules, alive while attached):

- a :class:`CallClass` per module and set of active rules: who errors name, the rules split into logit, output,
  query and multi-pass rules, and the key of that set;
- a :class:`PreparedCall` per (call class's rules, layout, branches, batch, heads, dtype, device): the plan, each
  session's batch rows and applied rules, whether the call leaves every logit as it is, and the grouped kernel's
  groups and bias checked and on the device (:mod:`attnsteer.kernels.prepared`).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import attrs

from ..kernels.prepared import PreparedGroups
from ..language.rules import Rule
from .multi_pass import passes_of
from .outputs import split_output_rules
from .plan import CallPlan
from .query_call import split_query_rules

MAX_ENTRIES = 1024  # prepared calls kept per model; past this (shapes that keep changing) the cache starts over


@attrs.frozen(eq=False)
class CallClass:
    """What one module's calls share while the same rules are on (see the module docstring)."""

    subject: str  # who an error is about: the first active rule in the module, or the recording
    logit_rules: tuple[tuple[Any, Rule], ...]  # the (client, rule) pairs that change logits ...
    output_rules: tuple[tuple[Any, Rule], ...]  # ... those that scale the module's output ...
    query_rules: tuple[tuple[Any, Rule], ...]  # ... those that transform the queries at the attention call ...
    passes: tuple[tuple[Any, Rule], ...]  # ... and the multi-pass ones (also among the logit rules' plan input)
    key: tuple  # the active pairs, their frame limits and the recorders, by identity

    @classmethod
    def of(cls, key: tuple, subject: str, active: list[tuple[Any, Rule]]) -> CallClass:
        logits, outputs = split_output_rules(active)
        logits, queries = split_query_rules(logits)
        return cls(subject, tuple(logits), tuple(outputs), tuple(queries), tuple(passes_of(active)), key)


@attrs.frozen(eq=False)
class PreparedCall:
    """What one call derives once for its key (see the module docstring)."""

    plan: CallPlan
    rows: dict[int, tuple[bool, ...] | None]  # id(client) -> the call's rows of its batch share (None: every row)
    applied: dict[int, tuple[Rule, ...]]  # id(client) -> its logit rules that this plan applies
    unchanged: bool  # no logit changes, no recording, identity rule or logit scale: the user's kernel answers
    groups: PreparedGroups | None  # the grouped path's cells and bias, checked and on the device (no mass wanted)


class CallCache:
    """The call classes and prepared calls of one controller (see the module docstring)."""

    def __init__(self) -> None:
        self.classes: dict[Hashable, CallClass] = {}
        self.calls: dict[Hashable, PreparedCall] = {}
        self.contexts: dict[Hashable, Any] = {}  # second contexts as the modules receive them (runtime.second_context)

    def clear(self) -> None:
        self.classes.clear()
        self.calls.clear()
        self.contexts.clear()

    def call_class(self, key: Hashable, subject: Callable[[], str], active: list[tuple[Any, Rule]]) -> CallClass:
        """The call class of ``key`` (see :func:`class_key`), built on its first use."""
        found = self.classes.get(key)
        if found is None:
            found = self.classes[key] = CallClass.of(key, subject(), active)
        return found

    def prepared(self, key: Hashable, build: Callable[[], PreparedCall]) -> PreparedCall:
        """The prepared call of ``key``, built on its first use."""
        found = self.calls.get(key)
        if found is None:
            found = build()
            if len(self.calls) >= MAX_ENTRIES:
                self.calls.clear()
            self.calls[key] = found
        return found


def class_key(layer_index: int, attention: str, active: list[tuple[Any, Rule]], frame_limits: dict[int, frozenset[int]],
              recorders: list[Any]) -> tuple:
    """The identity of a module's call class: its module, the active (client, rule) pairs with the query frames their
    schedules limit them to, and the recorders."""
    return (layer_index, attention, tuple((id(c), id(r), frame_limits.get(id(r))) for c, r in active),
            tuple(id(c) for c in recorders))
