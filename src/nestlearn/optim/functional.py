"""Pure update rules of the deep optimizers.

Nested Learning, arXiv 2512.24695, sections 4.2-4.4 and 7.2.

Every optimizer in ``nestlearn.optim`` is a momentum *memory* (section 4.2: momentum is an
associative memory that compresses gradients) plus a read-out map. The functions here are that
math, with no parameter groups, no ``self.state`` and no Python-side state: each takes the gradient
and the state tensors, updates the state tensors **in place** (the momentum memory is the state),
and returns the *direction* ``u`` of the step. The optimizer classes then do

    p <- p - lr * u                       (and weight decay, see each class)

so the learning rate stays outside (LR schedulers act on it) and every function can be tested
against a hand-written formula. Tensor ops only, no ``.item()``: each function can be wrapped in
``torch.compile`` (nothing requires it).

Conventions. The paper writes the memory with the step inside, ``W <- W + m`` and
``m <- alpha m - eta g`` (Eq. 33-34). Here the memory stores gradient units, ``b = -m / lr``, so
that the dot-product objective gives exactly the buffer of ``torch.optim.SGD`` and a change of lr
by a scheduler acts on the read-out only. For a constant lr the two are the same recurrence.

Dimension legend: a parameter of any shape is viewed as a matrix ``[R, C]`` (rows = output
features, ``C`` = the product of the other dims; a vector is ``[1, C]``). ``h`` is the hidden width
of the MLP momentum memory.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "NS_COEFFICIENTS",
    "adamw_direction",
    "associative_momentum",
    "deep_momentum",
    "delta_decay_",
    "m3_direction",
    "m3_fold_slow_",
    "matrix_view",
    "newton_schulz",
    "output_map",
    "precondition",
]

Objective = Literal["dot", "l2"]
Side = Literal["right", "left"]
Output = Literal["identity", "newton_schulz", "sign"]
Preconditioner = Literal["none", "rms", "adagrad"]
Memory = Literal["linear", "mlp"]
Activation = Literal["silu", "tanh"]
Slow = Literal["sum", "ema", "none"]

# Quintic Newton-Schulz coefficients (a, b, c) of the Muon recipe: p(x) = a x + b x^3 + c x^5,
# chosen so that repeated application pushes every singular value of a normalised matrix into a
# band around 1 in about five steps (the band is near [0.7, 1.2], not exactly 1).
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def matrix_view(x: Tensor) -> Tensor:
    """``x`` seen as ``[R, C]``: 0-D -> [1, 1], 1-D -> [1, C], N-D -> [shape[0], rest]."""
    if x.ndim == 0:
        return x.view(1, 1)
    if x.ndim == 1:
        return x.view(1, -1)
    return x.reshape(x.shape[0], -1)


def newton_schulz(G: Tensor, *, steps: int = 5, eps: float = 1e-7) -> Tensor:
    """Approximate orthogonalisation ``U V^T`` of ``G = U S V^T`` (NL Eq. 42-44, section 4.4).

    Newton-Schulz is the inner optimiser of the orthogonality objective ||O^T O - I||_F^2 (Eq. 43)
    started from the (normalised) gradient; this is the quintic iteration
    ``X <- a X + (b A + c A^2) X`` with ``A = X X^T``, run on the short side.

    G: [..., R, C] -> [..., R, C], same dtype (computed in the input dtype).
    """
    a, b, c = NS_COEFFICIENTS
    transposed = G.size(-2) > G.size(-1)
    X = G.mT if transposed else G  # [..., r, c] with r <= c
    # Frobenius normalisation puts every singular value in [0, 1], the basin of the polynomial.
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + eps)
    for _ in range(steps):
        A = X @ X.mT  # [..., r, r]
        B = b * A + c * (A @ A)  # [..., r, r]
        X = a * X + B @ X
    return X.mT if transposed else X


def output_map(u: Tensor, *, output: Output, ns_steps: int = 5) -> Tensor:
    """The read-out nonlinearity sigma of Eq. 52, ``W <- W - lr * sigma(m)``.

    ``newton_schulz`` orthogonalises matrix-shaped tensors (ndim >= 2, N-D viewed as
    ``[shape[0], rest]``) and scales by ``sqrt(max(1, R / C))`` (the Muon convention, so a tall
    matrix gets unit-RMS-per-column-like steps); 0-D and 1-D tensors pass through unchanged.
    ``sign`` is the element-wise sign (signSGD / Lion-style read-out).
    """
    if output == "identity":
        return u
    if output == "sign":
        return torch.sign(u)
    if output == "newton_schulz":
        if u.ndim < 2:
            return u
        U = matrix_view(u)  # [R, C]
        O = newton_schulz(U, steps=ns_steps) * math.sqrt(max(1.0, U.size(0) / U.size(1)))
        return O.view_as(u)
    raise AssertionError(f"unchecked output {output!r}")


def precondition(
    grad: Tensor, sq: Tensor | None, *, preconditioner: Preconditioner, beta2: float, eps: float
) -> Tensor:
    """The value ``P_i g_i`` that momentum memorises (preconditioned momentum, Eq. 46-47).

    ``none``: P = I. ``rms``: P = diag(1 / (sqrt(v) + eps)) with ``v <- beta2 v + (1 - beta2) g^2``
    (no bias correction, exactly the convention of ``torch.optim.RMSprop``). ``adagrad``: the
    same with ``v <- v + g^2``. ``sq`` ([same as grad]) is updated in place.
    """
    if preconditioner == "none":
        return grad
    assert sq is not None
    if preconditioner == "rms":
        sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    elif preconditioner == "adagrad":
        sq.addcmul_(grad, grad, value=1.0)
    else:
        raise AssertionError(f"unchecked preconditioner {preconditioner!r}")
    return grad / (sq.sqrt() + eps)


def delta_decay_(buf: Tensor, key: Tensor, *, momentum: float, decay: float, side: Side) -> Tensor:
    """The delta-rule forgetting of Delta Momentum (Eq. 49), in place: ``b <- b (mu I - beta K)``.

    The l2 (delta-rule) inner objective turns momentum's constant decay ``mu`` into a
    gradient-dependent one. With the gradient as key, ``K = G^T G / ||G||_F^2`` (``side="right"``,
    the arXiv form ``m (alpha - g^T g)``) or ``b <- (mu I - beta G G^T / ||G||_F^2) b``
    (``side="left"``, the NeurIPS form). The ``1 / ||G||_F^2`` is the normalised-LMS step
    (decision D9): ``K`` is PSD with trace 1, so the factor's eigenvalues lie in
    ``[mu - beta, mu]`` and the recurrence is stable for any gradient scale when
    ``0 <= beta <= 1``. With ``beta = 1`` and a rank-1 gradient, the component of ``b`` along the
    current gradient is erased before the new value is written (the delta rule's "replace").

    buf, key: same shape (viewed as [R, C]); returns ``buf``.
    """
    b = matrix_view(buf)  # [R, C]
    G = matrix_view(key)  # [R, C]
    sq_norm = (G * G).sum()
    # Zero gradient: K is undefined and the limit of the normalised step is no forgetting.
    inv = torch.where(sq_norm > 0, 1.0 / sq_norm.clamp_min(torch.finfo(G.dtype).tiny), 0.0)
    R, C = b.shape
    if side == "right":
        # b G^T G costs min over association order: (b G^T) G is 2 R^2 C, b (G^T G) is 2 R C^2.
        bK = (b @ G.mT) @ G if R <= C else b @ (G.mT @ G)  # [R, C]
    elif side == "left":
        bK = G @ (G.mT @ b) if C <= R else (G @ G.mT) @ b  # [R, C]
    else:
        raise AssertionError(f"unchecked side {side!r}")
    b.mul_(momentum).sub_(bK * (decay * inv))
    return buf


def associative_momentum(
    grad: Tensor,
    buf: Tensor,
    sq: Tensor | None = None,
    *,
    momentum: float,
    objective: Objective = "dot",
    decay: float = 0.0,
    side: Side = "right",
    nesterov: bool = False,
    preconditioner: Preconditioner = "none",
    beta2: float = 0.99,
    eps: float = 1e-8,
    output: Output = "identity",
    ns_steps: int = 5,
) -> Tensor:
    """Momentum as an associative memory (Eq. 33-37, 46-49, 52); returns the direction ``u``.

    Inner problem: the buffer ``b`` ([same as grad]) memorises values ``P g`` with retention
    ``mu = momentum``, one GD step per optimiser step.

    * ``objective="dot"``: Hebbian write ``b <- mu b + P g`` (Eq. 33-34, 46-47). With
      ``P = I`` this is ``torch.optim.SGD``'s buffer.
    * ``objective="l2"``: delta rule ``b <- b (mu I - beta K) + P g`` (Delta Momentum,
      Eq. 48-49, see :func:`delta_decay_` for ``K``, ``beta = decay`` and ``side``).

    Read-out: ``u = sigma(b)``, or ``sigma(P g + mu b)`` with ``nesterov``, where ``sigma`` is
    :func:`output_map` (Eq. 52; ``newton_schulz`` with ``dot`` and ``P = I`` is Muon, Eq. 42).
    ``buf`` and ``sq`` are updated in place.
    """
    value = precondition(grad, sq, preconditioner=preconditioner, beta2=beta2, eps=eps)
    if objective == "dot":
        buf.mul_(momentum).add_(value)
    elif objective == "l2":
        delta_decay_(buf, grad, momentum=momentum, decay=decay, side=side)
        buf.add_(value)
    else:
        raise AssertionError(f"unchecked objective {objective!r}")
    u = value.add(buf, alpha=momentum) if nesterov else buf
    return output_map(u, output=output, ns_steps=ns_steps)


def _act(x: Tensor, activation: Activation) -> tuple[Tensor, Tensor]:
    """sigma(x) and sigma'(x), element-wise."""
    if activation == "silu":
        s = torch.sigmoid(x)
        return x * s, s * (1 + x * (1 - s))
    if activation == "tanh":
        t = torch.tanh(x)
        return t, 1 - t * t
    raise AssertionError(f"unchecked activation {activation!r}")


def deep_momentum(
    grad: Tensor,
    M: Tensor,
    A: Tensor | None = None,
    B: Tensor | None = None,
    *,
    retention: float,
    inner_lr: float,
    memory_lr: float = 0.0,
    objective: Objective = "l2",
    activation: Activation = "silu",
    output: Output = "identity",
    ns_steps: int = 5,
) -> Tensor:
    """Deep Momentum Gradient Descent (DMGD, Eq. 50) with an optional output map (Eq. 52).

    The momentum is a memory ``m: R^C -> R^R`` from a layer's input space to its output space, the
    reading of Eq. 33 (momentum maps layer inputs to local errors; summed over a batch its
    gradient is ``G``). Keys are the input basis ``e_1..e_C``, the values are the columns of
    ``G``, and the momentum matrix is the memory evaluated on all keys at once:

        linear: m(k) = M k                          read = M                       # [R, C]
        mlp:    m(k) = M k + A sigma(B k)           read = M + A sigma(B)          # residual MLP

    with M: [R, C], A: [R, h], B: [h, C]. One GD step per optimiser step on the inner objective,
    with retention (weight decay) ``alpha`` on every memory weight (Eq. 50):

        dot:  L2(m) = -<read, G>          dL/dread = E = -G
        l2:   L2(m) = 1/2 ||read - G||^2  dL/dread = E = read - G
        M <- alpha M - eta E
        A <- alpha A - (eta_m / C) E sigma(B)^T
        B <- alpha B - (eta_m / C) (A^T E) * sigma'(B)      (with the A before its update)

    ``eta_m / C`` is the normalised step of a row with C keys. The linear memory with ``dot``,
    ``alpha = mu``, ``eta = 1`` is momentum ``M <- mu M + G``; with ``l2``, ``alpha = 1``,
    ``eta = 1 - mu`` it is the EMA ``M <- mu M + (1 - mu) G``.

    Returns ``u = sigma(read)`` after the update. M, A, B (viewed as matrices) update in place.
    """
    G = matrix_view(grad)  # [R, C]
    Mm = matrix_view(M)  # [R, C]
    if A is None:
        read = Mm
        E = -G if objective == "dot" else read - G  # [R, C]
        Mm.mul_(retention).sub_(E, alpha=inner_lr)
        return output_map(M, output=output, ns_steps=ns_steps)
    assert B is not None
    C = G.size(1)
    f, df = _act(B, activation)  # [h, C], [h, C]
    read = Mm + A @ f  # [R, C]
    if objective == "dot":
        E = -G
    elif objective == "l2":
        E = read - G
    else:
        raise AssertionError(f"unchecked objective {objective!r}")
    step = memory_lr / C
    gB = (A.mT @ E) * df  # [h, C]
    A.mul_(retention).sub_(E @ f.mT, alpha=step)  # [R, h]
    B.mul_(retention).sub_(gB, alpha=step)
    Mm.mul_(retention).sub_(E, alpha=inner_lr)
    read = Mm + A @ _act(B, activation)[0]  # [R, C]
    return output_map(read.view_as(grad), output=output, ns_steps=ns_steps)


def adamw_direction(
    grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, step: int, *, beta1: float,
    beta2: float, eps: float,
) -> Tensor:
    """Adam's direction ``m_hat / (sqrt(v_hat) + eps)`` (App. B, Eq. 100-105, EMA reading).

    ``step`` is the 1-based step count (already incremented). State in place.
    """
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    bc1 = 1 - beta1**step
    bc2 = 1 - beta2**step
    return (exp_avg / bc1) / ((exp_avg_sq / bc2).sqrt() + eps)


def m3_fold_slow_(
    M2: Tensor, O2: Tensor, chunk_sum: Tensor, *, slow: Slow, beta3: float, ns_steps: int
) -> None:
    """M3's low-frequency level (Algorithm 1, lines 3-4), run once every ``frequency`` steps.

    ``sum``: ``M2 <- M2 + beta3 * sum(chunk gradients)`` (line 3 as printed; decision D9).
    ``ema``: ``M2 <- beta3 M2 + (1 - beta3) * sum(chunk gradients)`` (a bounded alternative).
    Then ``O2 <- NS(M2)`` (line 4) and the chunk sum is reset. All three tensors in place.
    """
    if slow == "sum":
        M2.add_(chunk_sum, alpha=beta3)
    elif slow == "ema":
        M2.mul_(beta3).add_(chunk_sum, alpha=1 - beta3)
    else:
        raise AssertionError(f"unchecked slow {slow!r}")
    O2.copy_(matrix_view(newton_schulz(matrix_view(M2), steps=ns_steps)).view_as(O2))
    chunk_sum.zero_()


def m3_direction(
    grad: Tensor, M1: Tensor, V: Tensor, O2: Tensor | None, step: int, *, beta1: float,
    beta2: float, alpha: float, eps: float, ns_steps: int,
) -> Tensor:
    """M3's fast level and the combined direction (Algorithm 1, lines 7-10; decision D9).

        M1 <- beta1 M1 + (1 - beta1) g          (line 7, EMA reading)
        V  <- beta2 V  + (1 - beta2) g^2        (line 8, EMA reading)
        O1 =  NS(M1 / (1 - beta1^t))            (line 9; bias correction, NS is near scale-free)
        u  =  (O1 + alpha O2) / (sqrt(V / (1 - beta2^t)) + eps)      (line 10)

    grad, M1, V: [R, C] (matrix parameters only); O2: [R, C] or None (slow level off);
    ``step`` the 1-based step count. M1 and V update in place.
    """
    M1.lerp_(grad, 1 - beta1)
    V.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    O1 = newton_schulz(M1 / (1 - beta1**step), steps=ns_steps)  # [R, C]
    num = O1 if O2 is None or alpha == 0 else O1 + alpha * O2
    return num / ((V / (1 - beta2**step)).sqrt() + eps)
