"""A model that is not a diffusers pipeline, driven by its own loop: a video transformer written here (its own
module classes, attention in [B, L, H, D] through SDPA or, in a second variant, through flash-attn called directly),
a hand-written denoising loop with a conditional and an unconditional forward per step, and ``.step()`` saying
where the loop is. Every steered call is checked against a dense float64 reference."""

from __future__ import annotations

import contextlib
import gc
import sys

import pytest
import torch
import torch.nn.functional as F

import attnsteer as at
from attnsteer.contract.registry import registered_adapter
from attnsteer.testing import flash_stand_in

FRAMES, ROWS, COLS, HEADS, DIM = 3, 2, 3, 2, 8
TOKENS = FRAMES * ROWS * COLS
STEPS, GAMMA = 4, 0.7


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The model's attention wrapper, as in the authors' repositories: flash-attn where installed, else SDPA."""
    flash = sys.modules.get("flash_attn")
    if flash is not None:
        return flash.flash_attn_func(q, k, v)
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)


class SelfAttention(torch.nn.Module):
    def __init__(self, log: list) -> None:
        super().__init__()
        self.qkv, self.out, self.log = torch.nn.Linear(DIM, 3 * DIM), torch.nn.Linear(DIM, DIM), log

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).unflatten(-1, (3, HEADS, DIM // HEADS)).unbind(2)  # [B, L, H, D] each
        o = attention(q, k, v)
        self.log.append((q, k, v, o))
        return self.out(o.flatten(2))


class Block(torch.nn.Module):
    def __init__(self, log: list) -> None:
        super().__init__()
        self.self_attn, self.mlp = SelfAttention(log), torch.nn.Linear(DIM, DIM)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(x + emb)
        return x + torch.tanh(self.mlp(x))


class TinyVideoTransformer(torch.nn.Module):
    """Tokens [B, F*h*w, C] of F latent frames; ``t`` is the timestep, ``text`` a conditioning vector or None."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list = []
        self.blocks = torch.nn.ModuleList([Block(self.log), Block(self.log)])
        self.time, self.text = torch.nn.Linear(1, DIM), torch.nn.Linear(DIM, DIM)

    def forward(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.time(t.reshape(-1, 1, 1).to(x.dtype) / 1000) + (0 if text is None else self.text(text)[:, None])
        for block in self.blocks:
            x = block(x, emb)
        return x


ADAPTER = at.GenericAdapter(attention=r"blocks\.\d+\.self_attn", frames=FRAMES, grid=(ROWS, COLS), timestep="t",
                            hidden_states="x")


@torch.no_grad()
def sample(model: TinyVideoTransformer, session=None) -> tuple[torch.Tensor, list[tuple[int, str]]]:
    """The model's own loop: per step a conditional and an unconditional forward, CFG, an Euler update. Returns the
    latents and the (step, branch) of every forward."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, TOKENS, DIM, generator=gen, dtype=torch.float64)
    text = torch.randn(1, DIM, generator=gen, dtype=torch.float64)
    forwards = []
    for i, t in enumerate(torch.linspace(1000, 250, STEPS, dtype=torch.float64)):
        with session.step(i, "cond") if session else contextlib.nullcontext():
            cond = model(x, t[None], text)
        with session.step(i, "uncond") if session else contextlib.nullcontext():
            uncond = model(x, t[None])
        forwards += [(i, "cond"), (i, "uncond")]
        x = x - 0.1 * (uncond + 3.0 * (cond - uncond)) / (1 + x.abs().amax())
    return x, forwards


def dense_reference(q, k, v, bias_on: bool) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + bias) v in float64, with -gamma from generated frames' queries to frame 0's keys."""
    q, k, v = (t.transpose(1, 2).double() for t in (q, k, v))
    logits = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
    if bias_on:
        frame = torch.arange(TOKENS) // (ROWS * COLS)
        logits = logits - GAMMA * ((frame[:, None] >= 1) & (frame[None, :] == 0)).double()
    return (logits.softmax(-1) @ v).transpose(1, 2)


@pytest.fixture(params=["sdpa", "flash-attn"])
def backend(request):
    with flash_stand_in.installed() if request.param == "flash-attn" else contextlib.nullcontext() as flash:
        yield flash


def make_model() -> TinyVideoTransformer:
    torch.manual_seed(0)
    return TinyVideoTransformer().double()


def dymos_half_steps() -> at.Rule:
    return at.Rule(query=at.frames[1:], key=at.frames[0], transform=at.bias(-GAMMA), when=at.progress(stop=0.5),
                   branch="cond")


def test_dymos_with_progress_matches_dense_call_by_call(backend):
    model = make_model()
    with at.steer(model, dymos_half_steps(), adapter=ADAPTER, num_steps=STEPS) as session:
        _, forwards = sample(model, session)
    assert len(model.log) == 2 * len(forwards)  # two attention calls per forward
    for index, (q, k, v, out) in enumerate(model.log):
        step, branch = forwards[index // 2]
        expected = dense_reference(q, k, v, bias_on=step < STEPS // 2 and branch == "cond")
        torch.testing.assert_close(out.double(), expected, rtol=1e-7, atol=1e-7)  # the plan keeps biases in float32


def test_steering_changes_only_the_steered_calls(backend):
    model = make_model()
    plain, _ = sample(model)
    plain_log = list(model.log)
    model.log.clear()
    with at.steer(model, dymos_half_steps(), adapter=ADAPTER, num_steps=STEPS) as session:
        steered, forwards = sample(model, session)
    assert not torch.equal(plain, steered)
    first_call_of_step_2 = forwards.index((2, "cond")) * 2
    # the first steered call differs; the unconditional call of step 0 (whose input is the same) does not
    assert not torch.equal(plain_log[0][3], model.log[0][3])
    assert torch.equal(plain_log[2][3], model.log[2][3])
    assert first_call_of_step_2 > 0


def test_zero_rule_is_bit_identical(backend):
    model = make_model()
    plain, _ = sample(model)
    zero = at.Rule(query=at.frames[1:], key=at.frames[0], transform=at.bias(0.0), when=at.progress(stop=0.5),
                   branch="cond")
    with at.steer(model, zero, adapter=ADAPTER, num_steps=STEPS) as session:
        steered, _ = sample(model, session)
    if backend is None:
        assert torch.equal(plain, steered)
    else:  # a call the zero rule reaches runs attnsteer's kernel (SDPA), not flash-attn: equal to float64 rounding
        torch.testing.assert_close(steered, plain, rtol=1e-12, atol=1e-12)


def test_frame_maps_have_real_steps_and_match_dense(backend):
    model = make_model()
    with at.inspect(model, adapter=ADAPTER, num_steps=STEPS) as rec:
        sample(model, rec)
    assert rec.steps == list(range(STEPS)) and rec.branches == ["cond", "uncond"]
    q, k, v, _ = model.log[0]  # step 0, cond, first block
    logits = (q.transpose(1, 2) @ k.transpose(1, 2).transpose(-1, -2)) * q.shape[-1] ** -0.5
    weights = logits.softmax(-1).mean(1)[0]  # [N, N], mean over heads
    frame = torch.arange(TOKENS) // (ROWS * COLS)
    dense = torch.stack([torch.stack([weights[frame == i][:, frame == j].sum(-1).mean() for j in range(FRAMES)])
                         for i in range(FRAMES)])
    first_block = rec.frame_map(steps=[0], layers=[0], branch="cond")
    torch.testing.assert_close(first_block.double(), dense, rtol=0, atol=1e-6)


def test_model_and_flash_attn_are_clean_after_the_session(backend):
    model = make_model()
    flash = sys.modules.get("flash_attn")
    original = None if flash is None else flash.flash_attn_func
    with pytest.raises(RuntimeError, match="boom"), at.steer(model, dymos_half_steps(), adapter=ADAPTER,
                                                              num_steps=STEPS) as session:
        if flash is not None:
            assert flash.flash_attn_func is not original  # routed while the session runs
        with session.step(0, "cond"):
            model(torch.zeros(1, TOKENS, DIM, dtype=torch.float64), torch.tensor([999.0], dtype=torch.float64))
        raise RuntimeError("boom")
    assert not any(hasattr(m, "_diffusers_hook") or "forward" in vars(m) for m in model.modules())
    if flash is not None:
        assert flash.flash_attn_func is original
    assert registered_adapter(model) is None  # the session's adapter= was lent to nested sessions only


def test_each_new_flash_attn_module_is_routed_even_when_it_takes_a_freed_ones_id():
    """Stand-ins put in sys.modules one after another, each freed before the next (CPython often gives the new module
    the freed one's id, which once made the scan skip it): every one is routed in its session."""
    model = make_model()
    for _ in range(20):
        with flash_stand_in.installed() as flash:
            original = flash.flash_attn_func
            with at.steer(model, dymos_half_steps(), adapter=ADAPTER, num_steps=STEPS):
                assert flash.flash_attn_func is not original
            assert flash.flash_attn_func is original
        del flash
        gc.collect()


NO_TIMESTEP = at.GenericAdapter(attention=r"blocks\.\d+\.self_attn", frames=FRAMES, grid=(ROWS, COLS))  # reads "timestep"


def test_step_dependent_rule_without_step_names_step():
    model = make_model()
    with pytest.raises(at.ConfigError, match=r"\.step\("), at.steer(model, dymos_half_steps(), adapter=NO_TIMESTEP,
                                                                      num_steps=STEPS):
        model(torch.zeros(1, TOKENS, DIM, dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64))


def test_branch_rule_without_branch_names_step_and_the_branches_hook():
    model = make_model()
    rule = at.Rule(query=at.frames[1:], key=at.frames[0], transform=at.bias(-1.0), branch="cond")
    with pytest.raises(at.ConfigError, match=r"\.step\(i, branch='cond'\).*branches"), at.steer(
            model, rule, adapter=ADAPTER):
        model(torch.zeros(1, TOKENS, DIM, dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64))


def test_inspect_warns_once_when_steps_are_unknown():
    model = make_model()
    with pytest.warns(at.AttnsteerWarning, match=r"unknown step.*rec\.step"), at.inspect(model, adapter=NO_TIMESTEP):
        for _ in range(3):
            model(torch.zeros(1, TOKENS, DIM, dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64))


def test_registered_adapter_is_found_by_later_and_nested_sessions():
    model = make_model()
    rule = at.Rule(query=at.frames[1:], key=at.frames[0], transform=at.bias(-1.0))
    with at.steer(model, rule, adapter=ADAPTER), at.inspect(model) as rec:  # nested: finds the outer's adapter
        model(torch.zeros(1, TOKENS, DIM, dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64))
    assert rec.layout is not None
    with pytest.raises(at.UnsupportedModelError, match="register_adapter"):
        at.steer(model, rule)
    at.register_adapter(TinyVideoTransformer, ADAPTER)
    try:
        with at.steer(model, rule):
            model(torch.zeros(1, TOKENS, DIM, dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64))
    finally:
        at.register_adapter(TinyVideoTransformer, None)


def test_step_outside_the_session_and_bad_values_are_refused():
    model = make_model()
    session = at.steer(model, dymos_half_steps(), adapter=ADAPTER, num_steps=STEPS)
    with pytest.raises(at.ConfigError, match="inside the session"), session.client.step(0):
        pass
    with session as s:
        with pytest.raises(at.ConfigError, match="branch"), s.step(0, "perturbed"):
            pass
        with pytest.raises(at.ConfigError, match="num_steps=4"), s.step(4):
            pass
    with pytest.raises(at.ConfigError, match="frames="):
        at.GenericAdapter(attention="x")


def test_varlen_flash_calls_are_steered_as_batch_rows():
    model = make_model()

    def packed(q, k, v):
        flash = sys.modules["flash_attn"]
        b, n = q.shape[:2]
        cu = torch.arange(0, (b + 1) * n, n, dtype=torch.int32)
        out = flash.flash_attn_varlen_func(q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1), cu, cu, n, n)
        return out.unflatten(0, (b, n))

    with flash_stand_in.installed(), pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys.modules[__name__], "attention", packed)
        rule = at.Rule(query=at.frames[1:], key=at.frames[0], transform=at.bias(-GAMMA))
        with at.steer(model, rule, adapter=ADAPTER):
            model(torch.randn(2, TOKENS, DIM, dtype=torch.float64), torch.tensor([1.0, 1.0], dtype=torch.float64))
    for q, k, v, out in model.log:
        torch.testing.assert_close(out, dense_reference(q, k, v, bias_on=True), rtol=1e-7, atol=1e-7)
