"""Where a steered module's SDPA calls are caught (attnsteer.runtime.interception): a module whose calls all came
through diffusers' dispatcher runs its later forwards without the whole-forward TorchFunctionMode, with outputs
bit for bit those of whole-forward interception; a new processor is caught whole again, and a processor that stops
calling the dispatcher raises instead of running a call unsteered."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import attnsteer as at
from attnsteer.runtime import hooks as runtime_hooks
from attnsteer.runtime.controller import CONTROLLER_ATTRIBUTE
from attnsteer.testing.tiny import tiny_wan, wan_call_kwargs

RULE = at.Rule(at.frames[1:], at.frames[0], at.bias(-1.5))


class TwoCalls:
    """A self-attention processor for WanAttention making two attention calls per forward (their mean), through
    diffusers' dispatcher, or the second straight to SDPA once ``direct`` is set."""

    def __init__(self) -> None:
        self.direct = False

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        from diffusers.models import attention_dispatch  # looked up per call: a session routes this name

        q, k, v = (norm(proj(hidden_states)).unflatten(2, (attn.heads, -1)) for proj, norm in
                   ((attn.to_q, attn.norm_q), (attn.to_k, attn.norm_k), (attn.to_v, torch.nn.Identity())))
        first = attention_dispatch.dispatch_attention_fn(q, k, v)
        if self.direct:
            second = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v))).transpose(1, 2)
        else:
            second = attention_dispatch.dispatch_attention_fn(q, k, v)
        return attn.to_out[0](((first + second) / 2).flatten(2, 3))


@pytest.fixture
def pipe():
    return tiny_wan()


def run(pipe, image, steps=2):
    kwargs = wan_call_kwargs(num_inference_steps=steps, output_type="latent")
    return pipe(image=image, generator=torch.Generator().manual_seed(0), **kwargs).frames


def controller(pipe):
    return pipe.transformer.__dict__[CONTROLLER_ATTRIBUTE]


def count_intercepted(monkeypatch) -> list[int]:
    """How many torch calls the SDPAInterceptor sees, in a one-element list."""
    seen = [0]
    original = runtime_hooks.SDPAInterceptor.__torch_function__

    def counting(self, func, types, args=(), kwargs=None):
        seen[0] += 1
        return original(self, func, types, args, kwargs)

    monkeypatch.setattr(runtime_hooks.SDPAInterceptor, "__torch_function__", counting)
    return seen


def test_later_forwards_are_caught_at_the_dispatcher_with_the_same_outputs(pipe, image, monkeypatch):
    seen = count_intercepted(monkeypatch)
    with at.steer(pipe, RULE):
        learned = run(pipe, image)
        table = dict(controller(pipe).dispatched_only)
    intercepted_learning = seen[0]

    def forget(*_args, **_kwargs):  # every forward caught whole: the reference
        controller(pipe).dispatched_only.clear()

    handle = pipe.transformer.register_forward_pre_hook(forget)
    try:
        seen[0] = 0
        with at.steer(pipe, RULE):
            whole = run(pipe, image)
    finally:
        handle.remove()
    assert sorted(table) == [("self", 0), ("self", 1)]  # both self-attention modules of the tiny Wan
    assert all(calls == 1 for _, calls in table.values())
    assert torch.equal(learned, whole)
    assert intercepted_learning < seen[0] / 2  # later forwards saw only their dispatcher calls' torch calls
    with at.steer(pipe, at.Rule(at.frames[1:], at.frames[0], at.bias(0.0))):
        assert not torch.equal(run(pipe, image), learned)  # the rule acts


def test_a_new_processor_is_caught_whole_again(pipe, image):
    attn = pipe.transformer.blocks[0].attn1
    with at.steer(pipe, RULE):
        run(pipe, image, steps=1)
        assert ("self", 0) in controller(pipe).dispatched_only
        processor = TwoCalls()
        processor.direct = True  # its second call goes straight to SDPA: it must still be steered
        attn.processor = processor
        swapped = run(pipe, image)
        assert ("self", 0) not in controller(pipe).dispatched_only
    with at.steer(pipe, RULE):  # the same processor from the first forward on
        assert torch.equal(run(pipe, image), swapped)


def test_a_processor_that_stops_calling_the_dispatcher_raises(pipe, image):
    processor = TwoCalls()
    pipe.transformer.blocks[0].attn1.processor = processor
    with at.steer(pipe, RULE):
        run(pipe, image, steps=1)
        assert controller(pipe).dispatched_only[("self", 0)] == (processor, 2)
        processor.direct = True
        with pytest.raises(at.SteeringError, match=r"blocks\.0\.attn1.*answered 1 attention calls through diffusers' "
                                                   r"dispatch_attention_fn where its earlier forwards answered 2"):
            run(pipe, image, steps=1)
        assert ("self", 0) not in controller(pipe).dispatched_only
        run(pipe, image, steps=1)  # caught whole again: both calls steered


def test_a_module_that_also_calls_sdpa_directly_stays_caught_whole(pipe, image):
    processor = TwoCalls()
    processor.direct = True
    pipe.transformer.blocks[0].attn1.processor = processor
    with at.steer(pipe, RULE) as session:
        run(pipe, image)
        assert ("self", 0) not in controller(pipe).dispatched_only
        assert ("self", 1) in controller(pipe).dispatched_only
    assert session.calls > 0
