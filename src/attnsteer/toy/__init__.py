"""A procedural video world and a small trained image-to-video model for demos and tests."""
