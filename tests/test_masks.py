"""Masks drawn from attention (``at.masks``), then used to steer a second run (``at.recipes.subject_motion``).

The toy model runs in float64 on both sides. Its self-attention holds only the video (9 latent frames of
8 x 8 tokens, frame-major) and its prompt words meet the video in the cross-attention ``attn2`` (two text
tokens, one per prompt word). The dense per-word attention, the region map and the biased reference
call are computed here from those facts, not from attnsteer's selectors.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

import attnsteer as at
from dense_reference import DenseAttention, sdpa_arguments

pytestmark = pytest.mark.usefixtures("one_thread")

FRAMES, ROWS, COLS = 9, 8, 8
TOKENS = FRAMES * ROWS * COLS
STEPS = 2
PROMPT = "right fast"  # text token 0 is "right", 1 is "fast"
BOX = (0.25, 0.25, 0.75, 0.75)  # the region map's queries: rows and cols 2..5 of latent frame 1


def toy_tokenizer():
    from attnsteer.testing.tiny import word_tokenizer

    return word_tokenizer("left right up down still slow fast")


@pytest.fixture(scope="module")
def toy():
    from attnsteer.toy import load_toy_pipeline, sample_clip, toy_call_kwargs

    pipe = load_toy_pipeline()
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.double()
    image = sample_clip(3, PROMPT).video[0]

    def run():
        kwargs = toy_call_kwargs(prompt=PROMPT, num_inference_steps=STEPS, output_type="latent")
        return torch.as_tensor(np.asarray(pipe(image=image, generator=torch.Generator().manual_seed(0),
                                                 **kwargs).frames)).double()

    return pipe, run


def calls(pipe) -> list[tuple[int, str]]:
    """(step, branch) of every attention call of one kind, in order: per step the cond forward, then the uncond
    one, each through every block."""
    layers = len(pipe.transformer.blocks)
    return [(s, b) for s in range(STEPS) for b in ("cond", "uncond") for _ in range(layers)]


class Probabilities(TorchFunctionMode):
    """softmax(q k^T * scale) in float64 of every unmasked SDPA call: the cross-attention (2 keys) and the
    self-attention (``TOKENS`` keys) apart."""

    def __init__(self) -> None:
        super().__init__()
        self.cross: list[torch.Tensor] = []
        self.self: list[torch.Tensor] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            named = sdpa_arguments(args, kwargs)
            q, k = named["query"], named["key"]
            assert named.get("attn_mask") is None
            scale = named.get("scale") or q.shape[-1] ** -0.5
            p = ((q.double() @ k.double().transpose(-1, -2)) * scale).softmax(-1)
            {2: self.cross, TOKENS: self.self}[k.shape[-2]].append(p)
        return func(*args, **kwargs)


def frame_threshold(values: torch.Tensor, threshold: float) -> torch.Tensor:
    """[FRAMES, ROWS, COLS] bool: per frame, the tokens at ``threshold`` x the frame's peak or above, with the
    check that no token sits within rounding of the boundary (the recorded map is float32)."""
    frames = values.reshape(FRAMES, ROWS, COLS)
    relative = frames / frames.flatten(1).amax(1)[:, None, None]
    assert float((relative - threshold).abs().min()) > 1e-5, "a token sits on the threshold: pick another"
    return relative >= threshold


@pytest.fixture(scope="module")
def recorded(toy):
    """One inspected run keeping the word map of "right" (cross-attention) and a region map, and the dense
    probabilities of the same run."""
    pipe, run = toy
    specs = [at.maps.onto(at.words("right"), attention="cross"), at.maps.region(at.box(*BOX), frame=1)]
    with at.inspect(pipe, maps=specs, map_steps="each", prompt=PROMPT, tokenizer=toy_tokenizer()) as rec:
        run()
    dense = Probabilities()
    with dense:
        run()
    return rec, dense


def test_word_mask_equals_threshold_of_dense_per_word_attention(toy, recorded):
    pipe, _ = toy
    rec, dense = recorded
    order = calls(pipe)
    assert len(dense.cross) == len(order)
    chosen = [p for p, (step, branch) in zip(dense.cross, order) if step == 1 and branch == "cond"]
    per_word = torch.stack([p[0, :, :, 0].mean(0) for p in chosen]).mean(0)  # [TOKENS]: mass on "right"
    expected = frame_threshold(per_word, 0.85)
    mask = at.masks.from_attention(rec, word="right", threshold=0.85, steps=[1])
    assert isinstance(mask, at.Selector) and mask.tokens.shape == (FRAMES, ROWS, COLS)
    assert torch.equal(mask.tokens, expected)
    assert 0 < int(expected.sum()) < expected.numel() // 2  # a real subset in every frame
    assert bool(expected.flatten(1).any(1).all())


def test_region_map_mask_equals_threshold_of_dense_mean_attention(toy, recorded):
    pipe, _ = toy
    rec, dense = recorded
    queries = [ROWS * COLS + r * COLS + c for r in range(2, 6) for c in range(2, 6)]  # the box in frame 1
    chosen = [p for p, (_, branch) in zip(dense.self, calls(pipe)) if branch == "cond"]
    received = torch.stack([p[0][:, queries, :].mean(-2).mean(0) for p in chosen]).mean(0)  # [TOKENS]
    mask = at.masks.from_attention(rec, map=at.maps.region(at.box(*BOX), frame=1), threshold=0.3)
    assert torch.equal(mask.tokens, frame_threshold(received, 0.3))


def test_subject_motion_biases_exactly_the_masked_generated_tokens(toy, recorded, tmp_path):
    pipe, run = toy
    rec, _ = recorded
    mask = at.masks.from_attention(rec, word="right", threshold=0.85, steps=[1])
    path = at.masks.save(mask, tmp_path / "right.npz")
    assert torch.equal(at.masks.load(path).tokens, mask.tokens)
    recipe = at.recipes.subject_motion(mask=str(path), gamma=1.5, background=-1.0, until_step=1)
    assert len(recipe.rules) == 2
    vanilla = run()
    with at.steer(pipe, recipe):
        steered = run()

    inside = mask.tokens.reshape(-1)
    generated = torch.arange(TOKENS) >= ROWS * COLS  # latent frame 0 is the reference
    reference = ~generated
    order = iter(calls(pipe))

    def bias(q):
        step, branch = next(order)
        extra = torch.zeros(1, 1, TOKENS, TOKENS, dtype=torch.float64)
        if step == 0 and branch == "cond":
            extra[0, 0, (generated & inside)[:, None] & reference[None, :]] = -1.5
            extra[0, 0, (generated & ~inside)[:, None] & reference[None, :]] = 1.0
        return extra

    with DenseAttention(extra_bias=bias, seq_len=TOKENS):
        expected = run()
    torch.testing.assert_close(steered, expected, atol=1e-9, rtol=0)
    assert float((steered - vanilla).abs().max()) > 1e-3  # the rule acts


def test_mask_from_a_saved_maps_file_drives_the_recipe_and_errors_name_the_field(recorded, tmp_path):
    rec, _ = recorded
    path = rec.maps.save(tmp_path / "maps.npz")
    from_file = at.recipes.subject_motion(mask=str(path), subject_word="right", threshold=0.85)
    direct = at.masks.from_attention(rec, word="right", threshold=0.85)
    (rule,) = from_file.rules
    assert torch.equal(rule.query.right.tokens, direct.tokens)
    with pytest.raises(at.ConfigError, match=r"from_attention\(word='cat'\).*word maps are \[\"'right'\"\]"):
        at.masks.from_attention(rec, word="cat")
    for bad in (0, 1.5, -0.1, float("nan")):
        with pytest.raises(at.ConfigError, match=r"from_attention\(threshold=...\)"):
            at.masks.from_attention(rec, word="right", threshold=bad)
    with pytest.raises(at.ConfigError, match=r"from_attention\(steps=...\) must be recorded step indices, "
                                             r"allowed: \[0, 1\]; got \[5\]"):
        at.masks.from_attention(rec, word="right", steps=[5])
    with pytest.raises(at.ConfigError, match="exactly one of word= .* and map="):
        at.masks.from_attention(rec)
    with pytest.raises(at.ConfigError, match="keeps no spatial maps"):
        at.masks.from_attention(at.Record(), word="right")
    with pytest.raises(at.ConfigError, match=r"subject_motion\(mask=.*\) is not a mask file.*give subject_word="):
        at.recipes.subject_motion(mask=str(path))
    with pytest.raises(at.ConfigError, match=r"subject_motion\(mask=...\) must be a string"):
        at.recipes.subject_motion(mask=at.masks.load(at.masks.save(direct, tmp_path / "m.npz")))


def test_token_mask_selects_its_tokens_and_refuses_another_frame_count():
    from attnsteer.language.layout import Segment

    tokens = torch.zeros(2, 2, 2, dtype=torch.bool)
    tokens[0, 0, 1] = tokens[1, 1, 0] = True
    mask = at.masks.TokenMask(tokens, "test")
    layout = at.TokenLayout(num_frames=2, tokens_per_frame=4, grid=(2, 2), video_start=3,
                            segments=(Segment("text", 0, 3),))
    got = mask.token_mask(at.SelectionContext(layout))
    assert torch.nonzero(got).flatten().tolist() == [3 + 1, 3 + 4 + 2]
    rest = (~mask).token_mask(at.SelectionContext(layout))
    assert torch.nonzero(rest).flatten().tolist() == [0, 1, 2, 3, 5, 6, 7, 8, 10]
    finer = at.TokenLayout(num_frames=2, tokens_per_frame=16, grid=(4, 4))  # each token cell becomes 2 x 2
    assert int(mask.token_mask(at.SelectionContext(finer)).sum()) == 8
    with pytest.raises(at.ConfigError, match="holds 2 latent frames but this call has 3"):
        mask.token_mask(at.SelectionContext(at.TokenLayout(num_frames=3, tokens_per_frame=4, grid=(2, 2))))
    with pytest.raises(at.ConfigError, match="marks no token"):
        at.masks.TokenMask(torch.zeros(1, 2, 2, dtype=torch.bool))


def test_cli_inspects_the_toy_word_map_then_runs_subject_motion_on_it(tmp_path, capsys):
    import json

    from attnsteer.cli.main import main

    common = ["--model", "toy", "--prompt", PROMPT, "--steps", "2"]
    assert main(["inspect", *common, "--word", "right", "--out", str(tmp_path / "inspect")]) == 0
    maps = tmp_path / "inspect" / "maps.npz"
    assert main(["run", *common, "--recipe", "subject_motion", "--mask", str(maps), "--subject-word", "right",
                 "--threshold", "0.85", "--background", "-1", "--until-step", "1", "--out", str(tmp_path / "run")]) == 0
    applied = json.loads((tmp_path / "run" / "run.json").read_text())["applied"]
    assert [r["steps"] for r in applied["rules"]] == [[0], [0]] and applied["attention_calls_steered"] == 4
    capsys.readouterr()
    assert main(["run", *common, "--recipe", "subject_motion", "--out", str(tmp_path / "bare")]) == 2
    assert "missing a required argument: 'mask'" in capsys.readouterr().err
