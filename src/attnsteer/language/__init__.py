"""The rule language: what an intervention says, as frozen, validated data with no torch state of its own.

Token layouts (:mod:`.layout`) and the selectors over them (frames, text, words, regions, pairs), schedules over
denoising steps, logit and output transforms, readouts, perturbed-guidance specs, :class:`~.rules.Rule`,
:class:`~.rules.Recipe` and the ``@recipe`` registry. It may import only :mod:`attnsteer.errors` and
:mod:`attnsteer.validation`; everything else builds on it.
"""
