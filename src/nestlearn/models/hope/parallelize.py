"""How HOPE is sharded under FSDP2 (kept beside the model, as torchtitan keeps a ``parallelize``
per model); the training loop (``nestlearn.train.distributed``) calls these through the model's
hooks ``fsdp_units()`` and ``takes_inner_grads``.
"""

from __future__ import annotations

from torch import nn

__all__ = ["fsdp_units", "takes_inner_grads"]


def _in_context_cms(block: nn.Module) -> bool:
    return bool(block.cms.in_context)


def fsdp_units(model: nn.Module) -> list[nn.Module]:
    """The modules sharded one by one under FSDP2 (the rest belong to the root's group, whose
    parameters stay gathered from the forward to the end of the backward): every block, except
    that a HOPE block with in-context CMS levels gives only its mixer. Those levels' weights are
    read by ``HopeForCausalLM`` itself (``cms.fast_tensors``, outside the block's forward, before
    its pre-forward all-gather), so they must be gathered for the whole forward."""
    return [block.mixer if _in_context_cms(block) else block for block in model.base_model.layers]


def takes_inner_grads(model: nn.Module) -> bool:
    """True for HOPE with in-context CMS levels: its forward differentiates the chunk losses
    w.r.t. the fast weights (``torch.autograd.grad`` inside the forward, ``HopeForCausalLM``).

    Under FSDP2 such an inner backward runs the FSDP backward hooks and the root's end-of-backward
    callback, which reshard every group (freeing the gathered storage) in the middle of the
    forward: the next read of a fast weight expanded from a gathered parameter used freed memory
    (a segfault, or a DTensor/Tensor mix). So for these models the groups are not resharded
    after a backward (``set_reshard_after_backward(False)``) and the loop frees them explicitly
    (``nestlearn.train.distributed.reshard``) once the training step's (or evaluation's) forward
    and backward are done; between those points no parameter changes, so the kept gathered
    copies are current."""
    return any(_in_context_cms(block) for block in model.base_model.layers)
