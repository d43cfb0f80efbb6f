"""The attnsteer adapter of ExampleVideoTransformer (entry point ``attnsteer``: this module)."""

import attnsteer as at


class ExampleAdapter(at.Adapter):
    family = "example"
    model_classes = ("ExampleVideoTransformer",)
    self_attention = r"blocks\.\d+\.attn"
    text = "joint-after"
    branches = "batched-uncond-cond"

    def layout(self, model, inputs):
        """Video tokens frame-major, one per latent pixel, then the text tokens."""
        _, frames, rows, cols, _ = inputs["hidden_states"].shape
        return self.token_layout(frames, (rows, cols), text=inputs["encoder_hidden_states"].shape[1])
