"""Kernels that compute ``Y = W @ X`` for a (sparse) weight ``W``; see ``registry`` for the contract."""
from spruce.kernels.registry import (ACTIVATIONS, Kernel, apply_activation, availability, get, kernels,
                                     names, register, unregister)

__all__ = ["ACTIVATIONS", "Kernel", "apply_activation", "availability", "get", "kernels", "names",
           "register", "unregister"]
