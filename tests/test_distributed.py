"""Sweeps over several processes (torchrun, gloo on the CPU) gather the same results as one process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import attnsteer as at
from attnsteer.sweeps.torchrun import shard, sharded
from attnsteer.errors import ConfigError
from attnsteer.runtime.plan import rule_heads
from attnsteer.cli.models import load_model
from attnsteer.sweeps.sweep import gamma_label, steer_sweep
from attnsteer.testing.tiny import test_image

SWEEP = ["sweep", "--model", "tiny-wan", "--gamma", "1,0", "--steps", "2", "--format", "gif"]


@pytest.mark.multiprocess
def test_two_process_sweep_equals_one_process(tmp_path):
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
              "-m", "attnsteer.cli", *SWEEP, "--out", str(tmp_path)]
    done = subprocess.run(launch, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    table = (tmp_path / "metrics.txt").read_text().splitlines()
    assert [line.split()[0] for line in table[2:]] == ["1", "0"]  # one report, in the order of --gamma
    model = load_model("tiny-wan")  # the same sweep in this process (what `attnsteer sweep` runs without torchrun)
    image = test_image()
    one = steer_sweep(model.pipe, lambda: [model(image, "", seed=0, num_inference_steps=2)], [1.0, 0.0], stop=0.2)
    for gamma, result in one.items():
        two = at.Record.load(tmp_path / f"{gamma_label(gamma)}.npz")
        assert two.steps == result.record.steps and two.branches == result.record.branches == ["cond", "uncond"]
        for branch in two.branches:
            torch.testing.assert_close(two.frame_map(branch=branch), result.record.frame_map(branch=branch),
                                       atol=1e-5, rtol=0)


def test_shard_round_robin_and_single_process():
    assert shard([0, 1, 2, 3, 4], 0, 2) == [0, 2, 4]
    assert shard([0, 1, 2, 3, 4], 1, 2) == [1, 3]
    assert sharded(lambda vs: {v: v * 10 for v in vs}, [3, 1]) == {3: 30, 1: 10}  # no torchrun: all values here


@pytest.mark.multiprocess
def test_ulysses_two_processes_equal_one_process(tmp_path):
    """diffusers Ulysses (ulysses_degree=2, gloo all-to-all, CPU mesh) on tiny Wan's transformer: head-filtered
    and head-reading rules and frame maps (per head and pooled) equal the one-process run; ring is refused."""
    report = tmp_path / "ulysses.json"
    worker = Path(__file__).with_name("ulysses_worker.py")
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(worker),
              str(report)]
    done = subprocess.run(launch, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(report.read_text())
    assert found["head_slices"] == [[[0, 1, 2]], [[1, 1, 2]]]  # each rank steered its own global head
    assert found["steered_vs_plain"] > 1e-3 and found["head_maps_differ"] > 1e-3  # the rules and heads matter
    assert found["output"] <= 1e-5
    assert found["per_head_map"] <= 1e-6 and found["pooled_map"] <= 1e-6
    assert "ring attention" in found["ring_error"] and "docs/scale.md" in found["ring_error"]


def test_rule_heads_map_a_ulysses_slice_to_global_heads():
    rule = at.Rule(at.frames[1:], at.frames[0], at.bias(-1.0), heads=[1, 3])
    assert rule_heads(rule, 2, head_offset=0, total_heads=4) == [1]  # rank 0 holds heads 0, 1
    assert rule_heads(rule, 2, head_offset=2, total_heads=4) == [1]  # rank 1 holds heads 2, 3: global 3 is local 1
    assert rule_heads(at.Rule(at.video, at.video, at.bias(1.0)), 2, head_offset=2, total_heads=4) == [0, 1]
    with pytest.raises(ConfigError, match="out of range for a layer with 4 heads"):
        rule_heads(at.Rule(at.video, at.video, at.bias(1.0), heads=[4]), 2, head_offset=2, total_heads=4)


def test_sharded_without_a_process_group_refuses(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(ConfigError, match="init_process_group"):
        sharded(lambda vs: {v: v for v in vs}, [0, 1])
