"""Newton-Schulz read-out: near-orthogonality, and AssociativeMomentum + Newton-Schulz == Muon
written here from its published formula (Eq. 42-44, 52)."""

from __future__ import annotations

import pytest
import torch

from nestlearn.optim import AssociativeMomentum
from nestlearn.optim import functional as F

from ._helpers import DT, clone_params, loss_fn, make_params, run


def _ns5_reference(G: torch.Tensor) -> torch.Tensor:
    """Quintic Newton-Schulz, 5 steps, coefficients (3.4445, -4.7750, 2.0315), written from the
    published formula: X0 = G / ||G||_F; X <- a X + b (X X^T) X + c (X X^T)^2 X on the short
    side."""
    a, b, c = 3.4445, -4.7750, 2.0315
    tall = G.shape[0] > G.shape[1]
    X = G.T if tall else G
    X = X / (torch.linalg.matrix_norm(X) + 1e-7)
    for _ in range(5):
        XXt = X @ X.T
        X = a * X + b * XXt @ X + c * XXt @ XXt @ X
    return X.T if tall else X


def _muon_reference(params, grads_per_step, lr, mu, nesterov):
    """Muon: B <- mu B + G; O = NS5(G + mu B if nesterov else B) * sqrt(max(1, R/C));
    W <- W - lr O. 1-D parameters: the plain (Nesterov) momentum step."""
    bufs = [torch.zeros_like(p) for p in params]
    out = [p.detach().clone() for p in params]
    for grads in grads_per_step:
        for i, G in enumerate(grads):
            bufs[i] = mu * bufs[i] + G
            d = G + mu * bufs[i] if nesterov else bufs[i]
            if d.ndim >= 2:
                d = _ns5_reference(d) * max(1.0, d.shape[0] / d.shape[1]) ** 0.5
            out[i] = out[i] - lr * d
    return out


@pytest.mark.parametrize("nesterov", [False, True])
def test_newton_schulz_momentum_is_muon(nesterov):
    params = make_params(shapes=((8, 5), (5, 12), (6,)))
    start = clone_params(params)
    grads_per_step = []
    opt = AssociativeMomentum(params, 0.02, momentum=0.95, nesterov=nesterov,
                              output="newton_schulz")
    for t in range(10):
        opt.zero_grad()
        loss_fn(params, t).backward()
        grads_per_step.append([p.grad.clone() for p in params])
        opt.step()
    # The reference replays the same gradients (computed along our trajectory) from the start.
    ref = _muon_reference(start, grads_per_step, 0.02, 0.95, nesterov)
    for a, b in zip(params, ref):
        torch.testing.assert_close(a.detach(), b, rtol=1e-12, atol=1e-12)


def test_newton_schulz_matches_reference_on_3d_and_4d():
    """N-D parameters are viewed as [shape[0], rest] (conv kernels)."""
    g = torch.Generator().manual_seed(0)
    W = torch.randn(6, 3, 2, 2, generator=g, dtype=DT)
    out = F.output_map(W, output="newton_schulz")
    torch.testing.assert_close(out, _ns5_reference(W.reshape(6, -1)).reshape_as(W) * 1.0)


@pytest.mark.parametrize("shape", [(32, 64), (64, 32), (128, 256)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_newton_schulz_is_near_orthogonal(shape, dtype):
    """Singular values of NS5(G) land in the quintic's band (about [0.68, 1.13]) and the output is
    close to the polar factor U V^T of G."""
    g = torch.Generator().manual_seed(0)
    G = torch.randn(*shape, generator=g, dtype=dtype) * 37.0
    O = F.newton_schulz(G)
    s = torch.linalg.svdvals(O.double())
    assert s.min() > 0.65 and s.max() < 1.16, (s.min().item(), s.max().item())
    U, _, Vh = torch.linalg.svd(G.double(), full_matrices=False)
    assert torch.linalg.matrix_norm(O.double() - U @ Vh, ord=2) < 0.35
    assert O.dtype == dtype


def test_newton_schulz_batched_equals_per_matrix():
    g = torch.Generator().manual_seed(0)
    G = torch.randn(3, 10, 7, generator=g, dtype=DT)
    batched = F.newton_schulz(G)
    for i in range(3):
        torch.testing.assert_close(batched[i], F.newton_schulz(G[i]), rtol=1e-12, atol=1e-12)


def test_sign_output():
    params = make_params(shapes=((4, 3),))
    start = params[0].detach().clone()
    opt = AssociativeMomentum(params, 0.1, momentum=0.0, output="sign")
    run(opt, params, range(1))
    step = (start - params[0].detach()) / 0.1
    torch.testing.assert_close(step, torch.sign(params[0].grad), rtol=0, atol=1e-12)
    assert (step != 0).all()
