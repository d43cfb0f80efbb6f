"""Video families whose self-attention runs only on diffusers' flex backend (a ``BlockMask``): refused.

attnsteer steers and records attention at ``F.scaled_dot_product_attention``; these models never call
it for their self-attention, and their masks are block-sparse patterns built per call:

- AnyFlow FAR (``AnyFlowFARTransformer3DModel``, ``AnyFlowFARPipeline``): frame-autoregressive causal
  generation, ``AnyFlowCausalAttnProcessor`` refuses any backend but ``flex`` (a causal ``BlockMask``,
  with a KV cache across chunks). The bidirectional ``AnyFlowTransformer3DModel`` is not refused here.
- Kandinsky 6 super-resolution (``Kandinsky6SRTransformer3DModel``, ``Kandinsky6SRPipeline``): NABLA
  sparse self-attention, a ``BlockMask`` chosen from the attention of pooled blocks (threshold) and a
  sliding-tile prior, always dispatched to ``flex``.
"""

from __future__ import annotations

from ..contract.adapter import Adapter


class AnyFlowFARAdapter(Adapter):
    family = "anyflow-far"
    model_classes = ("AnyFlowFARTransformer3DModel",)
    refusal = ("its causal self-attention (AnyFlowCausalAttnProcessor) runs only on the flex backend with a block mask "
               "and a KV cache, never through F.scaled_dot_product_attention")
    tested = "a session on a model of this class raises naming the reason"


class Kandinsky6SRAdapter(Adapter):
    family = "kandinsky6-sr"
    model_classes = ("Kandinsky6SRTransformer3DModel",)
    refusal = ("its NABLA sparse self-attention is a flex BlockMask chosen per call from pooled attention, dispatched "
               "only to the flex backend, never through F.scaled_dot_product_attention")
    tested = "a session on a model of this class raises naming the reason"
