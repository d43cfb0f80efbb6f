"""The model the example plugin adapts: a small video transformer whose self-attention sees the video
tokens frame-major, then the text tokens, and a pipeline running it with classifier-free guidance
batched as [uncond, cond]. It stands in for "your model"; attnsteer knows nothing of it."""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F

DIM, HEADS, TEXT_TOKENS = 16, 2, 4


class Attention(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.out = torch.nn.Linear(DIM, 3 * DIM), torch.nn.Linear(DIM, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, HEADS, DIM // HEADS).permute(2, 0, 3, 1, 4)
        return self.out(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, DIM))


class Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm, self.attn = torch.nn.LayerNorm(DIM), Attention()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.attn(self.norm(x))


class ExampleVideoTransformer(torch.nn.Module):
    """hidden_states [B, F, rows, cols, C], encoder_hidden_states [B, L, C], timestep -> same shape."""

    def __init__(self, layers: int = 2) -> None:
        super().__init__()
        self.time = torch.nn.Linear(1, DIM)
        self.blocks = torch.nn.ModuleList(Block() for _ in range(layers))

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                timestep: torch.Tensor) -> torch.Tensor:
        video = hidden_states.flatten(1, 3) + self.time(timestep.float().view(-1, 1, 1) / 1000)
        x = torch.cat([video, encoder_hidden_states], dim=1)
        for block in self.blocks:
            x = block(x)
        return x[:, : video.shape[1]].view_as(hidden_states)


class ExamplePipeline:
    """A flow-matching loop with guidance batched as [uncond, cond]; frames [F, rows, cols, 3] in 0..1."""

    def __init__(self, transformer: ExampleVideoTransformer) -> None:
        from diffusers import FlowMatchEulerDiscreteScheduler

        self.transformer, self.scheduler = transformer, FlowMatchEulerDiscreteScheduler()
        self._guidance_scale, self._current_timestep = 1.0, None

    @property
    def components(self) -> dict:
        return {"transformer": self.transformer, "scheduler": self.scheduler}

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self._guidance_scale > 1

    @torch.no_grad()
    def __call__(self, image=None, prompt: str = "", generator: torch.Generator | None = None, num_frames: int = 3,
                 height: int = 4, width: int = 4, num_inference_steps: int = 2, guidance_scale: float = 3.0,
                 output_type: str = "np") -> types.SimpleNamespace:
        self._guidance_scale = guidance_scale
        self.scheduler.set_timesteps(num_inference_steps)
        latents = torch.randn(1, num_frames, height, width, DIM, generator=generator)
        text = torch.randn(1, TEXT_TOKENS, DIM, generator=torch.Generator().manual_seed(len(prompt)))
        if self.do_classifier_free_guidance:
            text = torch.cat([torch.zeros_like(text), text])
        for t in self.scheduler.timesteps:
            self._current_timestep = t
            batch = latents.repeat(text.shape[0], 1, 1, 1, 1)
            prediction = self.transformer(hidden_states=batch, encoder_hidden_states=text, timestep=t.expand(len(batch)))
            if self.do_classifier_free_guidance:
                uncond, cond = prediction.chunk(2)
                prediction = uncond + guidance_scale * (cond - uncond)
            latents = self.scheduler.step(prediction, t, latents).prev_sample
        self._current_timestep = None
        frames = latents if output_type == "latent" else torch.sigmoid(latents[..., :3])
        return types.SimpleNamespace(frames=frames.numpy())

    def set_progress_bar_config(self, **kwargs) -> None:
        """The loop has no progress bar."""


def tiny_pipeline() -> ExamplePipeline:
    """A random-weight ExamplePipeline (what ``attnsteer run --model attnsteer_example.model:tiny_pipeline`` loads)."""
    torch.manual_seed(0)
    return ExamplePipeline(ExampleVideoTransformer())
