"""Model adapters: one declarative :class:`~attnsteer.contract.adapter.Adapter` per family, one module per
family here, plus the family table (:mod:`.table`). :mod:`attnsteer.contract.registry` loads them by name and
finds them (and third-party ones) through a pluggy plugin manager. Adapters may import the adapter contract, the
rule language and the base modules only."""
