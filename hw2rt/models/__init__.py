"""The four HW2 networks and their registry (the single source of each model's I/O contract)."""
from hw2rt.models.registry import MODELS, ModelSpec, TensorSpec, build_model, get_spec

__all__ = ["MODELS", "ModelSpec", "TensorSpec", "build_model", "get_spec"]
