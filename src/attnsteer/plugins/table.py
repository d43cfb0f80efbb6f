"""The family table (``attnsteer models``, docs/models.md): one row per adapter, read from its declarations."""

from __future__ import annotations

import inspect
import textwrap

from ..contract.adapter import TEXT_MEANINGS, Adapter
from ..contract.registry import registered_adapters
from .generic import GenericAdapter

COLUMNS = ("family", "self-attention modules", "layout", "reference frames", "guidance branches", "tested")
BATTERY = ("shared battery (zero-rule identity, clean exit, DyMoS against dense, frame maps against dense) on "
           "tiny pipelines")


def summary(obj: object) -> str:
    """The first paragraph of ``obj``'s docstring, on one line."""
    doc = (inspect.getdoc(obj) or "").strip()
    return " ".join(doc.split("\n\n")[0].split())


def family_row(cls: type[Adapter]) -> dict[str, str]:
    """The table row of one adapter class: its declarations, the docstrings of its layout and branches."""
    classes = ", ".join(f"`{c}`" for c in cls.model_classes)
    modules = f"`{cls.self_attention}`" if cls.self_attention else ""
    if cls.cross_attention:
        modules += f"; cross-attention `{cls.cross_attention}`"
    branches = cls.branches  # a BranchConvention, or the adapter's own method
    convention = getattr(branches, "description", None)
    frames = ", ".join(map(str, cls.reference_frames))
    tested = [f"{BATTERY} {', '.join(f'`{m}`' for m in cls.tiny_models)}"] if cls.tiny_models else []
    row = {
        "family": f"{cls.family} ({classes})" if classes else cls.family,
        "self-attention modules": modules,
        "layout": f"{summary(cls.layout)} Text: {TEXT_MEANINGS[cls.text]}.",
        "reference frames": f"latent frame {frames}" if frames else "none",
        "guidance branches": f"{branches.name}: {convention}" if convention else summary(cls.branches),
        "tested": "; ".join(tested + ([cls.tested] if cls.tested else [])),
    }
    if cls.refusal:
        row.update({"layout": "refused", "tested": f"refused: {cls.refusal}"})
    row.update(cls.table_entries)
    return row


def family_rows() -> list[dict[str, str]]:
    """The registered adapters' rows, then GenericAdapter's."""
    return [family_row(cls) for cls in registered_adapters()] + [family_row(GenericAdapter)]


def markdown_table(rows: list[dict[str, str]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row[c].replace("|", "\\|") for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def text_table(rows: list[dict[str, str]], width: int = 100) -> str:
    """One block per family, each field wrapped to ``width`` columns."""
    blocks = []
    for row in rows:
        lines = [row["family"].replace("`", "")]
        for column in COLUMNS[1:]:
            lines += textwrap.wrap(row[column].replace("`", ""), width, initial_indent=f"  {column}: ",
                                   subsequent_indent="    ")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
