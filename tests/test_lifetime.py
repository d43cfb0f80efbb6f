"""Lifetime and coexistence: sessions free the model, copies run unsteered, sessions are entered once."""

from __future__ import annotations

import copy
import gc
import weakref

import numpy as np
import pytest
import torch

import attnsteer as at
from dense_reference import hook_state

pytestmark = pytest.mark.usefixtures("one_thread")

RULE = at.Rule(at.frames[1:], at.frames[0], at.bias(-3.0))


def fresh_wan():
    from attnsteer.testing.tiny import tiny_wan

    return tiny_wan()


def run(pipe, image, **overrides):
    from attnsteer.testing.tiny import wan_call_kwargs

    kwargs = wan_call_kwargs(**{"num_inference_steps": 2, "output_type": "latent", **overrides})
    return np.asarray(pipe(image=image, generator=torch.Generator().manual_seed(0), **kwargs).frames[0])


def test_a_pipeline_left_by_its_sessions_can_be_freed(image):
    pipe = fresh_wan()
    with at.steer(pipe, RULE), at.inspect(pipe):
        run(pipe, image)
    ref = weakref.ref(pipe.transformer)
    del pipe
    gc.collect()
    assert ref() is None


def test_a_deep_copy_made_inside_a_session_runs_unsteered(wan_pipe, image):
    vanilla = run(wan_pipe, image)
    with at.steer(wan_pipe, RULE):
        steered = run(wan_pipe, image)
        clone = copy.deepcopy(wan_pipe)
        np.testing.assert_array_equal(run(clone, image), vanilla)  # the copy is never steered
    assert not np.allclose(steered, vanilla)
    np.testing.assert_array_equal(run(clone, image), vanilla)
    assert hook_state(clone.transformer) == hook_state(wan_pipe.transformer)  # no hook left on the copy either


def test_a_deep_copy_made_inside_a_session_can_be_steered_before_its_first_forward(wan_pipe, image):
    vanilla = run(wan_pipe, image)
    with at.steer(wan_pipe, RULE):
        steered = run(wan_pipe, image)
        clone = copy.deepcopy(wan_pipe)
        before = hook_state(clone.transformer)
        with at.steer(clone, RULE):  # its copied hooks are taken off first, then the copy's own session hooks it
            np.testing.assert_array_equal(run(clone, image), steered)
        np.testing.assert_array_equal(run(clone, image), vanilla)
    assert hook_state(clone.transformer) == hook_state(wan_pipe.transformer) != before


def test_a_session_is_entered_once(wan_pipe, image):
    session = at.steer(wan_pipe, RULE)
    with session:
        with pytest.raises(at.ConfigError, match="already active"):
            with session:
                pass
        steered = run(wan_pipe, image)  # the outer session still steers
    with at.steer(wan_pipe, RULE):
        np.testing.assert_array_equal(run(wan_pipe, image), steered)


@pytest.mark.parametrize("rule, reason", [
    (at.Rule(at.frames[1:], at.frames[0], at.bias(-1.0), layers=r"blocks\.9\.attn1"), "matches none of the 2"),
    (at.Rule(at.frames[1:], at.frames[0], at.bias(-1.0), when=at.steps(start=50)), "schedule .* was never on"),
])
def test_rules_that_never_apply_are_reported_and_strict_raises(wan_pipe, image, rule, reason):
    before = hook_state(wan_pipe.transformer)
    with pytest.warns(at.AttnsteerWarning, match=reason):
        with at.steer(wan_pipe, rule):
            run(wan_pipe, image)
    with pytest.raises(at.SteeringError, match=reason):
        with at.steer(wan_pipe, rule, strict=True):
            run(wan_pipe, image)
    assert hook_state(wan_pipe.transformer) == before  # the strict error leaves the model clean


def test_a_rule_that_applies_is_not_reported(wan_pipe, image, recwarn):
    with at.steer(wan_pipe, RULE, strict=True):
        run(wan_pipe, image)
    assert not [w for w in recwarn if issubclass(w.category, at.AttnsteerWarning)]


def test_a_diffusers_hook_that_skips_attention_is_named_as_the_cause(wan_pipe, image):
    from diffusers.hooks import HookRegistry, ModelHook

    class ReturnInput(ModelHook):  # like a cache or layer-skip hook: no attention computed
        def new_forward(self, module, hidden_states, *args, **kwargs):
            return hidden_states

    attn = wan_pipe.transformer.blocks[0].attn1
    HookRegistry.check_if_exists_or_initialize(attn).register_hook(ReturnInput(), "my_cache")
    try:
        with pytest.raises(at.SteeringError, match=r"diffusers hooks \['my_cache'\]"):
            with at.steer(wan_pipe, RULE):
                run(wan_pipe, image)
    finally:
        attn._diffusers_hook.remove_hook("my_cache")
        del attn._diffusers_hook  # leave the shared tiny pipeline as the test found it
        attn.__dict__.pop("forward", None)


def test_second_order_schedulers_count_the_schedulers_steps(image):
    from diffusers import FlowMatchHeunDiscreteScheduler

    pipe = fresh_wan()
    pipe.scheduler = FlowMatchHeunDiscreteScheduler(shift=3.0)  # order 2: two model calls per step
    with at.steer(pipe, at.Rule(at.frames[1:], at.frames[0], at.bias(-1.0), when=at.steps(stop=1))) as first:
        run(pipe, image, num_inference_steps=3)
    assert first.summary()["rules"][0]["steps"] == [0]
    assert first.calls == 2 * 2 * 2  # step 0: 2 model calls x 2 branches x 2 layers
    with at.steer(pipe, at.Rule(at.frames[1:], at.frames[0], at.bias(-1.0), when=at.progress(stop=1.0))) as every:
        run(pipe, image, num_inference_steps=3)
    assert every.summary()["rules"][0]["steps"] == [0, 1, 2]  # 3 steps, not the 5 timesteps


def test_a_transformer_shared_by_two_pipelines_takes_its_step_from_the_running_one(image):
    from diffusers import UniPCMultistepScheduler, WanImageToVideoPipeline

    first = fresh_wan()
    second = WanImageToVideoPipeline(**{**first.components, "scheduler": UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)})
    second.set_progress_bar_config(disable=True)
    run(second, image, num_inference_steps=2)  # its scheduler now holds 2 other timesteps
    rule = at.Rule(at.frames[1:], at.frames[0], at.bias(-1.0), when=at.steps(start=2))
    with at.steer(first, rule) as steering, at.steer(second, at.Rule(at.frames[0], at.frames[1], at.bias(0.5))):
        run(first, image, num_inference_steps=4)
    assert steering.summary()["rules"][0]["steps"] == [2, 3]  # first's own steps, not second's scheduler


def test_an_inspection_of_modules_without_sdpa_raises_naming_the_cause(wan_pipe, image):
    from attnsteer.plugins.generic import GenericAdapter

    adapter = GenericAdapter(at.TokenLayout(num_frames=3, tokens_per_frame=16), attention=r"blocks\.0\.ffn")  # no SDPA
    with pytest.raises(at.SteeringError, match="computed attention without calling"):
        with at.inspect(wan_pipe.transformer, adapter=adapter, strict=True):
            run(wan_pipe, image)


def test_a_recording_left_empty_by_a_run_is_reported():
    from types import SimpleNamespace

    from attnsteer.runtime import audit

    ran = SimpleNamespace(seen_steps={object()})
    empty, filled = at.Record(), at.Record()
    filled.layout = at.TokenLayout(num_frames=1, tokens_per_frame=1)
    assert audit.nothing_recorded(empty, [ran]) and not audit.nothing_recorded(filled, [ran])
    assert not audit.nothing_recorded(empty, [SimpleNamespace(seen_steps=set())])  # nothing ran: nothing to say
    with pytest.raises(at.SteeringError, match="no self-attention call was recorded"):
        audit.report(audit.nothing_recorded(empty, [ran]), strict=True, when="is empty")


def test_pyramid_attention_broadcast_keeps_working_in_any_order_and_conflicts_are_named(image):
    from diffusers import PyramidAttentionBroadcastConfig, apply_pyramid_attention_broadcast

    pipe = fresh_wan()

    def pab_on():
        apply_pyramid_attention_broadcast(pipe.transformer, PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=2, spatial_attention_timestep_skip_range=(-1, 1001),
            current_timestep_callback=lambda: pipe.current_timestep))

    def pab_off():
        pipe.transformer._diffusers_hook.remove_hook("pyramid_attention_broadcast", recurse=True)

    def fresh_run():
        pipe.transformer._diffusers_hook.reset_stateful_hooks()  # PAB's cache, left mid-run by an error
        return run(pipe, image, num_inference_steps=4)

    vanilla = run(pipe, image, num_inference_steps=4)
    pab_on()
    pab_only = fresh_run()
    pab_off()
    clean = hook_state(pipe.transformer)  # what diffusers itself leaves after PAB on and off
    pab_on()
    assert not np.allclose(pab_only, vanilla)
    with pytest.raises(at.SteeringError, match=r"pyramid_attention_broadcast.*both cannot hold|returned first"):
        with at.steer(pipe, RULE):  # PAB enabled before the session: it returns cached attention first
            fresh_run()
    np.testing.assert_array_equal(fresh_run(), pab_only)
    pab_off()
    with pytest.raises(at.SteeringError, match=r"\['pyramid_attention_broadcast'\] were enabled .* after"):
        with at.steer(pipe, RULE):  # PAB enabled inside the session, outside attnsteer's hooks
            pab_on()
            fresh_run()
    np.testing.assert_array_equal(fresh_run(), pab_only)  # PAB still works after the session left
    pab_off()
    np.testing.assert_array_equal(fresh_run(), vanilla)
    assert hook_state(pipe.transformer) == clean



def transformer_inputs() -> dict:
    gen = torch.Generator().manual_seed(1)
    return dict(hidden_states=torch.randn(1, 36, 3, 8, 8, generator=gen),
                encoder_hidden_states=torch.randn(1, 16, 32, generator=gen),
                encoder_hidden_states_image=torch.randn(1, 5, 16, generator=gen), return_dict=False)


def steer_transformer_with(make_transform) -> tuple[weakref.ref, weakref.ref, list]:
    """A session on a fresh tiny Wan transformer whose one rule's transform (``make_transform(model, calls)`` ->
    (transform, its function)) holds a reference to the model; returns weak references to the model and to that
    function, and the calls the function saw, after the session ended and every other reference was dropped."""
    model = fresh_wan().transformer.eval()
    calls: list[int] = []
    transform, fn = make_transform(model, calls)
    refs = weakref.ref(model), weakref.ref(fn)
    with torch.no_grad(), at.steer(model, at.Rule(at.frames[1:], at.frames[0], transform), num_steps=2):
        for t in (999.0, 500.0):
            model(timestep=torch.tensor([t]), **transformer_inputs())
    del model, transform, fn
    gc.collect()
    return *refs, calls


def test_session_keeps_no_reference_to_score_mod_after_exit():
    def make(model, calls):
        def lower(s, b, h, q_idx, kv_idx, owner=model):  # the closure holds the model
            calls.append(1)
            return s - 1.0
        return at.score_mod(lower), lower

    model, fn, calls = steer_transformer_with(make)
    assert calls  # the score path ran it
    assert fn() is None and model() is None


def test_session_keeps_no_reference_to_query_bias_after_exit():
    def make(model, calls):
        def values(layout, owner=model):  # the closure holds the model
            calls.append(1)
            return torch.full((layout.seq_len,), -1.0)
        return at.query_bias(values), values

    model, fn, calls = steer_transformer_with(make)
    assert calls  # the plan resolved it
    assert fn() is None and model() is None


def test_controller_is_found_through_the_hook_registry(wan_pipe, image):
    from attnsteer.runtime.compiled_call import HOOK_NAME, hook_on
    from attnsteer.runtime.controller import controller_for
    from attnsteer.runtime.hooks import CONTROLLER_ATTRIBUTE

    model = wan_pipe.transformer
    before = hook_state(model)
    with at.steer(wan_pipe, RULE), at.inspect(wan_pipe):
        controller = model.__dict__[CONTROLLER_ATTRIBUTE]
        assert len(controller.clients) == 2  # both sessions share it
        assert controller_for(model, controller.component, controller.adapter) is controller
        hooked = [m for m in model.modules() if hook_on(m) is not None]
        assert len(hooked) == len(controller.layers) == 4  # tiny Wan: two blocks, self- and cross-attention
        assert all(m._diffusers_hook.get_hook(HOOK_NAME).controller is controller for m in hooked)
        run(wan_pipe, image)
    assert CONTROLLER_ATTRIBUTE not in model.__dict__
    assert hook_state(model) == before


def test_runtime_keeps_no_module_level_tables():
    """State lives on the hooks and controllers; the one process-wide object is compiled_call.ROUTING, and the one
    process-wide table the names of the backends already warned about (once per process, as Python's own warning
    registry does; it holds strings, nothing a session was given)."""
    import ast
    import importlib
    import pkgutil

    import attnsteer.runtime as runtime
    from attnsteer.runtime import backend_calls

    tables = weakref.WeakKeyDictionary, weakref.WeakValueDictionary, weakref.WeakSet, dict, list, set
    found = []
    for info in pkgutil.iter_modules(runtime.__path__):
        module = importlib.import_module(f"{runtime.__name__}.{info.name}")
        tree = ast.parse(open(module.__file__).read())
        names = [t.id for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))
                 for t in (node.targets if isinstance(node, ast.Assign) else [node.target]) if isinstance(t, ast.Name)]
        found += [f"{info.name}.{n}" for n in names if n != "__all__" and isinstance(getattr(module, n), tables)]
    assert found == ["backend_calls._WARNED"]
    assert all(isinstance(name, str) for name in backend_calls._WARNED)
