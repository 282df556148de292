"""Spruce: prune PyTorch models, export their sparse weights, and deploy them on the fastest kernel."""

__version__ = "0.1.0"
