"""The adapter contract: what a model family must answer for attnsteer to steer it, and how adapters are found.

The :class:`~.adapter.Adapter` base class (which modules are attention, the token layout of a forward, its step
and guidance branches), the branch conventions, stream views of audio and cross-modal calls, where output rows sit,
the pluggy hookspecs and the registry that loads the built-in adapters of :mod:`attnsteer.plugins` by name. It
may import the rule language and the base modules, never the runtime above it.
"""
