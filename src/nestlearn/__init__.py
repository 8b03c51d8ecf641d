"""nestlearn: Nested Learning (Behrouz et al., 2025) in PyTorch.

A model is a set of nested optimization problems, each an associative memory with its own context
flow and update frequency. Subpackages, each importing only the ones before it:

- ``nestlearn.memory``: associative-memory update rules as pure tensor functions.
- ``nestlearn.optim``: deep optimizers as ``torch.optim.Optimizer`` classes.
- ``nestlearn.layers``: modules with parameters (memories, CMS, attention), no ``transformers``.
- ``nestlearn.models``: Hugging Face-compatible causal language models.
- ``nestlearn.data``, ``nestlearn.train``, ``nestlearn.eval``: corpora, the training loop, evaluation.
"""

__version__ = "0.1.0"
