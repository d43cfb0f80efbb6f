"""Prompt words as text tokens: ``at.words("dog")`` selects the text tokens that spell a word.

The session is given the prompt (``at.steer(pipe, rule, prompt=...)``); it is tokenised with the
pipeline's tokenizer (or ``tokenizer=``), keeping each token's character span. A word or phrase
is matched case-insensitively as whole words of the prompt, and every token whose span overlaps
a match is selected, so words split into several sub-word tokens are selected whole. A word the
prompt does not contain is an error listing the prompt's words.
"""

from __future__ import annotations

import re
from typing import Any

import attrs
import torch

from ..errors import ConfigError
from .layout import Segment
from .selectors import SelectionContext, Selector

WORD = re.compile(r"\w+")


def word_level_tokenizer(vocabulary: str) -> Any:
    """A word-level fast tokenizer built offline (one token per word of ``vocabulary``, ``[UNK]`` otherwise),
    with character offsets, for pipelines whose text encoder embeds whole words (the toy, the tiny models)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, **{word: i + 1 for i, word in enumerate(dict.fromkeys(vocabulary.split()))}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]")


@attrs.frozen
class WordIndex:
    """The prompt and the character span of every text token position ((0, 0) for special tokens)."""

    prompt: str
    spans: tuple[tuple[int, int], ...]

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, prompt: str) -> WordIndex:
        """Tokenise ``prompt`` as the pipeline does (special tokens included) and keep the spans."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise ConfigError(f"prompt must be a non-empty string to select words, got {prompt!r}")
        if tokenizer is None:
            raise ConfigError(
                "at.words(...) needs the pipeline's tokenizer, and this pipeline has none: pass tokenizer= to "
                "at.steer / at.inspect"
            )
        try:
            encoded = tokenizer(prompt, return_offsets_mapping=True, add_special_tokens=True)
        except NotImplementedError as exc:
            raise ConfigError(
                f"at.words(...) needs a fast tokenizer (character offsets); {type(tokenizer).__name__} has none"
            ) from exc
        spans = tuple((int(a), int(b)) for a, b in encoded["offset_mapping"])
        return cls(prompt=prompt, spans=spans)

    @property
    def words(self) -> list[str]:
        return WORD.findall(self.prompt)

    def positions(self, phrase: str) -> list[int]:
        """Token positions of every whole-word, case-insensitive occurrence of ``phrase``."""
        parts = WORD.findall(phrase)
        pattern = re.compile(r"\b" + r"\W+".join(map(re.escape, parts)) + r"\b", re.IGNORECASE)
        matches = [m.span() for m in pattern.finditer(self.prompt)] if parts else []
        if not matches:
            raise ConfigError(f"at.words: {phrase!r} is not in the prompt; its words are {self.words}")
        return [
            i for i, (a, b) in enumerate(self.spans)
            if b > a and any(a < end and b > start for start, end in matches)
        ]


def _prompt_segment(selector: Selector, ctx: SelectionContext) -> Segment:
    """The text segment the prompt's tokens sit in; raises when the prompt or the text is missing."""
    if ctx.words is None:
        raise ConfigError(f"{selector!r} needs the prompt: pass prompt=... to at.steer / at.inspect")
    texts = [s for s in ctx.layout.segments if s.kind == "text"]
    if not texts:
        raise ConfigError(f"{selector!r} selects nothing: this model's self-attention holds no text tokens")
    return texts[0]


def _phrases(value: object) -> tuple[str, ...]:
    items = (value,) if isinstance(value, str) else tuple(value)  # type: ignore[arg-type]
    if not items or not all(isinstance(p, str) and WORD.search(p) for p in items):
        raise ConfigError(f"at.words(...) takes one or more words or phrases, got {value!r}")
    return items


@attrs.frozen(repr=False)
class Words(Selector):
    """The text tokens of one or more prompt words or phrases, inside the call's text segment."""

    group_level = False
    phrases: tuple[str, ...] = attrs.field(converter=_phrases)

    def compute_mask(self, ctx: SelectionContext) -> torch.Tensor:
        layout, segment = ctx.layout, _prompt_segment(self, ctx)
        positions = sorted({p for phrase in self.phrases for p in ctx.words.positions(phrase)})
        beyond = [p for p in positions if p >= segment.stop - segment.start]
        if beyond:
            raise ConfigError(
                f"{self!r}: token positions {beyond} lie beyond the {segment.stop - segment.start} text tokens the model "
                "sees (the prompt was truncated)"
            )
        mask = torch.zeros(layout.seq_len, dtype=torch.bool)
        mask[[segment.start + p for p in positions]] = True
        return mask

    def __repr__(self) -> str:
        return f"words({', '.join(map(repr, self.phrases))})"


@attrs.frozen(repr=False)
class PromptTokens(Selector):
    """Every text token that spells part of the prompt (not start, end or padding tokens)."""

    group_level = False

    def compute_mask(self, ctx: SelectionContext) -> torch.Tensor:
        segment = _prompt_segment(self, ctx)
        mask = torch.zeros(ctx.layout.seq_len, dtype=torch.bool)
        for i, (a, b) in enumerate(ctx.words.spans[: segment.stop - segment.start]):
            mask[segment.start + i] = b > a
        return mask

    def __repr__(self) -> str:
        return "prompt"


prompt = PromptTokens()


def words(*phrases: str) -> Words:
    """The text tokens of prompt words or phrases (sub-word tokens included); needs ``prompt=`` on the session."""
    return Words(phrases)


def uses_words(value: object) -> bool:
    """Whether a rule (or any selector, predicate or transform inside it) selects prompt words."""
    if isinstance(value, (Words, PromptTokens)):
        return True
    if isinstance(value, (tuple, list)):
        return any(uses_words(v) for v in value)
    if attrs.has(type(value)):
        return any(uses_words(getattr(value, f.name)) for f in attrs.fields(type(value)))
    return False
