"""headwater's core: plugin manager, components, pipeline model and runtime."""
