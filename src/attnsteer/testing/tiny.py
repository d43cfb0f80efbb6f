"""Tiny random-weight pipelines built from configs: no download, a few seconds on a CPU.

They prove that rules are applied exactly (tests, ``attnsteer run --model tiny-wan``); they make
no meaningful videos. Text prompts become deterministic pseudo-embeddings of the string, since
no tokenizer or text encoder can be loaded offline.

This module is the registry: :data:`TINY_MODELS` names every built-in tiny model, and every builder
(``tiny_*``), call-argument function (``*_call_kwargs``) and shared helper is importable from here. The
builders live one family per module in :mod:`attnsteer.testing.families`, the helpers they share in
:mod:`attnsteer.testing.tiny_parts`; neither imports this module.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from ..errors import ConfigError
from .families.allegro import allegro_call_kwargs, tiny_allegro
from .families.animatediff import animatediff_call_kwargs, tiny_animatediff
from .families.anyflow import anyflow_call_kwargs, tiny_anyflow
from .families.chronoedit import chronoedit_call_kwargs, tiny_chronoedit
from .families.cogvideox import cogvideox15_call_kwargs, cogvideox_call_kwargs, tiny_cogvideox, tiny_cogvideox15
from .families.consisid import consisid_call_kwargs, tiny_consisid
from .families.cosmos import (
    PassThroughSafetyChecker,
    cosmos25_call_kwargs,
    cosmos2_call_kwargs,
    tiny_cosmos2,
    tiny_cosmos25,
)
from .families.easyanimate import (
    easyanimate_call_kwargs,
    easyanimate_control_call_kwargs,
    easyanimate_image_to_video,
    easyanimate_inpaint_call_kwargs,
    tiny_easyanimate,
    tiny_easyanimate_control,
    tiny_easyanimate_inpaint,
)
from .families.framepack import framepack_call_kwargs, tiny_framepack
from .families.helios import helios_call_kwargs, tiny_helios
from .families.hunyuan import hunyuan15_call_kwargs, hunyuan_call_kwargs, tiny_hunyuan, tiny_hunyuan15
from .families.i2vgen_xl import i2vgen_xl_call_kwargs, tiny_i2vgen_xl
from .families.kandinsky5 import kandinsky5_call_kwargs, tiny_kandinsky5_i2v, tiny_kandinsky5_t2v
from .families.kandinsky6 import kandinsky6_call_kwargs, tiny_kandinsky6
from .families.latte import latte_call_kwargs, tiny_latte
from .families.ltx import ltx_call_kwargs, tiny_ltx, tiny_ltx_condition
from .families.ltx2 import ltx2_call_kwargs, tiny_ltx2
from .families.mochi import mochi_call_kwargs, tiny_mochi
from .families.motif_video import motif_video_call_kwargs, tiny_motif_video
from .families.sana_wm_refiner import sana_wm_refiner_call_kwargs, tiny_sana_wm_refiner
from .families.skyreels_v2 import skyreels_v2_df_call_kwargs, tiny_skyreels_v2_df
from .families.svd import svd_call_kwargs, tiny_svd
from .families.wan import lucy_edit_call_kwargs, tiny_lucy_edit, tiny_wan, tiny_wan22, tiny_wan_ti2v, wan_call_kwargs
from .families.wan_animate import tiny_wan_animate, wan_animate_call_kwargs
from .families.wan_vace import tiny_wan_vace, wan_vace_call_kwargs
from .tiny_parts import prompt_embedding, quiet_transformers, test_image, text_to_video, word_tokenizer

__all__ = [
    "PassThroughSafetyChecker", "TINY_MODELS", "allegro_call_kwargs", "animatediff_call_kwargs",
    "anyflow_call_kwargs", "build_tiny", "chronoedit_call_kwargs", "cogvideox15_call_kwargs",
    "cogvideox_call_kwargs", "consisid_call_kwargs", "cosmos25_call_kwargs", "cosmos2_call_kwargs",
    "easyanimate_call_kwargs", "easyanimate_control_call_kwargs", "easyanimate_image_to_video",
    "easyanimate_inpaint_call_kwargs", "framepack_call_kwargs", "helios_call_kwargs", "hunyuan15_call_kwargs",
    "hunyuan_call_kwargs", "i2vgen_xl_call_kwargs", "kandinsky5_call_kwargs", "kandinsky6_call_kwargs",
    "latte_call_kwargs", "ltx2_call_kwargs", "ltx_call_kwargs", "lucy_edit_call_kwargs", "mochi_call_kwargs",
    "motif_video_call_kwargs", "prompt_embedding", "sana_wm_refiner_call_kwargs", "skyreels_v2_df_call_kwargs",
    "svd_call_kwargs", "test_image", "text_to_video", "tiny_allegro", "tiny_animatediff", "tiny_anyflow",
    "tiny_chronoedit", "tiny_cogvideox", "tiny_cogvideox15", "tiny_consisid", "tiny_cosmos2", "tiny_cosmos25",
    "tiny_easyanimate", "tiny_easyanimate_control", "tiny_easyanimate_inpaint", "tiny_framepack", "tiny_helios",
    "tiny_hunyuan", "tiny_hunyuan15", "tiny_i2vgen_xl", "tiny_kandinsky5_i2v", "tiny_kandinsky5_t2v",
    "tiny_kandinsky6", "tiny_latte", "tiny_ltx", "tiny_ltx2", "tiny_ltx_condition", "tiny_lucy_edit", "tiny_mochi",
    "tiny_motif_video", "tiny_sana_wm_refiner", "tiny_skyreels_v2_df", "tiny_svd", "tiny_wan", "tiny_wan22",
    "tiny_wan_animate", "tiny_wan_ti2v", "tiny_wan_vace", "wan_animate_call_kwargs", "wan_call_kwargs",
    "wan_vace_call_kwargs", "word_tokenizer",
]

TINY_MODELS: dict[str, tuple[Callable[..., Any], Callable[..., dict[str, Any]]]] = {
    "tiny-wan": (tiny_wan, wan_call_kwargs),
    "tiny-cogvideox": (tiny_cogvideox, cogvideox_call_kwargs),
    "tiny-wan22": (tiny_wan22, wan_call_kwargs),
    "tiny-ltx": (tiny_ltx, ltx_call_kwargs),
    "tiny-cogvideox15": (tiny_cogvideox15, cogvideox15_call_kwargs),
    "tiny-ltx-condition": (tiny_ltx_condition, ltx_call_kwargs),
    "tiny-wan-ti2v": (tiny_wan_ti2v, wan_call_kwargs),
    "tiny-hunyuan": (tiny_hunyuan, hunyuan_call_kwargs),
    "tiny-hunyuan-token-replace": (functools.partial(tiny_hunyuan, image_condition_type="token_replace"),
                                   hunyuan_call_kwargs),
    "tiny-hunyuan15": (tiny_hunyuan15, hunyuan15_call_kwargs),
    "tiny-svd": (tiny_svd, svd_call_kwargs),
    "tiny-mochi": (tiny_mochi, mochi_call_kwargs),
    "tiny-allegro": (tiny_allegro, allegro_call_kwargs),
    "tiny-easyanimate": (tiny_easyanimate, easyanimate_call_kwargs),
    "tiny-easyanimate-inpaint": (tiny_easyanimate_inpaint, easyanimate_inpaint_call_kwargs),
    "tiny-consisid": (tiny_consisid, consisid_call_kwargs),
    "tiny-latte": (tiny_latte, latte_call_kwargs),
    "tiny-animatediff": (tiny_animatediff, animatediff_call_kwargs),
    "tiny-motif-video": (tiny_motif_video, motif_video_call_kwargs),
    "tiny-i2vgen-xl": (tiny_i2vgen_xl, i2vgen_xl_call_kwargs),
    "tiny-anyflow": (tiny_anyflow, anyflow_call_kwargs),
    "tiny-cosmos2": (tiny_cosmos2, cosmos2_call_kwargs),
    "tiny-kandinsky5-i2v": (tiny_kandinsky5_i2v, kandinsky5_call_kwargs),
    "tiny-wan-vace": (tiny_wan_vace, wan_vace_call_kwargs),
    "tiny-chronoedit": (tiny_chronoedit, chronoedit_call_kwargs),
    "tiny-skyreels-v2-df": (tiny_skyreels_v2_df, skyreels_v2_df_call_kwargs),
    "tiny-framepack": (tiny_framepack, framepack_call_kwargs),
    "tiny-ltx2": (tiny_ltx2, ltx2_call_kwargs),
    "tiny-wan-animate": (tiny_wan_animate, wan_animate_call_kwargs),
    "tiny-kandinsky6": (tiny_kandinsky6, kandinsky6_call_kwargs),
    "tiny-helios": (tiny_helios, helios_call_kwargs),
    "tiny-lucy-edit": (tiny_lucy_edit, lucy_edit_call_kwargs),
    "tiny-easyanimate-control": (tiny_easyanimate_control, easyanimate_control_call_kwargs),
    "tiny-kandinsky5-t2v": (tiny_kandinsky5_t2v, kandinsky5_call_kwargs),
}


def build_tiny(name: str, seed: int = 0) -> tuple[Any, Callable[..., dict[str, Any]]]:
    """The tiny pipeline called ``name`` and the function that makes its call arguments."""
    if name not in TINY_MODELS:
        raise ConfigError(f"model {name!r} is not a built-in tiny model; choose one of {sorted(TINY_MODELS)}")
    build, call_kwargs = TINY_MODELS[name]
    with quiet_transformers():
        return build(seed), call_kwargs
