"""Attention streams beside the video self-attention: the audio self-attention and the cross-modal calls of joint
audio-video models (LTX-2), steered exactly by rules that name them.

A family declares its streams on its adapter, kind -> regex on module names::

    streams = {"audio": r"transformer_blocks\\.\\d+\\.audio_attn1",
               "a2v": r"transformer_blocks\\.\\d+\\.audio_to_video_attn",
               "v2a": r"transformer_blocks\\.\\d+\\.video_to_audio_attn"}

and gives, per forward, each kind's :class:`StreamView` (``Adapter.stream_views``): a joint
:class:`~attnsteer.language.layout.TokenLayout` over which the rules' selectors resolve, and the spans of it that one call's
queries and keys are. The joint layout holds the video frames and one "audio" segment, so ``at.frames[...]`` /
``at.video`` pick video tokens and ``at.audio`` the audio tokens, whichever side of the call they are on:

- ``"audio"``: audio self-attention, queries and keys the audio tokens;
- ``"a2v"``: audio-to-video attention, queries the video tokens, keys the audio tokens;
- ``"v2a"``: video-to-audio attention, queries the audio tokens, keys the video tokens.

A rule reaches a stream only with ``Rule(attention=<kind>)``; ``attention="self"`` rules keep to the video
self-attention. A rule whose query (key) selector picks tokens of the joint layout but none of the call's queries
(keys) raises, naming what the queries and keys of that kind are. Recordings (``at.inspect``) cover the video
self-attention only; stream calls are steered, not recorded.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import attrs
import torch

from ..errors import ConfigError, SteeringError, describe_rule
from ..language.layout import Segment, TokenLayout
from .modules import self_attention_modules

STREAM_KINDS = ("audio", "a2v", "v2a")
STREAM_MEANINGS = {
    "audio": "audio self-attention: audio queries, audio keys",
    "a2v": "audio-to-video attention: video queries, audio keys",
    "v2a": "video-to-audio attention: audio queries, video keys",
}
VIEW_KINDS = ("self",) + STREAM_KINDS  # "self": a self-attention whose keys hold more than its queries (a KV cache)
VIEW_MEANINGS = {**STREAM_MEANINGS, "self": "self-attention over a key window: the forward's tokens as queries, "
                 "the window (cached tokens of earlier forwards, then these) as keys"}


@attrs.frozen
class StreamView:
    """One stream's calls as rules see them: the joint ``layout`` their selectors resolve against, and the
    ``[start, stop)`` spans of it that a call's queries and keys are. Keys always start at position 0."""

    kind: str
    layout: TokenLayout
    queries: tuple[int, int]
    keys: tuple[int, int]

    def __attrs_post_init__(self) -> None:
        if self.kind not in VIEW_KINDS:
            raise ConfigError(f"StreamView.kind must be one of {VIEW_KINDS}, got {self.kind!r}")
        for name, (start, stop) in (("queries", self.queries), ("keys", self.keys)):
            if not 0 <= start < stop <= self.layout.seq_len:
                raise ConfigError(f"StreamView.{name} must be a span [start, stop) of the layout's "
                                  f"{self.layout.seq_len} tokens, got {(start, stop)}")
        if self.keys[0] != 0:
            raise ConfigError(f"StreamView.keys must start at 0 (keys first in the joint layout), got {self.keys}")

    @property
    def num_queries(self) -> int:
        return self.queries[1] - self.queries[0]

    @property
    def num_keys(self) -> int:
        return self.keys[1]


def audio_video_views(video: TokenLayout, audio_tokens: int) -> dict[str, StreamView]:
    """The views of the "audio", "a2v" and "v2a" calls of a forward whose video self-attention has the video-only
    layout ``video`` and whose audio stream has ``audio_tokens`` tokens (one "audio" segment)."""
    if video.segments or video.video_start:
        raise SteeringError(f"audio-video streams need a video-only self-attention layout, got {video.describe()}")
    frames = dict(num_frames=video.num_frames, tokens_per_frame=video.tokens_per_frame, grid=video.grid,
                  reference_frames=video.reference_frames)
    n_video = video.seq_len
    audio_first = TokenLayout(video_start=audio_tokens, segments=[Segment("audio", 0, audio_tokens)], **frames)
    video_first = TokenLayout(segments=[Segment("audio", n_video, n_video + audio_tokens)], **frames)
    return {
        "audio": StreamView("audio", audio_first, (0, audio_tokens), (0, audio_tokens)),
        "a2v": StreamView("a2v", audio_first, (audio_tokens, audio_tokens + n_video), (0, audio_tokens)),
        "v2a": StreamView("v2a", video_first, (n_video, n_video + audio_tokens), (0, n_video)),
    }


def check_stream_declaration(cls: type) -> None:
    """Refuse a bad ``streams`` declaration on an adapter class, naming the allowed kinds."""
    streams = cls.streams
    if not isinstance(streams, Mapping):
        raise ConfigError(f"{cls.__name__}.streams must be a mapping kind -> module regex, got {streams!r}")
    for kind, pattern in streams.items():
        if kind not in STREAM_KINDS:
            raise ConfigError(f"{cls.__name__}.streams kind must be one of {STREAM_KINDS}, got {kind!r}")
        try:
            re.compile(pattern)
        except (re.error, TypeError) as exc:
            raise ConfigError(f"{cls.__name__}.streams[{kind!r}] must be a regex on module names, got {pattern!r} "
                              f"({exc})") from None


def stream_modules(adapter: Any, model: torch.nn.Module) -> list[tuple[str, list[tuple[str, torch.nn.Module]]]]:
    """(kind, [(name, module), ...]) of every declared stream, in declaration order."""
    return [(kind, self_attention_modules(model, pattern)) for kind, pattern in adapter.streams.items()]


def attention_kinds(adapter: Any, model: torch.nn.Module) -> tuple[str, ...]:
    """The attention kinds rules can name on ``model``: "self", "cross" where it has separate cross-attention, and
    its declared streams that have modules."""
    kinds = ["self"] + (["cross"] if adapter.cross_attention_modules(model) else [])
    return tuple(kinds + [kind for kind, found in stream_modules(adapter, model) if found])


def check_attention_kinds(rules: tuple, adapter: Any, model: torch.nn.Module) -> None:
    """Raise, naming the model's allowed kinds, for a stream rule whose kind ``model`` does not have."""
    streams = [r for r in rules if r.attention in STREAM_KINDS]
    if not streams:
        return
    allowed = attention_kinds(adapter, model)
    for rule in streams:
        if rule.attention not in allowed:
            raise SteeringError(
                f"{describe_rule(rule, None)}: {type(model).__name__} has no {STREAM_MEANINGS[rule.attention]} "
                f"(attention={rule.attention!r}); the attention kinds of this model are {allowed}"
            )
