"""Finding a model's modules by class name or by a regex on their qualified names."""

from __future__ import annotations

import re

import torch


def has_class_named(model: object, names: tuple[str, ...]) -> bool:
    """Whether ``model`` is an instance of a class called one of ``names`` (subclasses too), without importing it."""
    return any(cls.__name__ in names for cls in type(model).__mro__)


def self_attention_modules(model: torch.nn.Module, pattern: str) -> list[tuple[str, torch.nn.Module]]:
    """Submodules whose qualified name fully matches ``pattern``, in registration order."""
    regex = re.compile(pattern)
    return [(name, m) for name, m in model.named_modules() if regex.fullmatch(name)]
