"""Engines: one small interface (base.Engine) over torch, ONNX Runtime and TensorRT.

`open_engine` (engines/open.py) is the one way in; see there for the backends and what `auto` picks.
"""
from hw2rt.engines.base import Engine, check_feeds, output_shapes
from hw2rt.engines.cache import CacheEntry
from hw2rt.engines.graphs import GraphedEngine
from hw2rt.engines.open import open_engine, pick_backend, resolve_device
from hw2rt.engines.ort import OrtEngine
from hw2rt.engines.torch import TorchEngine
from hw2rt.engines.weights import Weights, cached_onnx, resolve_source

__all__ = ["CacheEntry", "Engine", "GraphedEngine", "OrtEngine", "TorchEngine", "Weights", "cached_onnx",
           "check_feeds", "open_engine", "output_shapes", "pick_backend", "resolve_device", "resolve_source"]
