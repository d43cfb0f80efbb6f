"""Turn a ``--model`` argument into a video generator: a built-in tiny model, the shipped toy
model, a diffusers pipeline directory / hub name, or a Python factory ``package.module:function``."""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import ConfigError


class VideoModel:
    """A pipeline plus how to call it: ``model(image, prompt, seed)`` returns frames [T, H, W, 3] in 0..1."""

    def __init__(self, name: str, pipe: Any, call_kwargs: Callable[..., dict[str, Any]], image_size: tuple[int, int] | None):
        self.name = name
        self.pipe = pipe
        self._call_kwargs = call_kwargs
        self.image_size = image_size  # (height, width) the image is resized to, None: the pipeline decides

    def prompt(self, prompt: str | None) -> str | None:
        """The prompt a call with ``prompt`` gives the pipeline (the model's default where it fills an empty one)."""
        return self._call_kwargs(prompt=prompt or "").get("prompt") or None

    def tokenizer(self) -> Any:
        """The tokenizer that finds prompt words: the pipeline's; the built-in tiny models have none, so they get
        the tiny word tokenizer."""
        from ..testing.tiny import TINY_MODELS, word_tokenizer

        tokenizer = getattr(self.pipe, "tokenizer", None)
        return word_tokenizer() if tokenizer is None and self.name in TINY_MODELS else tokenizer

    def stand_in_text(self, spec: Any, given: dict[str, Any]) -> dict[str, Any]:
        """A recipe's negative prompt as the model's stand-in embeddings (``prompt_embedding``, as its prompts are):
        the built-in tiny models have no text encoder to encode it with. Empty for every other model and recipe."""
        from ..testing.tiny import TINY_MODELS
        from ..testing.tiny_parts import prompt_embedding

        takes = {p.name for p in spec.parameters} >= {"negative_prompt", "negative_prompt_embeds"}
        embeds = self._call_kwargs(prompt="").get("prompt_embeds") if self.name in TINY_MODELS else None
        if not takes or embeds is None or getattr(self.pipe, "text_encoder", None) is not None \
                or given.get("negative_prompt_embeds") is not None:
            return {}
        text = prompt_embedding(given.get("negative_prompt") or "", embeds.shape[1], embeds.shape[2])
        return {"negative_prompt": None, "negative_prompt_embeds": text}

    @property
    def image_argument(self) -> str:
        """The name the pipeline takes its conditioning image under ("image"; VACE: "reference_images")."""
        return getattr(self._call_kwargs, "image_argument", "image")

    @property
    def takes_image(self) -> bool:
        """Whether the pipeline takes a conditioning image (image-to-video), read from its signature."""
        declared = getattr(self.pipe, "attnsteer_takes_image", None)  # a wrapper that accepts and drops it
        if isinstance(declared, bool):
            return declared
        try:
            parameters = inspect.signature(self.pipe.__call__).parameters
        except (TypeError, ValueError):  # no signature to read: pass the image
            return True
        if self.image_argument in parameters:
            return True
        # **kwargs alone: a diffusers pipeline that names no image drops it there (AnimateDiff's deprecated-argument
        # **kwargs); other callables (modular pipelines, wrappers) may read it from there, so it is passed
        from diffusers import DiffusionPipeline

        keywords = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
        return keywords and not isinstance(self.pipe, DiffusionPipeline)

    def _image(self, image: Image.Image | None) -> dict[str, Any]:
        """The image argument of a call: resized to ``image_size``; none for text-to-video pipelines."""
        if not self.takes_image:
            return {}
        if image is not None and self.image_size is not None:
            image = image.convert("RGB").resize((self.image_size[1], self.image_size[0]))
        return {self.image_argument: image}

    def _arguments(self, image: Image.Image | None, prompt: str, overrides: dict[str, Any]) -> dict[str, Any]:
        """A call's keyword arguments: the model's defaults, the overrides that are set, and the image."""
        kwargs = self._call_kwargs(prompt=prompt, **{k: v for k, v in overrides.items() if v is not None})
        return {**self._image(image), **kwargs}

    def __call__(self, image: Image.Image | None, prompt: str, seed: int = 0, **overrides: Any) -> np.ndarray:
        from ..sweeps.batched import seeded_generator

        output = self.pipe(generator=seeded_generator(self.pipe, seed), **self._arguments(image, prompt, overrides))
        frames = output.frames[0]
        return np.asarray(frames, dtype=np.float32)

    def batch(self, image: Image.Image | None, prompt: str, n: int, seed: int = 0, **overrides: Any) -> list[np.ndarray]:
        """The videos of ``n`` items of this call batched in one pipeline call (same seed each; see
        :func:`attnsteer.sweeps.batched.batch_call_kwargs`)."""
        from ..sweeps.batched import batch_call_kwargs

        output = self.pipe(**batch_call_kwargs(self.pipe, self._arguments(image, prompt, overrides), n, seed))
        return [np.asarray(frames, dtype=np.float32) for frames in output.frames]

    def show_progress(self, enabled: bool = True) -> None:
        if hasattr(self.pipe, "set_progress_bar_config"):
            self.pipe.set_progress_bar_config(disable=not enabled)


def _pipeline_call_kwargs(**defaults: Any) -> Callable[..., dict[str, Any]]:
    def make(prompt: str, **overrides: Any) -> dict[str, Any]:
        kwargs = {"prompt": prompt, "output_type": "np", **defaults}
        kwargs.update(overrides)
        return kwargs

    return make


FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")  # package.module:function


def _factory_pipeline(spec: str) -> Any:
    """The pipeline ``module:function`` returns (a third-party model the CLI cannot load otherwise)."""
    module_name, function_name = spec.split(":")
    try:
        factory = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"--model {spec!r}: cannot import {function_name} from {module_name} ({exc})") from None
    try:
        pipe = factory()
    except Exception as exc:  # a third-party factory (or a function that is none): name the flag, one line
        raise ConfigError(f"--model {spec!r}: {function_name}() failed: {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''} (expected a function returning a pipeline)"
                          ) from None
    if not isinstance(getattr(pipe, "components", None), dict) or not callable(pipe):
        raise ConfigError(f"--model {spec!r}: {function_name}() must return a pipeline (callable, with a components "
                          f"dict), got {type(pipe).__name__}")
    return pipe


DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICES = ("cpu", "cuda", "mps")


def _device_and_dtype(device: str | None, dtype: str, built_in: bool) -> tuple[str, torch.dtype]:
    """The ``--device`` and ``--dtype`` to use, validated (built-in models default to float32 on the CPU)."""
    if device is not None:
        _check_device(device)
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    device = device or ("cpu" if built_in or not torch.cuda.is_available() else "cuda")
    auto = torch.bfloat16 if device.startswith("cuda") and not built_in else torch.float32
    return device, {"auto": auto, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def _check_device(device: str) -> None:
    """Raise naming ``--device`` unless it is a device of this machine."""
    allowed = f"one of {', '.join(DEVICES)} (optionally 'cuda:N')"
    kind, _, index = device.partition(":")
    if kind not in DEVICES or (index and not (index.isdigit() and kind == "cuda")):
        raise ConfigError(f"--device must be {allowed}, got {device!r}")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine (torch {torch.__version__}); "
                          "use --device cpu")
    if index and int(index) >= torch.cuda.device_count():
        raise ConfigError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA devices "
                          f"(cuda:0 .. cuda:{torch.cuda.device_count() - 1})")


def _moved(pipe: Any, device: str, dtype: torch.dtype) -> Any:
    """A built-in pipeline (built on the CPU in float32) on the requested device and dtype."""
    return pipe if (device, dtype) == ("cpu", torch.float32) else pipe.to(device, dtype)


def load_model(name: str, *, device: str | None = None, dtype: str = "auto", seed: int = 0,
               allow_download: bool = False) -> VideoModel:
    """``tiny-<family>`` (random weights, offline), ``toy`` (the shipped trained toy model), a factory
    ``package.module:function`` returning a pipeline, or a diffusers pipeline directory or hub name (``DiffusionPipeline.from_pretrained``; a hub name
    must be in the local cache unless ``allow_download``). ``device`` and ``dtype`` apply to all."""
    from ..testing.tiny import TINY_MODELS, build_tiny

    built_in = name in TINY_MODELS or name == "toy" or bool(FACTORY.match(name))
    device, torch_dtype = _device_and_dtype(device, dtype, built_in)
    if name in TINY_MODELS:
        pipe, call_kwargs = build_tiny(name, seed=seed)
        defaults = call_kwargs(prompt="")
        size = (defaults["height"], defaults["width"]) if "height" in defaults else None
        return VideoModel(name, _moved(pipe, device, torch_dtype), call_kwargs, size)
    if name == "toy":
        from ..toy import load_toy_pipeline, toy_call_kwargs

        return VideoModel(name, _moved(load_toy_pipeline(), device, torch_dtype), toy_call_kwargs, None)
    if FACTORY.match(name):
        return VideoModel(name, _moved(_factory_pipeline(name), device, torch_dtype), _pipeline_call_kwargs(), None)
    names = "`attnsteer models` lists the built-in models"
    candidates = [*TINY_MODELS, "toy"]
    close = [c for c in candidates if sorted(c.split("-")) == sorted(name.split("-"))]
    close = close or difflib.get_close_matches(name, candidates, n=1)
    if close:
        names = f"did you mean {close[0]!r}? {names}"
    if name.startswith("tiny-"):
        raise ConfigError(f"--model {name!r} is not a built-in tiny model; {names}")
    path = Path(name).expanduser()
    looks_local = path.is_absolute() or name.startswith(".") or path.exists() or name.count("/") != 1
    if looks_local and not path.is_dir():
        raise ConfigError(f"--model {name!r}: no such pipeline directory (and not a hub name 'owner/model'); {names}")
    from diffusers import DiffusionPipeline

    try:
        pipe = DiffusionPipeline.from_pretrained(str(path) if looks_local else name, torch_dtype=torch_dtype,
                                                 local_files_only=not allow_download)
    except (OSError, ValueError) as exc:
        hint = "" if allow_download else " (not in the local cache; pass --allow-download to fetch it)"
        raise ConfigError(f"--model {name!r} could not be loaded{hint}: {str(exc).splitlines()[0]}; {names}") from exc
    return VideoModel(name, pipe.to(device), _pipeline_call_kwargs(), None)
