"""Deep optimizers of Nested Learning (arXiv 2512.24695, sections 4.2-4.4 and 7.2).

Each is momentum seen as an associative memory; the math is in :mod:`nestlearn.optim.functional`
(pure functions) and ``README.md`` beside this file (equations and the decisions taken where the
paper is ambiguous). The classes are thin ``torch.optim.Optimizer`` wrappers:

- :class:`AssociativeMomentum`: dot-product (= ``torch.optim.SGD``) or l2 objective, optional
  preconditioner (Eq. 46-47) and read-out (Eq. 52; Newton-Schulz = Muon, Eq. 42-44).
- :class:`DeltaMomentum`: the l2 / delta-rule objective (Eq. 48-49, decision D9).
- :class:`DeepMomentum`: DMGD, an MLP momentum memory trained online on the gradients (Eq. 50-52).
- :class:`M3`: Multi-scale Momentum Muon (Algorithm 1) with an AdamW fallback.
"""

from nestlearn.optim import functional
from nestlearn.optim.associative import AssociativeMomentum, DeltaMomentum
from nestlearn.optim.deep import DeepMomentum
from nestlearn.optim.m3 import M3

__all__ = ["M3", "AssociativeMomentum", "DeepMomentum", "DeltaMomentum", "functional"]
