"""Exceptions raised by attnsteer, so callers can tell bad input from a rule that cannot be honoured."""

from __future__ import annotations


class AttnsteerError(Exception):
    """Base class of every error attnsteer raises on purpose."""


class ConfigError(AttnsteerError, ValueError):
    """Bad input: a field has a value outside what it allows. Raised at construction time."""


class KernelError(AttnsteerError, ValueError):
    """An attention kernel was called with inputs it does not accept (shapes, group ids, bias values)."""


class RecordingError(AttnsteerError, ValueError):
    """A saved recording cannot be read: not a recording, damaged, or inconsistent."""


class UnsupportedModelError(AttnsteerError, TypeError):
    """No adapter knows how to find the self-attention of this model."""


class SteeringError(AttnsteerError, RuntimeError):
    """A rule should apply to an attention call but cannot be honoured there."""


class AttnsteerWarning(UserWarning):
    """Something the user asked for had no effect (a rule that never applied); ``strict=True`` raises instead."""


def describe_rule(rule: object, module_name: str | None) -> str:
    """The 'which rule, which module' prefix of a SteeringError message."""
    where = f" in module {module_name!r}" if module_name else ""
    return f"rule {rule!r}{where}"
