"""The toy image-to-video model: a small diffusers ``WanTransformer3DModel``, conditioned as Wan I2V is.

- Latent map: a fixed, invertible space-to-depth (4 x 4 pixels -> 48 channels, values in [-1, 1])
  stands in for the VAE; latent frames = video frames, so latent frame 0 is the reference image.
- Transformer input: channel concat of [noisy latents (48), reference mask (1), reference latents (48)];
  the mask is 1 on frame 0, and the reference latents hold frame 0 there and zeros elsewhere.
  Dropping the image condition (mask and reference zeroed) turns the same weights into T2V.
  Weights with one more input channel also get a frame-index ramp (0 on frame 0 .. 1 on the last):
  Wan's RoPE is relative, so without it a token learns its own frame only indirectly.
- Text: a learned table embeds the two prompt words (direction, speed) into Wan's cross-attention.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import WanTransformer3DModel

from .world import NULL, VOCABULARY, parse_prompt

PATCH = 4
LATENT_CHANNELS = 3 * PATCH * PATCH
TEXT_DIM = 32


def input_channels(frame_ramp: bool) -> int:
    """Transformer input channels: noisy latents, mask, reference latents, and the frame index if asked."""
    return 2 * LATENT_CHANNELS + 1 + int(frame_ramp)


TRANSFORMER_CONFIG = dict(
    patch_size=(1, 1, 1), num_attention_heads=4, attention_head_dim=32, in_channels=input_channels(frame_ramp=True),
    out_channels=LATENT_CHANNELS, text_dim=TEXT_DIM, freq_dim=64, ffn_dim=512, num_layers=4, cross_attn_norm=True,
    qk_norm="rms_norm_across_heads", rope_max_seq_len=64,
)
WEIGHTS = Path(__file__).parent / "weights" / "toy_i2v.safetensors"


def to_latents(video: torch.Tensor) -> torch.Tensor:
    """[B, T, H, W, 3] in 0..1 -> [B, 48, T, H/4, W/4] in -1..1 (space to depth)."""
    b, t, h, w, c = video.shape
    x = video.permute(0, 4, 1, 2, 3).reshape(b, c, t, h // PATCH, PATCH, w // PATCH, PATCH)
    x = x.permute(0, 1, 4, 6, 2, 3, 5).reshape(b, c * PATCH * PATCH, t, h // PATCH, w // PATCH)
    return x * 2 - 1


def from_latents(latents: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`to_latents`: [B, 48, T, h, w] -> [B, T, 4h, 4w, 3] in 0..1."""
    b, _, t, h, w = latents.shape
    x = ((latents + 1) / 2).reshape(b, 3, PATCH, PATCH, t, h, w).permute(0, 1, 4, 5, 2, 6, 3)
    return x.reshape(b, 3, t, h * PATCH, w * PATCH).permute(0, 2, 3, 4, 1).clamp(0, 1)


def condition(reference: torch.Tensor | None, like: torch.Tensor, frame_ramp: bool = False) -> torch.Tensor:
    """[mask, reference latents] channels for latents shaped like ``like``; zeros when ``reference`` is None (T2V).
    ``frame_ramp`` appends the frame-index channel, present in I2V and T2V alike."""
    b, _, t, h, w = like.shape
    mask = torch.zeros(b, 1, t, h, w, dtype=like.dtype, device=like.device)
    ref = torch.zeros_like(like)
    if reference is not None:
        mask[:, :, 0] = 1
        ref[:, :, 0] = reference
    channels = [mask, ref]
    if frame_ramp:
        ramp = torch.linspace(0, 1, t, dtype=like.dtype, device=like.device)
        channels.append(ramp.view(1, 1, t, 1, 1).expand(b, 1, t, h, w))
    return torch.cat(channels, dim=1)


def has_frame_ramp(transformer: WanTransformer3DModel) -> bool:
    """Whether ``transformer`` was built for the frame-index channel (one input channel more)."""
    return transformer.config.in_channels == input_channels(frame_ramp=True)


class PromptTable(torch.nn.Module):
    """Learned embeddings of the prompt vocabulary: "right fast" -> [1, 2, TEXT_DIM]."""

    def __init__(self) -> None:
        super().__init__()
        self.table = torch.nn.Embedding(len(VOCABULARY), TEXT_DIM)

    def ids(self, prompt: str | None) -> list[int]:
        words = [NULL, NULL] if prompt is None else list(parse_prompt(prompt))
        return [VOCABULARY.index(w) for w in words]

    def forward(self, prompts: list[str | None]) -> torch.Tensor:
        ids = torch.tensor([self.ids(p) for p in prompts], device=self.table.weight.device)
        return self.table(ids)


def build_modules(seed: int = 0, config: dict | None = None) -> tuple[WanTransformer3DModel, PromptTable]:
    """Freshly initialised transformer (``TRANSFORMER_CONFIG`` unless ``config`` is given) and prompt table."""
    torch.manual_seed(seed)
    return WanTransformer3DModel(**(TRANSFORMER_CONFIG if config is None else config)), PromptTable()


def save_weights(transformer: WanTransformer3DModel, prompts: PromptTable, path: Path = WEIGHTS, **info: object) -> Path:
    """Both modules' weights in one safetensors file (fp16, to stay small), with ``info`` and the
    transformer's config as metadata, so that weights of another size load too."""
    from safetensors.torch import save_file

    tensors = {f"transformer.{k}": v.half() for k, v in transformer.state_dict().items()}
    tensors.update({f"prompts.{k}": v.half() for k, v in prompts.state_dict().items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    config = {k: transformer.config[k] for k in TRANSFORMER_CONFIG}
    metadata = {"info": json.dumps(info), "config": json.dumps(config)}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return path


def read_info(path: Path = WEIGHTS) -> dict:
    """The training metadata stored with the weights (recipe, seed, steps, ...)."""
    return _metadata(path, "info", {})


def _metadata(path: Path, key: str, default: dict) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        value = (f.metadata() or {}).get(key)
    return default if value is None else json.loads(value)


def load_modules(path: Path = WEIGHTS) -> tuple[WanTransformer3DModel, PromptTable]:
    """The shipped (or given) weights in float32 modules, in eval mode."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise FileNotFoundError(f"toy weights not found at {path}; train them with `python -m attnsteer.toy.train`")
    tensors = load_file(str(path))
    transformer, prompts = build_modules(config=_metadata(path, "config", TRANSFORMER_CONFIG))
    transformer.load_state_dict({k[12:]: v.float() for k, v in tensors.items() if k.startswith("transformer.")})
    prompts.load_state_dict({k[8:]: v.float() for k, v in tensors.items() if k.startswith("prompts.")})
    return transformer.eval(), prompts.eval()
