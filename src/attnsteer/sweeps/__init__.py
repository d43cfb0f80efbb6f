"""Sweeps: several runs at once. Batched sweeps (one item per batch row, :mod:`.batched`), sweeps shared over
torchrun processes (:mod:`.torchrun`) and the gamma sweep that the CLI, the demo and the toy evaluation run
(:mod:`.sweep`). It may import sessions, figures and everything below them."""
