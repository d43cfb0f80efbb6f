"""The tiny pipelines, one module per model family (named as its adapter in ``attnsteer.plugins`` where one
family has one adapter): each holds the family's builders (``tiny_*``) and call arguments (``*_call_kwargs``).
They import the shared helpers of :mod:`attnsteer.testing.tiny_parts` and, where a family reuses another's
parts, that family's module; :mod:`attnsteer.testing.tiny` registers them all and imports nothing back.
"""
