"""Built-in model adapters, found through a pluggy plugin manager."""
