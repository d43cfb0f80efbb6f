"""Sana-Video and SANA-WM: refused, their self-attention is linear attention (no softmax to steer exactly).

- Sana-Video (``SanaVideoTransformer3DModel``; ``SanaVideoPipeline``, ``SanaImageToVideoPipeline``):
  every block's self-attention ``transformer_blocks.i.attn1`` runs ``SanaLinearAttnProcessor3_0``,
  ReLU linear attention, out = (V relu(K)^T) relu(Q) / (relu(K) sums . relu(Q)), computed without
  forming the [queries, keys] score matrix: there are no logits to bias and no attention
  probabilities to read frame maps from. The only softmax attention is the text cross-attention
  ``transformer_blocks.i.attn2`` (``SanaAttnProcessor2_0``, queries: video tokens, keys: text),
  which sees no frame-to-frame interaction.
- SANA-WM (``SanaWMTransformer3DModel``; ``SanaWMPipeline``): its camera-conditioned self-attention
  is a bidirectional gated-delta-net linear recurrence over time (``BidirectionalGDNUCPESinglePathLiteLA``)
  in every block except each ``softmax_every_n``-th one (blocks 3, 7, 11, ... by default), which runs
  softmax attention (``_SoftmaxUCPESinglePathLiteLA``: full SDPA over the tokens plus a camera
  branch). Steering only those blocks would steer the model partly, and its frame maps would miss
  three of four layers; it is refused until the softmax blocks get an adapter of their own.
"""

from __future__ import annotations

from ..contract.adapter import Adapter


class SanaVideoAdapter(Adapter):
    family = "sana-video"
    model_classes = ("SanaVideoTransformer3DModel",)
    self_attention = r"transformer_blocks\.\d+\.attn1"
    cross_attention = r"transformer_blocks\.\d+\.attn2"
    text = "cross"
    refusal = ("its self-attention (transformer_blocks.i.attn1, SanaLinearAttnProcessor3_0) is ReLU linear attention: "
               "no softmax logits to bias and no attention probabilities for frame maps; only the text "
               "cross-attention attn2 is softmax attention")
    tested = "a session on a tiny SanaVideoTransformer3DModel raises naming the reason"


class SanaWMAdapter(Adapter):
    family = "sana-wm"
    model_classes = ("SanaWMTransformer3DModel",)
    self_attention = r"blocks\.\d+\.attn"
    text = "cross"
    refusal = ("its self-attention is gated-delta-net linear attention (BidirectionalGDNUCPESinglePathLiteLA) in every "
               "block but each softmax_every_n-th one (softmax attention, blocks 3, 7, ... by default): steering only "
               "those would be partial")
    tested = "a session on a SanaWMTransformer3DModel raises naming the reason"
