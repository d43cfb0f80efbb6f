"""Model adapters: one declarative :class:`~attnsteer.plugins.base.Adapter` per family, one module per
family here; :mod:`.manager` finds them (and third-party ones) through a pluggy plugin manager."""
