"""The runtime: everything that happens while a steered or inspected model runs.

Per-forward state and its controller (:mod:`.controller`), the hooks it installs and removes (:mod:`.hooks`),
step tracking, the plan of one attention call (:mod:`.plan`), its execution on the kernels (:mod:`.execute`),
the per-call handler (:mod:`.module_call`) with its stream path, output stages, perturbed guidance, the maps
computed with a call (:mod:`.call_maps`), context-parallel head slices and the torch.compile custom op
(:mod:`.compiled_call`). It may import the adapter contract, the kernels, the rule language and the base
modules; the recordings and sessions above it reach it only through the client protocol of :mod:`.call_state`.
"""
