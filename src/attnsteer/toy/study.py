"""The toy model as a study subject: seed index i is the demo's evaluation clip i (its reference frame and
prompt, :func:`attnsteer.toy.evaluate.evaluation_clips`) generated from noise seed ``seed + i``, measured with
the toy's per-clip metrics (motion against the prompt, identity, background)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..sweeps.study import StudySubject, parameter_checksum
from . import evaluate

COLUMNS = {key: meaning for key, meaning in evaluate.COLUMNS.items() if key not in ("gamma", "ref_mass")}
COLUMNS = {**{k: v for k, v in COLUMNS.items() if k not in ("colour_err", "kept", "dir_ok")},
           "size_worst": "the generated frame's sprite size / true furthest from 1 (by ratio)",
           "colour_err": COLUMNS["colour_err"]}
COLUMNS["dir_ok"] = "1 when the tracked sprite moves in the prompt's direction (chance 0.25)"
COLUMNS["kept"] = (f"1 when the sprite keeps its size ({evaluate.SIZE_KEPT[0]:.2f}-{evaluate.SIZE_KEPT[1]:.1f}x) and "
                   f"colour (<= {evaluate.COLOUR_KEPT}) in every frame")


class ToyStudySubject(StudySubject):
    """Clips of the toy world on a :class:`~attnsteer.toy.ToyI2VPipeline` (``weights``: the file it was loaded
    from, whose sha256 joins the model's identity)."""

    name = "toy"
    columns = COLUMNS
    counts = ("dir_ok", "kept")
    primary = "speed"

    def __init__(self, pipe: Any, *, steps: int = evaluate.STEPS, guidance_scale: float = 3.0, seed: int = 0,
                 weights: Path | None = None) -> None:
        self.pipe, self.steps, self.guidance_scale, self.seed, self.weights = pipe, steps, guidance_scale, seed, weights
        self._clips: dict[int, Any] = {}

    def clip(self, index: int) -> Any:
        """The evaluation clip of seed index ``index`` (the demo's clip ``index``)."""
        if index not in self._clips:
            self._clips[index] = evaluate.evaluation_clips(index + 1)[index]
        return self._clips[index]

    def settings(self) -> dict[str, Any]:
        config = dict(self.pipe.transformer.config)
        identity: dict[str, Any] = {"model": "toy", "pipeline": type(self.pipe).__name__,
                                    "parameters_blake2b": parameter_checksum(self.pipe),
                                    "transformer_config": {k: v for k, v in config.items() if not k.startswith("_")},
                                    "clean_reference": self.pipe.clean_reference}
        if self.weights is not None:
            identity["weights_file"] = Path(self.weights).name
            identity["weights_sha256"] = hashlib.sha256(Path(self.weights).read_bytes()).hexdigest()
        return {**identity, "steps": self.steps, "guidance_scale": self.guidance_scale, "seed": self.seed,
                "clips": "attnsteer.toy.evaluate.evaluation_clips (seed index i: clip i, noise seed seed + i)"}

    def generate(self, pipe: Any, indices: Sequence[int]) -> list[Any]:
        import torch

        clips = [self.clip(i) for i in indices]
        return pipe(image=[c.video[0] for c in clips], prompt=[c.prompt for c in clips],
                    num_inference_steps=self.steps, guidance_scale=self.guidance_scale,
                    generator=[torch.Generator().manual_seed(self.seed + i) for i in indices]).frames

    def measure(self, video: np.ndarray, index: int) -> dict[str, float]:
        return evaluate.per_clip([video], [self.clip(index)])[0]
