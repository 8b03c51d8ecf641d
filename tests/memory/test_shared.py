"""The internal pieces the self-modifying Titans layer drives directly: several memories that share
keys and rates, advanced together with one set of chunk coefficients (``chunk_coefficients``) and
``advance_weight`` broadcasting over a memory axis, equal ``memory_reference`` run on each memory
separately (reads, final states and gradients of every input, float64, lengths around chunk
boundaries)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nestlearn.memory import MemoryState, _core, memory_reference
from nestlearn.memory.advance import advance_weight
from nestlearn.memory.coefficients import chunk_coefficients

DT = torch.float64
B, H, D, HID, M = 2, 2, 4, 6, 3  # M memories share k, lr, alpha, beta


def _shared_chunked(q, k, v, lr, alpha, beta, W1, W2, *, rule, C, momentum):
    """``M`` residual-MLP memories with shared keys and rates, written chunk by chunk.

    ``q, k [B, T, H, D]``, ``v [M, B, T, H, D]``, rates ``[B, T, H]``, initial weights
    ``W1 [M, H, D, HID]``, ``W2 [M, H, HID, D]``. Internal layout: memory axis after the heads,
    ``[B, H, M, ...]``; coefficients ``[B, H, ...]`` get a broadcast memory axis.
    Returns reads ``[M, B, T, H, D]`` and the final ``(W1, W2, S1, S2)``, each ``[M, B, H, O, I]``.
    """
    T = k.shape[1]
    K, Q = k.transpose(1, 2), q.transpose(1, 2)  # [B, H, T, D]
    V = v.permute(1, 3, 0, 2, 4)  # [B, H, M, T, D]
    eta = lr.transpose(1, 2)  # [B, H, T]
    if rule == "dgd":
        eta = _core.dgd_lr(eta, K)
    log_a = torch.log(alpha.transpose(1, 2))
    log_b = torch.log(beta.transpose(1, 2)) if momentum else None
    W = tuple(w.permute(1, 0, 2, 3).expand(B, H, M, *w.shape[-2:]) for w in (W1, W2))
    S = tuple(torch.zeros_like(w) for w in W) if momentum else None
    outs = []
    for lo in range(0, T, C):
        sl = slice(lo, min(T, lo + C))
        co = chunk_coefficients(log_a[..., sl], None if log_b is None else log_b[..., sl],
                                eta[..., sl], K[:, :, sl], dgd=rule == "dgd", per_token=False)
        co_m = co.map(lambda t: t.unsqueeze(2))
        K_c = K[:, :, None, sl]  # [B, H, 1, L, D], broadcast over the memories
        g = _core.inner_grad("residual_mlp", "l2", W, K_c, V[:, :, :, sl])
        outs.append(_core.apply_memory("residual_mlp", W, Q[:, :, None, sl]))  # chunk start
        new = [advance_weight(W[0], None if S is None else S[0], g.us[0], g.xs[0], co_m)]
        new.append(advance_weight(W[1], None if S is None else S[1], g.us[1], g.xs[1], co_m,
                                  kp=g.key_proj if rule == "dgd" else None, K=K_c))
        W = tuple(n[0] for n in new)
        S = tuple(n[1] for n in new) if momentum else None
    o = torch.cat(outs, dim=3).permute(2, 0, 3, 1, 4)  # [M, B, T, H, D]
    final = [w.permute(2, 0, 1, 3, 4) for w in W + (S or ())]
    return o, final


@pytest.mark.parametrize("T", [1, 3, 4, 5, 9])
@pytest.mark.parametrize("rule,momentum", [("dgd", True), ("dgd", False), ("gd", True)])
def test_shared_coefficients_match_reference_per_memory(rule, momentum, T):
    C = 4
    g = torch.Generator().manual_seed(T)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=DT)

    leaves = {
        "q": randn(B, T, H, D), "k": F.normalize(randn(B, T, H, D), dim=-1),
        "v": randn(M, B, T, H, D),
        "lr": 0.1 + 0.4 * torch.rand(B, T, H, generator=g, dtype=DT),
        "alpha": 0.7 + 0.3 * torch.rand(B, T, H, generator=g, dtype=DT),
        "beta": 0.3 + 0.6 * torch.rand(B, T, H, generator=g, dtype=DT),
        "W1": 0.4 * randn(M, H, D, HID), "W2": 0.4 * randn(M, H, HID, D),
    }
    for t in leaves.values():
        t.requires_grad_(True)
    L = leaves
    beta = L["beta"] if momentum else None

    o_fast, final_fast = _shared_chunked(
        L["q"], L["k"], L["v"], L["lr"], L["alpha"], L["beta"], L["W1"], L["W2"], rule=rule,
        C=C, momentum=momentum)
    o_ref, final_ref = [], []
    for m in range(M):
        o, st = memory_reference(
            L["q"], L["k"], L["v"][m], L["lr"], L["alpha"], beta, memory="residual_mlp",
            objective="l2", rule=rule, chunk_size=C,
            initial_state=MemoryState(weights=(L["W1"][m], L["W2"][m])))
        o_ref.append(o)
        final_ref.append(list(st.weights) + list(st.momentum or ()))
    o_ref = torch.stack(o_ref)
    final_ref = [torch.stack(ts) for ts in zip(*final_ref)]

    def close(a, b, what):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, msg=lambda s: f"{what}: {s}")

    close(o_fast, o_ref, "reads")
    assert len(final_fast) == len(final_ref)
    for i, (a, b) in enumerate(zip(final_fast, final_ref)):
        close(a, b, f"state tensor {i}")

    def total(o, final):
        gen = torch.Generator().manual_seed(7)
        s = (o * torch.randn(o.shape, generator=gen, dtype=DT)).sum()
        for t in final:
            s = s + (t * torch.randn(t.shape, generator=gen, dtype=DT)).sum()
        return s

    names = [n for n in L if n != "beta" or momentum]
    g_fast = torch.autograd.grad(total(o_fast, final_fast), [L[n] for n in names])
    g_ref = torch.autograd.grad(total(o_ref, final_ref), [L[n] for n in names])
    for n, a, b in zip(names, g_fast, g_ref):
        close(a, b, f"d/d{n}")
