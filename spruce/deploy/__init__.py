"""The deploy runtime: plan a kernel per layer, swap modules, verify against dense, measure."""
from spruce.deploy.artifact import load, save
from spruce.deploy.modules import SparseConv2d, SparseLinear
from spruce.deploy.plan import DENSE, MODES, OBJECTIVES, Plan, plan
from spruce.deploy.runtime import (VerificationError, convert_, measure, reference_outputs, verify, verify_against,
                                    weight_bytes_by_format)

__all__ = ["DENSE", "MODES", "OBJECTIVES", "Plan", "SparseConv2d", "SparseLinear", "VerificationError", "convert_",
           "load", "measure", "plan", "reference_outputs", "save", "verify", "verify_against",
           "weight_bytes_by_format"]
