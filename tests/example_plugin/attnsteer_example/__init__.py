"""An example attnsteer plugin: an adapter for a small video model, and a recipe."""
