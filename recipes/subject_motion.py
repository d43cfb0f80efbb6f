"""Subject motion: DyMoS restricted to a mask drawn from attention (inspect, then steer).

A first run under ``at.inspect`` keeps a word map (or a region map); ``at.masks.from_attention``
turns it into a per-frame token mask (the subject). This recipe then adds DyMoS's bias only on the
generated-frame queries inside the mask: ``-gamma`` on their logits to the reference frame's keys
(> 0 more motion for the subject, < 0 less), and optionally ``-background`` on the other
generated-frame queries (< 0 holds the background closer to the reference image, i.e. stiller).
Same schedule and branch as ``at.recipes.dymos`` (the authors' first 20 % of the steps, cond branch).
Not a published method: DyMoS's rule with a query mask, exact on the masked tokens.
"""

from __future__ import annotations

import attnsteer as at
from attnsteer.errors import ConfigError, RecordingError
from attnsteer.language.recipe import recipe
from attnsteer.validation import integer, real_number


def _mask(path: str, word: str | None, label: str | None, threshold: float) -> at.Selector:
    """The mask of a mask file (``at.masks.save``), or drawn from a saved ``maps.npz`` by ``word`` / ``label``."""
    if word is None and label is None:
        try:
            return at.masks.load(path)
        except RecordingError as exc:
            raise ConfigError(f"subject_motion(mask={path!r}) is not a mask file ({exc}); for a maps.npz written by "
                              "`attnsteer inspect --word W` also give subject_word=W (or subject_map=LABEL)") from exc
    return at.masks.from_attention(path, word=word, map=label, threshold=threshold)


@recipe(
    help={"mask": "path of a mask (at.masks.save) or of a maps.npz (attnsteer inspect --word W --out DIR)",
          "subject_word": "with a maps.npz: the prompt word whose map is the subject",
          "subject_map": "with a maps.npz: the label of another map (a region map, 'received from video')",
          "threshold": "with a maps.npz: tokens at this fraction of their frame's peak or above, in (0, 1]",
          "gamma": "logit bias -gamma from the subject's generated-frame queries to the reference: > 0 more motion",
          "background": "the same for the other generated-frame tokens: < 0 holds the background still, 0 no rule",
          "stop": "fraction of the steps modulated (0.2 = DyMoS's 8 of 40)",
          "until_step": "modulate steps [0, until_step) instead of a fraction",
          "branch": "guidance branch modulated"},
    choices={"branch": ("cond", "uncond", "all")},
)
def subject_motion(
    mask: str,
    subject_word: str | None = None,
    subject_map: str | None = None,
    threshold: float = 0.5,
    gamma: float = 0.6,
    background: float = 0.0,
    stop: float = 0.2,
    until_step: int | None = None,
    branch: str = "cond",
) -> at.Recipe:
    """Motion for the subject only: DyMoS's bias on the generated-frame tokens of a mask drawn from attention.

    ``mask`` is a mask file, or a ``maps.npz`` with ``subject_word`` / ``subject_map`` and ``threshold``;
    ``background`` biases the rest of the generated frames (< 0: keep the background still).
    """
    gamma = real_number(gamma, "subject_motion(gamma=...)")
    background = real_number(background, "subject_motion(background=...)")
    threshold = at.masks.threshold_value(threshold, "subject_motion(threshold=...)")
    if until_step is not None:
        when = at.steps(stop=integer(until_step, "subject_motion(until_step=...)", minimum=1))
    else:
        stop = real_number(stop, "subject_motion(stop=...)")
        if not 0 < stop <= 1:
            raise ConfigError(f"subject_motion(stop=...) must be a fraction of the steps in (0, 1], got {stop!r}")
        when = at.progress(stop=stop)
    subject = _mask(mask, subject_word, subject_map, threshold)
    rules = [at.Rule(at.frames.generated & subject, at.frames.reference, at.bias(0.0 - gamma), when=when,
                     branch=branch)]
    if background != 0:
        rules.append(at.Rule(at.frames.generated & ~subject, at.frames.reference, at.bias(0.0 - background),
                             when=when, branch=branch))
    params: dict[str, object] = {"mask": mask}
    params.update({k: v for k, v in (("subject_word", subject_word), ("subject_map", subject_map)) if v is not None})
    if subject_word is not None or subject_map is not None:
        params["threshold"] = threshold
    params.update(gamma=gamma, background=background)
    params.update({"until_step": until_step} if until_step is not None else {"stop": stop})
    if branch != "cond":
        params["branch"] = branch
    return at.Recipe("subject_motion", rules, params)
