"""The shipped toy image-to-video model: loads, generates, follows its prompt, and reacts to DyMoS."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import attnsteer as at
from attnsteer.toy import ToyI2VPipeline, sample_clip
from attnsteer.toy.evaluate import direction_correct, sprite_velocity
from attnsteer.toy.world import FRAMES, SIZE

PROMPTS = ("right fast", "left fast", "down fast", "up fast")
SEEDS = (11, 22, 33, 44)
STEPS = 12


@pytest.fixture(scope="module")
def pipe():
    return ToyI2VPipeline.from_shipped()


def generate(pipe, clip, seed, **kwargs):
    return pipe(image=clip.video[0], prompt=clip.prompt, num_inference_steps=STEPS,
                generator=torch.Generator().manual_seed(seed), **kwargs).frames[0]


def test_world_is_deterministic_and_moves_as_told():
    a, b = sample_clip(5, "left slow"), sample_clip(5, "left slow")
    assert np.array_equal(a.video, b.video) and a.video.shape == (FRAMES, SIZE, SIZE, 3)
    assert np.allclose(np.diff(a.positions, axis=0), [-1.0, 0.0])
    assert sprite_velocity(sample_clip(6, "right fast").video)[0] > 1.0


def test_unknown_prompt_word_names_the_vocabulary(pipe):
    with pytest.raises(at.ConfigError, match=r"direction in \('left', 'right', 'up', 'down', 'still'\)"):
        pipe(image=None, prompt="sideways fast", num_inference_steps=2)


def test_shipped_weights_generate_video_and_t2v(pipe):
    clip = sample_clip(1, "right fast")
    video = generate(pipe, clip, 0)
    assert video.shape == (FRAMES, SIZE, SIZE, 3) and np.isfinite(video).all()
    t2v = pipe(image=None, prompt="right fast", num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0))
    assert t2v.frames[0].shape == video.shape


@pytest.mark.xfail(strict=True, reason="the shipped toy model (2400 CPU steps) does not follow its motion prompt yet; "
                   "see docs/toy.md and issue 5")
def test_generated_motion_follows_the_prompt_better_than_chance(pipe):
    """Chance of the right direction among 4 is 1/4; ask for more than half right over 8 videos."""
    correct = [direction_correct(generate(pipe, sample_clip(seed, prompt), seed), prompt)
               for seed in SEEDS[:2] for prompt in PROMPTS]
    assert np.mean(correct) > 0.5, correct


def test_reference_mass_falls_as_gamma_grows(pipe):
    clip = sample_clip(7, "right fast")
    masses = []
    for gamma in (-1.0, 0.0, 1.0):
        with at.inspect(pipe) as rec, at.steer(pipe, at.recipes.dymos(gamma=gamma, stop=0.3)):
            generate(pipe, clip, 0)
        masses.append(float(rec.reference_mass(by="step", steps=[0, 1, 2])[1].mean()))
    assert masses[0] > masses[1] > masses[2], masses


@pytest.mark.slow
def test_training_script_runs(tmp_path):
    from attnsteer.toy.model import load_modules
    from attnsteer.toy.train import main

    out = tmp_path / "toy.safetensors"
    main(["--steps", "3", "--batch", "2", "--out", str(out)])
    transformer, prompts = load_modules(out)
    assert transformer.config.num_layers == 4
