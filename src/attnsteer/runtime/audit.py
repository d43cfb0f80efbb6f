"""No silent no-ops: rules that cannot or did not apply are reported, by name and with the reason.

At the start of a session, a rule whose ``layers`` filter matches none of the hooked attention
modules is reported at once; at its end, every rule that never applied during the run is
reported with the likely reason (its schedule was never on in the steps that ran, its branch
never ran, or it selected no token pair). Reports are :class:`~attnsteer.errors.AttnsteerWarning`
warnings, or a :class:`~attnsteer.errors.SteeringError` with ``strict=True``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence

from ..errors import AttnsteerWarning, ConfigError, SteeringError, describe_rule
from ..language.rules import Rule
from .controller import Controller


def unmatched_layers(rules: Iterable[Rule], controllers: Sequence[Controller]) -> list[tuple[Rule, str]]:
    """Rules whose layer filter matches no hooked module of their kind of attention."""
    problems = []
    for rule in rules:
        layers = [layer for c in controllers for kind, layer in c.layers if kind == rule.attention]
        if rule.layers is not None and not any(rule.matches_layer(layer.index, layer.names, layer.model) for layer in layers):
            example = f" (names look like {layers[0].qualified!r}; a regex must match the whole name)" if layers else ""
            problems.append((rule, f"its layers filter {list(rule.layers)} matches none of the {len(layers)} "
                                   f"{rule.attention}-attention modules{example}"))
    return problems


def never_applied(rules: Sequence[Rule], applied: set[int], controllers: Sequence[Controller]) -> list[tuple[Rule, str]]:
    """Rules (by index in ``rules``) that never applied although the model ran, with the likely reason."""
    steps = {info for c in controllers for info in c.seen_steps}
    branches = {b for c in controllers for b in c.seen_branches}
    if not steps:
        return []  # nothing ran: nothing to report
    problems = []
    unreachable = {id(rule) for rule, _ in unmatched_layers(rules, controllers)}  # reported at the start already
    for i, rule in enumerate(rules):
        if i in applied or id(rule) in unreachable:
            continue
        if not _ever_on(rule, steps):
            seen = sorted(info.step for info in steps if info.step is not None)
            problems.append((rule, f"its schedule {rule.when!r} was never on in the steps that ran ({seen})"))
        elif rule.branch != "all" and rule.branch not in branches:
            problems.append((rule, f"its branch {rule.branch!r} never ran (branches seen: {sorted(branches)})"))
        else:
            problems.append((rule, "it selected no (query, key) pair in any attention call"))
    return problems


def nothing_recorded(record: object, controllers: Sequence[Controller]) -> list[tuple[object, str]]:
    """A recording that received no attention call although the model ran."""
    ran = any(c.seen_steps for c in controllers)
    if ran and getattr(record, "layout", None) is None:
        return [(record, "the model ran but no self-attention call was recorded")]
    return []


def unmatched_map_bins(record: object, controllers: Sequence[Controller]) -> list[tuple[object, str]]:
    """A recording's spatial-map bins (``map_steps`` ranges, ``map_layers`` groups) that matched nothing that ran,
    so they kept no map."""
    maps = getattr(record, "maps", None)
    if maps is None:
        return []
    steps = {info.step for c in controllers for info in c.seen_steps if info.step is not None}
    layers = {layer.index for c in controllers for kind, layer in c.layers if kind == "self"}
    return [(record, reason) for reason in maps.unmatched_bins(steps, layers)]


def unknown_positions(controllers: Sequence[Controller]) -> list[tuple[object, str]]:
    """A recording whose calls ran at an unknown step or branch (a bare model in a loop that did not say where it
    is): they are recorded as step -1 / branch "unknown"."""
    steps = any(info.step is None for c in controllers for info in c.seen_steps)
    branches = any("unknown" in c.seen_branches for c in controllers)
    if not (steps or branches):
        return []
    what = " and ".join(w for w, on in (("an unknown step (recorded as step -1)", steps),
                                         ("an unknown branch (recorded as 'unknown')", branches)) if on)
    return [("at.inspect", f"{what}: the adapter cannot tell them on this model; in a loop of your own, run each "
                           "forward inside `with rec.step(i, branch='cond'):`")]


def _ever_on(rule: Rule, steps: set) -> bool:
    for info in steps:
        try:
            if rule.when.active(info):
                return True
        except ConfigError:
            return True  # cannot tell without the step facts: the call itself raises if it matters
    return False


def report(problems: list[tuple[object, str]], strict: bool, when: str) -> None:
    """Warn (or raise with ``strict``) once per problem, naming the rule (or recording) and the reason."""
    for subject, reason in problems:
        name = (describe_rule(subject, None) if isinstance(subject, Rule)
                else subject if isinstance(subject, str) else f"recording {subject!r}")
        message = f"{name} {when}: {reason}"
        if strict:
            raise SteeringError(message)
        warnings.warn(message, AttnsteerWarning, stacklevel=3)
