"""snnlm: GPT-2 in NumPy, converted into a spiking neural network (NeurTransformer).

The notebook API, imported lazily so that `python -m snnlm.download` does not pay for Numba:

    from snnlm import load_gpt2, load_tokenizer, convert, generate, evaluate
"""
from __future__ import annotations

import importlib

_API = {
    "load_gpt2": "snnlm.weights",
    "load_tokenizer": "snnlm.tokenizer",
    "tokenizer_for_weights": "snnlm.tokenizer",
    "convert": "snnlm.snn",
    "load_snn": "snnlm.snn",
    "save_snn": "snnlm.snn",
    "generate": "snnlm.generate",
    "evaluate": "snnlm.evaluate",
}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'snnlm' has no attribute {name!r}")
