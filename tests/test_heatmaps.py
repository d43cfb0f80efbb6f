"""Spatial attention maps (``at.inspect(maps=...)``) against dense softmax computed in the test.

Every self-attention call's probabilities are computed densely in float64 (``DenseAttention`` with
one group per token keeps the whole matrix, tiny models only); the token sets (reference frame,
boxes, text, words) are written out here by index from each model's layout facts, not taken from
attnsteer's selectors.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

import attnsteer as at
from attnsteer.kernels import grouped_attention
from dense_reference import DenseAttention, ForwardCounter, frame_bias, sdpa_arguments

pytestmark = pytest.mark.usefixtures("one_thread")


def dense_probabilities(run, seq: int) -> list[torch.Tensor]:
    """softmax of every self-attention call of ``seq`` tokens: [B, H, N, N] float64, in call order."""
    dense = DenseAttention(groups=lambda q: torch.arange(q.shape[-2]), seq_len=seq)
    with dense:
        run()
    return dense.masses


def onto(p: torch.Tensor, keys) -> torch.Tensor:
    """[B, N]: per query, the mass on ``keys`` (token indices), mean over heads."""
    return p[..., keys].sum(-1).mean(1)


def mean_attention(p: torch.Tensor, queries) -> torch.Tensor:
    """[B, N]: per key, the mean weight of ``queries`` (token indices) on it, mean over heads."""
    return p[..., queries, :].mean(-2).mean(1)


def frame_tokens(start: int, frame: int, rows: int, cols: int, box_rows=None, box_cols=None) -> list[int]:
    """Token indices of a frame (or of rows x cols of its grid) in a frame-major video from ``start``."""
    box_rows = range(rows) if box_rows is None else box_rows
    box_cols = range(cols) if box_cols is None else box_cols
    return [start + frame * rows * cols + r * cols + c for r in box_rows for c in box_cols]


def check(rec, probabilities, calls, expected_maps) -> None:
    """Each call (step, layer, {branch: batch rows}) of ``probabilities`` against the recorded map."""
    assert len(probabilities) == len(calls)
    for p, (step, layer, rows) in zip(probabilities, calls):
        for branch, row in rows.items():
            for label, fn in expected_maps.items():
                got = rec.maps.heatmap(label, steps=[step], layers=[layer], branch=branch).values
                torch.testing.assert_close(got.double(), fn(p)[row], atol=1e-5, rtol=0, msg=lambda m: f"{label} "
                                           f"step {step} layer {layer} {branch}: {m}")


# --- the kernel's per-query output ---------------------------------------------------------------


def test_grouped_kernel_per_query_mass_and_lse_equal_dense_softmax():
    g = torch.Generator().manual_seed(0)
    b, h, n, d = 2, 3, 40, 8
    q, k, v = (torch.randn(b, h, n, d, generator=g) for _ in range(3))
    groups = torch.randint(0, 4, (n,), generator=g)
    bias = torch.randn(b, 4, 4, generator=g)
    bias[0, 1, 2] = float("-inf")
    mask = torch.ones(b, 1, 1, n, dtype=torch.bool)
    mask[1, ..., -5:] = False
    out, qm = grouped_attention(q, k, v, groups, groups, bias=bias, attn_mask=mask, per_query=True)
    logits = (q.double() @ k.double().transpose(-1, -2)) * d**-0.5 + bias.double()[:, None][:, :, groups][..., groups]
    logits = logits.masked_fill(~mask, float("-inf"))
    p = logits.softmax(-1)
    weights = torch.stack([p[..., groups == c].sum(-1) for c in range(4)], -1)
    torch.testing.assert_close(qm.weights.double(), weights, atol=1e-5, rtol=0)
    torch.testing.assert_close(qm.lse.double(), torch.logsumexp(logits, -1), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.double(), p @ v.double(), atol=1e-5, rtol=0)
    plain, mass = grouped_attention(q, k, v, groups, groups, bias=bias, attn_mask=mask, return_mass=True)
    assert torch.equal(plain, out) and mass.shape == (b, h, 4, 4)


# --- tiny Wan: video-only self-attention -----------------------------------------------------------

WAN_GRID, WAN_FRAMES, WAN_LAYERS, WAN_STEPS = (4, 4), 3, 2, 2
WAN_SEQ = WAN_FRAMES * 16
BOX = at.box(0.25, 0.25, 0.75, 0.75)  # cell centres 0.125, 0.375, 0.625, 0.875: rows and columns 1, 2
BOX_TOKENS = frame_tokens(0, 2, 4, 4, range(1, 3), range(1, 3))


def wan_calls(steps: int) -> list[tuple[int, int, dict[str, int]]]:
    """Wan: per step a cond forward, then an uncond one (batch 1 each), each through every layer."""
    return [(s, layer, {branch: 0}) for s in range(steps) for branch in ("cond", "uncond") for layer in range(WAN_LAYERS)]


WAN_MAPS = [at.maps.onto(at.frames.reference), at.maps.onto(BOX), at.maps.region(BOX, frame=2), at.maps.received()]
WAN_EXPECTED = {
    "onto frames.reference": lambda p: onto(p, frame_tokens(0, 0, 4, 4)),
    "onto box(0.25, 0.25, 0.75, 0.75)": lambda p: onto(p, [t for f in range(3) for t in frame_tokens(0, f, 4, 4, (1, 2),
                                                                                                     (1, 2))]),
    "region (box(0.25, 0.25, 0.75, 0.75) & frames[2])": lambda p: mean_attention(p, BOX_TOKENS),
    "received from video": lambda p: mean_attention(p, list(range(WAN_SEQ))),
}


@pytest.fixture
def small_chunks(monkeypatch):
    """The grouped pass in chunks of 4 query rows, as large calls run it."""
    from attnsteer.kernels import grouped

    monkeypatch.setattr(grouped, "QUERY_BLOCK", 4)
    monkeypatch.setattr(grouped, "BLOCKS_PER_THREAD", 1)
    monkeypatch.setattr(grouped, "WHOLE_BYTES", 0)  # however small the call


@pytest.mark.parametrize("chunked", [False, True])
def test_wan_maps_equal_dense_softmax_per_step_layer_and_branch(wan_pipe, run_wan, chunked, request):
    if chunked:
        request.getfixturevalue("small_chunks")
    vanilla = run_wan(num_inference_steps=WAN_STEPS)
    with at.inspect(wan_pipe, maps=WAN_MAPS, map_steps="each", map_layers="each") as rec:
        recorded = run_wan(num_inference_steps=WAN_STEPS)
    np.testing.assert_allclose(recorded, vanilla, atol=1e-6)  # recording changes nothing
    probabilities = dense_probabilities(lambda: run_wan(num_inference_steps=WAN_STEPS), WAN_SEQ)
    check(rec, probabilities, wan_calls(WAN_STEPS), WAN_EXPECTED)
    reference = rec.maps.heatmap(at.maps.onto(at.frames.reference))
    assert reference.frames.shape == (WAN_FRAMES, *WAN_GRID)
    torch.testing.assert_close(reference.frames.mean((1, 2)), rec.frame_map()[:, 0], atol=1e-6, rtol=0)
    received = rec.maps.heatmap(at.maps.received(), branch="cond")
    assert abs(float(received.values.sum()) - 1) < 1e-5  # mean attention of the video: a distribution over keys


def test_wan_maps_under_dymos_equal_the_biased_dense_softmax(wan_pipe, run_wan):
    gamma = 2.0
    with at.inspect(wan_pipe, maps=WAN_MAPS, map_steps="each", map_layers="each") as rec, \
            at.steer(wan_pipe, at.recipes.dymos(gamma=gamma, until_step=1)):
        run_wan(num_inference_steps=WAN_STEPS)
    counter = ForwardCounter(wan_pipe.transformer)

    def extra(q):  # the cond forward of step 0 only
        return frame_bias(WAN_SEQ, 0, WAN_FRAMES, 16, -gamma, [0], 1) if counter.count == 0 else None

    try:
        dense = DenseAttention(extra, groups=lambda q: torch.arange(q.shape[-2]), seq_len=WAN_SEQ)
        with dense:
            run_wan(num_inference_steps=WAN_STEPS)
    finally:
        counter.remove()
    check(rec, dense.masses, wan_calls(WAN_STEPS), WAN_EXPECTED)


def test_binned_maps_are_means_over_their_calls(wan_pipe, run_wan):
    with at.inspect(wan_pipe, maps=WAN_MAPS[:1], map_steps=[range(0, 2), range(2, 4)], map_layers="all") as rec:
        run_wan()
    probabilities = dense_probabilities(run_wan, WAN_SEQ)
    calls = wan_calls(4)
    assert rec.maps.step_bin_labels == ["steps 0-1", "steps 2-3"] and rec.maps.layer_bin_labels == ["all layers"]
    for steps in ([0, 1], [2, 3]):
        expected = torch.stack([WAN_EXPECTED["onto frames.reference"](p)[0]
                                for p, (s, _, rows) in zip(probabilities, calls) if s in steps and "cond" in rows])
        got = rec.maps.heatmap(0, steps=steps, branch="cond")
        torch.testing.assert_close(got.values.double(), expected.mean(0), atol=1e-5, rtol=0)
        assert got.steps == f"steps {steps[0]}-{steps[1]}" and got.layers == "all layers"
    with pytest.raises(at.ConfigError, match="splits the recorded bins"):
        rec.maps.heatmap(0, steps=[1, 2])


def test_maps_save_and_load_exactly(wan_pipe, run_wan, tmp_path):
    with at.inspect(wan_pipe, maps=WAN_MAPS, map_steps=2) as rec:
        run_wan()
    path = rec.maps.save(tmp_path / "maps.npz")
    loaded = at.maps.MapRecording.load(path)
    assert loaded.labels == rec.maps.labels and loaded.layout == rec.maps.layout
    assert loaded.step_bin_labels == rec.maps.step_bin_labels == ["steps 0-1", "steps 2-3"]
    for spec in WAN_MAPS:
        for branch in ("cond", "uncond", None):
            a, b = rec.maps.heatmap(spec, branch=branch), loaded.heatmap(spec.label, branch=branch)
            assert torch.equal(a.values, b.values) and a.title == b.title
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(at.RecordingError, match="not a recording"):
        at.maps.MapRecording.load(tmp_path / "bad.npz")
    with pytest.raises(at.RecordingError, match="sums.npy must be a 2-d array"):  # a frame recording
        at.maps.MapRecording.load(rec_path(wan_pipe, run_wan, tmp_path))


def rec_path(pipe, run, tmp_path):
    with at.inspect(pipe) as rec:
        run(num_inference_steps=1)
    return rec.save(tmp_path / "frames.npz")


def test_a_default_recording_of_a_50_step_wan_480p_run_stays_under_100_mb(tmp_path):
    """Simulated calls of Wan 2.1 480p (21 x 30 x 52 tokens), 50 steps x 40 layers x 2 branches, four maps."""
    from attnsteer.runtime.controller import ForwardState, LayerInfo
    from attnsteer.runtime.call_maps import CallMaps
    from attnsteer.language.schedules import StepInfo

    layout = at.TokenLayout(num_frames=21, tokens_per_frame=1560, grid=(30, 52))
    maps = at.maps.MapRecording([at.maps.onto(at.frames.reference), at.maps.onto(at.frames[-1]),
                                 at.maps.region(at.point(0.5, 0.5), frame=10), at.maps.received()])
    call = CallMaps(onto=torch.rand(1, layout.seq_len, 2), regions=torch.rand(1, 2, layout.seq_len))
    for step in range(50):
        for branch in ("cond", "uncond"):
            state = ForwardState(layout, StepInfo(step=step, num_steps=50, timestep=1.0), (branch,), branch)
            for index in range(40):
                layer = LayerInfo(index, f"blocks.{index}.attn1", "transformer")
                maps.add(state, layer, maps.bins(state, layer), call)
    assert maps.step_bin_labels == ["steps 0-9", "steps 10-19", "steps 20-29", "steps 30-39", "steps 40-49"]
    held = sum(t.numel() * t.element_size() for t in maps._sums.values())
    size = maps.save(tmp_path / "maps.npz").stat().st_size
    assert held < 100 * 2**20 and size < 100 * 2**20, (held, size)
    with pytest.raises(at.SteeringError, match="map_max_mb"):
        each = at.maps.MapRecording([at.maps.received()], steps="each", layers="each", max_mb=1)
        state = ForwardState(layout, StepInfo(step=0, num_steps=50, timestep=1.0), ("cond",), "cond")
        for index in range(40):
            layer = LayerInfo(index, f"blocks.{index}.attn1", "transformer")
            each.add(state, layer, each.bins(state, layer), CallMaps(call.onto[..., :0], call.regions[:, :1]))


# --- tiny CogVideoX: joint [text, video], guidance batched as [uncond, cond] -----------------------


@pytest.fixture(scope="module")
def cog():
    from attnsteer.testing.tiny import cogvideox_call_kwargs, test_image, tiny_cogvideox

    pipe = tiny_cogvideox()

    def run(**overrides):
        kwargs = cogvideox_call_kwargs(**{"output_type": "latent", "num_inference_steps": 2, **overrides})
        return np.asarray(pipe(image=test_image(), generator=torch.Generator().manual_seed(0), **kwargs).frames[0])

    return pipe, run


def test_cogvideox_word_text_and_point_maps_equal_dense_softmax(cog):
    from attnsteer.testing.tiny import word_tokenizer

    pipe, run = cog
    with at.inspect(pipe) as probe:
        run(num_inference_steps=1)
    layout = probe.layout
    text, (rows, cols) = layout.segments[0].stop, layout.grid
    assert layout.segments[0].start == 0 and layout.video_start == text
    specs = [at.maps.onto(at.text), at.maps.onto(at.words("cat")), at.maps.region(at.point(0.9, 0.1), frame=1),
             at.maps.received(at.tokens)]
    with at.inspect(pipe, maps=specs, map_steps="each", map_layers="each", prompt="a cat",
                    tokenizer=word_tokenizer()) as rec:
        run()
    expected = {
        "onto text": lambda p: onto(p, list(range(text))),
        "onto words('cat')": lambda p: onto(p, [1]),  # "a cat": tokens "a", "cat"
        "region (point(0.9, 0.1) & frames[1])": lambda p: mean_attention(p, frame_tokens(text, 1, rows, cols, [0], [cols - 1])),
        "received from tokens": lambda p: mean_attention(p, list(range(layout.seq_len))),
    }
    layers = len(pipe.transformer.transformer_blocks)
    calls = [(s, layer, {"uncond": 0, "cond": 1}) for s in range(2) for layer in range(layers)]
    check(rec, dense_probabilities(run, layout.seq_len), calls, expected)
    word = rec.maps.heatmap(1, branch="cond")
    assert word.frames.shape == (layout.num_frames, rows, cols) and word.text.shape == (text,)


# --- tiny HunyuanVideo: joint [video, text], padded text hidden by the attention mask ----------------


def test_hunyuan_maps_with_padded_text_equal_dense_softmax(small_chunks):
    from attnsteer.testing.tiny import hunyuan_call_kwargs, test_image, tiny_hunyuan

    pipe = tiny_hunyuan()

    def run():
        kwargs = hunyuan_call_kwargs(output_type="latent", num_inference_steps=2)
        return pipe(image=test_image(), generator=torch.Generator().manual_seed(0), **kwargs).frames[0]

    video, seq = 3 * 16, 3 * 16 + 8
    specs = [at.maps.onto(at.text), at.maps.onto(at.frames.reference), at.maps.received()]
    with at.inspect(pipe, maps=specs, map_steps="each", map_layers="each") as rec:
        run()
    expected = {
        "onto text": lambda p: onto(p, list(range(video, seq))),
        "onto frames.reference": lambda p: onto(p, list(range(16))),
        "received from video": lambda p: mean_attention(p, list(range(video))),
    }
    calls = [(s, layer, {branch: 0}) for s in range(2) for branch in ("cond", "uncond") for layer in range(2)]
    check(rec, dense_probabilities(run, seq), calls, expected)
    received = rec.maps.heatmap(at.maps.received(), branch="cond").values
    padding = received[video + len("a cat".split()) + 1 :]  # "a cat": 3 valid text tokens, the rest padding
    assert padding.numel() == 5 and bool((padding == 0).all())


# --- the toy model ----------------------------------------------------------------------------------


def test_toy_reference_map_equals_dense_softmax():
    from attnsteer.toy import load_toy_pipeline, sample_clip, toy_call_kwargs

    pipe = load_toy_pipeline()
    for component in pipe.components.values():  # both runs in float64: the maps' 1e-5 then holds on any CPU
        if isinstance(component, torch.nn.Module):  # (in float32 two runs' rounding reached 1.004e-5 under avx2)
            component.double()
    image = sample_clip(3, "right fast").video[0]

    def run():
        return pipe(image=image, generator=torch.Generator().manual_seed(0), **toy_call_kwargs(num_inference_steps=2))

    seq = 9 * 64
    with at.inspect(pipe, maps=[at.maps.onto(at.frames.reference)], map_steps="each", map_layers="each") as rec:
        run()
    layers = len(pipe.transformer.blocks)
    calls = [(s, layer, {branch: 0}) for s in range(2) for branch in ("cond", "uncond") for layer in range(layers)]
    check(rec, dense_probabilities(run, seq), calls, {"onto frames.reference": lambda p: onto(p, list(range(64)))})
    assert rec.maps.heatmap(0).frames.shape == (9, 8, 8)


# --- errors -----------------------------------------------------------------------------------------


def test_map_errors_name_the_field_and_what_is_allowed(wan_pipe, run_wan):
    with pytest.raises(at.ConfigError, match="inspect\\(maps=...\\) takes"):
        at.inspect(wan_pipe, maps=[at.frames.reference])
    with pytest.raises(at.ConfigError, match="names a map twice"):
        at.inspect(wan_pipe, maps=[at.maps.received(), at.maps.received()])
    with pytest.raises(at.ConfigError, match="map_steps"):
        at.inspect(wan_pipe, maps=[at.maps.received()], map_steps=0)
    with pytest.raises(at.ConfigError, match="map_layers"):
        at.inspect(wan_pipe, maps=[at.maps.received()], map_layers="some")
    with pytest.raises(at.ConfigError, match="selects prompt words: pass prompt="):
        at.inspect(wan_pipe, maps=[at.maps.onto(at.words("cat"))])
    with pytest.raises(at.ConfigError, match="no text tokens"):
        with at.inspect(wan_pipe, maps=[at.maps.onto(at.text)]):
            run_wan(num_inference_steps=1)
    with pytest.raises(at.SteeringError, match="spatial maps need rules that are constant"):
        with at.inspect(wan_pipe, maps=[at.maps.received()]), \
                at.steer(wan_pipe, at.Rule(query=at.video, key=at.video, transform=at.temperature(2.0),
                                           pairs=at.frame_distance(1))):
            run_wan(num_inference_steps=1)
    with at.inspect(wan_pipe, maps=[at.maps.received()]) as rec:
        run_wan(num_inference_steps=1)
    with pytest.raises(at.ConfigError, match="no map 'nothing' in this recording; its maps are"):
        rec.maps.heatmap("nothing")
    with pytest.raises(at.ConfigError, match="no recorded map"):
        rec.maps.heatmap(0, branch="perturbed")


# --- Wan's separate text cross-attention (attn2), read without changing it ----------------------------


class CrossProbabilities(TorchFunctionMode):
    """softmax of every SDPA call whose keys are ``text`` tokens (Wan's text cross-attention), float64;
    the call itself runs unchanged."""

    def __init__(self, text: int) -> None:
        super().__init__()
        self.text = text
        self.probabilities: list[torch.Tensor] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            named = sdpa_arguments(args, kwargs)
            q, k = named["query"], named["key"]
            if k.shape[-2] == self.text and q.shape[-2] != self.text:
                assert named.get("attn_mask") is None
                scale = named.get("scale") or q.shape[-1] ** -0.5
                self.probabilities.append(((q.double() @ k.double().transpose(-1, -2)) * scale).softmax(-1))
        return func(*args, **kwargs)


def test_wan_word_maps_read_from_the_text_cross_attention(wan_pipe, run_wan):
    from attnsteer.testing.tiny import wan_call_kwargs, word_tokenizer

    prompt = "a red ball"
    text = wan_call_kwargs()["prompt_embeds"].shape[1]
    specs = [at.maps.onto(at.words("red", "ball"), attention="cross"), at.maps.onto(at.frames.reference)]
    vanilla = run_wan(prompt=prompt, num_inference_steps=WAN_STEPS)
    with at.inspect(wan_pipe, maps=specs, map_steps="each", map_layers="each", prompt=prompt,
                    tokenizer=word_tokenizer()) as rec:
        recorded = run_wan(prompt=prompt, num_inference_steps=WAN_STEPS)
    np.testing.assert_allclose(recorded, vanilla, atol=1e-6)
    dense = CrossProbabilities(text)
    with dense:
        run_wan(prompt=prompt, num_inference_steps=WAN_STEPS)
    assert rec.maps.layer_bin_labels == ["transformer.blocks.0.attn1", "transformer.blocks.0.attn2",
                                         "transformer.blocks.1.attn1", "transformer.blocks.1.attn2"]
    label = "onto words('red', 'ball') (cross-attention)"
    for p, (step, layer, rows) in zip(dense.probabilities, wan_calls(WAN_STEPS), strict=True):
        (branch, row), = rows.items()
        got = rec.maps.heatmap(label, steps=[step], layers=f"transformer.blocks.{layer}.attn2", branch=branch)
        torch.testing.assert_close(got.values.double(), p[..., [1, 2]].sum(-1).mean(1)[row], atol=1e-5, rtol=0)
    assert rec.maps.heatmap(label).frames.shape == (WAN_FRAMES, *WAN_GRID)
    with pytest.raises(at.ConfigError, match=r"onto\(attention=\.\.\.\) must be one of"):
        at.maps.onto(at.text, attention="joint")
