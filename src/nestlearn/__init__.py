"""nestlearn: Nested Learning (Behrouz et al., 2025) in PyTorch.

A model is a set of nested optimization problems, each an associative memory with its own context
flow and update frequency. Subpackages, each importing only the ones before it:

- ``nestlearn.memory``: associative-memory update rules as pure tensor functions.
- ``nestlearn.optim``: deep optimizers as ``torch.optim.Optimizer`` classes.
- ``nestlearn.layers``: modules with parameters (memories, CMS, attention), no ``transformers``.
- ``nestlearn.models``: Hugging Face-compatible causal language models.
- ``nestlearn.data``, ``nestlearn.train``, ``nestlearn.eval``: corpora, the training loop,
  evaluation.
"""

__version__ = "0.1.0"

# Model classes are imported on first access (PEP 562), so `import nestlearn` stays free of the
# `transformers` import and of the Auto-class registration that `nestlearn.models` performs.
_LAZY_EXPORTS = {
    "HopeConfig": "nestlearn.models",
    "HopeForCausalLM": "nestlearn.models",
    "HopeModel": "nestlearn.models",
    "TitansConfig": "nestlearn.models",
    "TitansForCausalLM": "nestlearn.models",
    "TitansModel": "nestlearn.models",
    "LayerStateCache": "nestlearn.models",
    "TransformerConfig": "nestlearn.models",
    "TransformerForCausalLM": "nestlearn.models",
    "TransformerModel": "nestlearn.models",
}

__all__ = [
    "LayerStateCache",
    "TransformerConfig",
    "TransformerForCausalLM",
    "TransformerModel",
    "__version__",
]


def __getattr__(name: str):
    if name in _LAZY_EXPORTS:
        import importlib

        return getattr(importlib.import_module(_LAZY_EXPORTS[name]), name)
    raise AttributeError(f"module 'nestlearn' has no attribute {name!r}")
