"""Support for tests and benchmarks, shipped so that users and plugin authors can run the same checks.

- :mod:`attnsteer.testing.tiny`: tiny random-weight pipelines built from configs (offline, seconds on
  a CPU), their call arguments, and a fixed test image (the CLI's ``--model tiny-*`` and default image);
  the registry of :mod:`attnsteer.testing.families` (one module per model family) and of
  :mod:`attnsteer.testing.tiny_parts` (the helpers the families share; it imports no family);
- :mod:`attnsteer.testing.oracle`: the dense float64 reference of the grouped attention kernel;
- :mod:`attnsteer.testing.profiling`: peak-memory measurement of one call;
- :mod:`attnsteer.testing.tolerance`: :func:`tolerance` and :func:`assert_close`, tolerances derived from a
  dtype's epsilon and the values' magnitude, so exactness checks hold on any CPU (the derivation is there).

Nothing here is imported by ``import attnsteer``. Functions whose names start with ``test_`` carry
``__test__ = False`` so that pytest does not collect them when a test module imports them.
"""

from attnsteer.testing.tolerance import assert_close, tolerance

__all__ = ["assert_close", "tolerance"]
