"""Backends: the parts a deployment keeps its shared state in."""
