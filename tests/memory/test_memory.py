"""memory_chunked == memory_reference (outputs, final state, gradients), split invariance,
degenerate cases against independent closed forms, and argument checking."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nestlearn.memory import MemoryState, _core, memory_chunked, memory_reference

from ._cases import DT, Rule, call, grads, make_inputs, scalar_of, state_tensors

# The configurations the equivalence grid runs; HOPE's default (D5) is the DGD MLP one.
RULES = [
    Rule("linear", "dot", "gd", "per_token", momentum=False, retention=True),
    Rule("linear", "l2", "gd", "chunk_start", momentum=True, retention=True),
    Rule("linear", "l2", "gd", "per_token", momentum=True, retention=True),
    Rule("linear", "l2", "dgd", "chunk_start", momentum=True, retention=True),
    Rule("linear", "dot", "dgd", "chunk_start", momentum=False, retention=False),
    Rule("residual_mlp", "l2", "dgd", "chunk_start", momentum=True, retention=True),
    Rule("residual_mlp", "l2", "gd", "per_token", momentum=True, retention=True),
    Rule("residual_mlp", "dot", "gd", "chunk_start", momentum=False, retention=True),
    Rule("mlp", "l2", "dgd", "chunk_start", momentum=False, retention=True),
    Rule("residual_mlp", "huber", "dgd", "chunk_start", momentum=True, retention=True),
    Rule("linear", "huber", "gd", "per_token", momentum=True, retention=True),
]
CHUNKS = [1, 2, 16]


def _lengths(C: int) -> list[int]:
    return sorted({T for T in (1, C - 1, C, C + 1, 3 * C + 1) if T >= 1})


GRID = [
    pytest.param(rule, C, T, H, init, id=f"{rule.id}-C{C}-T{T}-H{H}-{'init' if init else 'zero'}")
    for rule in RULES
    for C in CHUNKS
    for T in _lengths(C)
    for H in (1, 4)
    for init in (False, True)
]


def _close(a, b, what):
    assert a.shape == b.shape, what
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, msg=lambda m: f"{what}: {m}")


def _compare_states(s_ref: MemoryState, s_fast: MemoryState):
    assert s_ref.offset == s_fast.offset
    assert (s_ref.momentum is None) == (s_fast.momentum is None)
    for i, (a, b) in enumerate(zip(state_tensors(s_ref), state_tensors(s_fast))):
        _close(a, b, f"state tensor {i}")


@pytest.mark.parametrize("rule,C,T,H,init", GRID)
def test_chunked_matches_reference(rule, C, T, H, init):
    leaves, state = make_inputs(rule, T=T, H=H, initial_state=init)
    o_ref, s_ref = call(memory_reference, rule, leaves, state, C)
    o_fast, s_fast = call(memory_chunked, rule, leaves, state, C)
    _close(o_ref, o_fast, "outputs")
    _compare_states(s_ref, s_fast)
    g_ref = grads(leaves, scalar_of(o_ref, s_ref))
    g_fast = grads(leaves, scalar_of(o_fast, s_fast))
    assert g_ref.keys() == g_fast.keys()
    for name in g_ref:
        assert g_ref[name] is not None, f"no gradient reaches {name}"
        _close(g_ref[name], g_fast[name], f"d/d{name}")


SPLITS = {
    "on-boundaries": [8, 16],
    "off-boundaries": [5, 13],
    "mixed": [3, 8, 19, 20],
}


@pytest.mark.parametrize("impl", [memory_chunked, memory_reference], ids=["chunked", "reference"])
@pytest.mark.parametrize("splits", list(SPLITS.values()), ids=list(SPLITS))
@pytest.mark.parametrize("rule", [RULES[2], RULES[5]], ids=lambda r: r.id)
def test_split_invariance(rule, splits, impl):
    """One pass over T tokens == the same tokens in pieces with the state carried along."""
    C, T = 8, 27
    leaves, state = make_inputs(rule, T=T, initial_state=True)
    o_full, s_full = call(impl, rule, leaves, state, C)
    pieces, s = [], state
    bounds = [0, *splits, T]
    for lo, hi in zip(bounds, bounds[1:]):
        part = {n: (None if t is None else t[:, lo:hi]) for n, t in leaves.items()
                if n in ("q", "k", "v", "lr", "alpha", "beta")}
        o, s = call(impl, rule, part, s, C)
        pieces.append(o)
    o_split = torch.cat(pieces, dim=1)
    _close(o_full, o_split, "outputs")
    _compare_states(s_full, s)
    g_full = grads(leaves, scalar_of(o_full, s_full))
    g_split = grads(leaves, scalar_of(o_split, s))
    for name in g_full:
        _close(g_full[name], g_split[name], f"d/d{name}")


def test_token_by_token_decode_matches_one_pass():
    """Decoding one token per call (T = 1, carried state) equals the chunked full pass."""
    rule = RULES[5]
    leaves, state = make_inputs(rule, T=11, requires_grad=False)
    o_full, s_full = call(memory_chunked, rule, leaves, state, 4)
    s, outs = state, []
    for t in range(11):
        part = {n: (None if x is None else x[:, t:t + 1]) for n, x in leaves.items()}
        o, s = call(memory_chunked, rule, part, s, 4)
        outs.append(o)
    _close(o_full, torch.cat(outs, 1), "outputs")
    _compare_states(s_full, s)


@pytest.mark.parametrize("C", [1, 3, 16])
def test_dot_linear_lr1_is_causal_linear_attention(C):
    """Hebbian writes with lr 1 into a zero matrix memory are linear attention (Eq. 14-18):
    per-token reads give ``tril(Q K^T) V``; chunk-start reads see only earlier chunks."""
    B, T, H, D = 2, 21, 3, 5
    q, k, v = (torch.randn(B, T, H, D, dtype=DT) for _ in range(3))
    lr = torch.ones(B, T, H, dtype=DT)
    scores = torch.einsum("bthd,bshd->bhts", q, k)
    pos = torch.arange(T)
    for read, visible in (("per_token", pos[:, None] >= pos[None, :]),
                          ("chunk_start", pos[:, None] // C > pos[None, :] // C)):
        expected = torch.einsum("bhts,bshd->bthd", scores * visible, v)
        o, _ = memory_chunked(q, k, v, lr, memory="linear", objective="dot", chunk_size=C,
                              read=read)
        _close(o, expected, f"linear attention ({read})")


def test_l2_linear_gd_online_is_delta_rule():
    """C = 1, l2 objective, plain GD: W_t = W_{t-1} - b_t (W_{t-1} k_t - v_t) k_t^T (DeltaNet)."""
    B, T, H, D = 2, 13, 2, 4
    q = torch.randn(B, T, H, D, dtype=DT)
    k = F.normalize(torch.randn(B, T, H, D, dtype=DT), dim=-1)
    v = torch.randn(B, T, H, D, dtype=DT)
    b = torch.rand(B, T, H, dtype=DT)
    W = torch.zeros(B, H, D, D, dtype=DT)
    expected = []
    for t in range(T):
        kt, vt, bt = k[:, t], v[:, t], b[:, t, :, None, None]
        W = W - bt * (torch.einsum("bhij,bhj->bhi", W, kt) - vt)[..., None] * kt[..., None, :]
        expected.append(torch.einsum("bhij,bhj->bhi", W, q[:, t]))
    o, s = memory_chunked(q, k, v, b, memory="linear", objective="l2", chunk_size=1,
                          read="per_token")
    _close(o, torch.stack(expected, 1), "outputs")
    _close(s.weights[0], W, "final state")


def test_dgd_online_is_the_proximal_step():
    """With the dot objective, no retention and C = 1, one DGD step is the exact solution of
    argmin_W 1/2 ||W k - v||^2 + 1/(2 eta) ||W - W_t||^2 (Eq. 56-57), solved here directly."""
    B, T, H, D = 1, 6, 2, 4
    q, k, v = (torch.randn(B, T, H, D, dtype=DT) for _ in range(3))  # unnormalised keys
    lr = 0.5 + torch.rand(B, T, H, dtype=DT)
    W = torch.randn(B, H, D, D, dtype=DT)
    state = MemoryState(weights=(W.clone(),))
    eye = torch.eye(D, dtype=DT)
    for t in range(T):
        kt, vt, eta = k[0, t, :, :, None], v[0, t, :, :, None], lr[0, t, :, None, None]
        # normal equations: W (I/eta + k k^T) = W_t / eta + v k^T
        rhs = W[0] / eta + vt @ kt.transpose(-1, -2)
        W = torch.linalg.solve(eye / eta + kt @ kt.transpose(-1, -2), rhs.transpose(-1, -2))
        W = W.transpose(-1, -2)[None]
    _, s = memory_chunked(q, k, v, lr, memory="linear", objective="dot", rule="dgd",
                          chunk_size=1, initial_state=state)
    _close(s.weights[0], W, "DGD final state")


@pytest.mark.parametrize("memory", ["linear", "mlp", "residual_mlp"])
@pytest.mark.parametrize("objective", ["dot", "l2", "huber"])
def test_closed_form_inner_gradient_matches_autograd(memory, objective):
    B, H, L, D, Dh = 2, 3, 5, 4, 6
    k, v = torch.randn(B, H, L, D, dtype=DT), torch.randn(B, H, L, D, dtype=DT)
    if memory == "linear":
        weights = (torch.randn(B, H, D, D, dtype=DT),)
    else:
        weights = (torch.randn(B, H, D, Dh, dtype=DT), torch.randn(B, H, Dh, D, dtype=DT))
    got = _core.inner_grad(memory, objective, weights, k, v)
    for i in range(L):
        ws = tuple(w.clone().requires_grad_(True) for w in weights)
        y = _core.apply_memory(memory, ws, k[:, :, i:i + 1])
        loss = _core.objective_loss(objective, y, v[:, :, i:i + 1])
        auto = torch.autograd.grad(loss, ws)
        for w_idx, (u, x) in enumerate(zip(got.us, got.xs)):
            outer = u[:, :, i, :, None] * x[:, :, i, None, :]
            _close(outer, auto[w_idx], f"token {i} weight {w_idx}")


def test_gradients_reach_initial_state_and_detach_cuts_them():
    rule = RULES[5]
    leaves, state = make_inputs(rule, T=20, initial_state=True)
    o, s = call(memory_chunked, rule, leaves, state, 4)
    g = grads(leaves, scalar_of(o, s))
    assert all(g[n] is not None and g[n].abs().sum() > 0 for n in ("W0", "W1", "S0", "S1"))
    # detach: the last chunk's outputs no longer depend on the initial weights
    o_d, _ = call(memory_chunked, rule, leaves, state, 4, write_grad="detach")
    last = torch.autograd.grad(o_d[:, -4:].sum(), [leaves["W0"]], allow_unused=True)[0]
    assert last is None or last.abs().max() == 0
    _close(o_d, o, "detach changes gradients only")


def test_bfloat16_inputs_run_in_float32_and_return_bfloat16():
    rule = RULES[5]
    leaves, state = make_inputs(rule, T=10, requires_grad=False)
    half = {n: (None if t is None else t.to(torch.bfloat16)) for n, t in leaves.items()}
    o, _ = call(memory_chunked, rule, half, state, 4)
    o64, _ = call(memory_chunked, rule, leaves, state, 4)
    assert o.dtype == torch.bfloat16
    torch.testing.assert_close(o.double(), o64, rtol=0.05, atol=0.05)


def _base():
    B, T, H, D = 1, 4, 2, 3
    return dict(q=torch.randn(B, T, H, D), k=torch.randn(B, T, H, D), v=torch.randn(B, T, H, D),
                lr=torch.rand(B, T, H))


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(chunk_size=0), "chunk_size"),
        (dict(chunk_size=2.0), "chunk_size"),
        (dict(memory="deep"), "memory"),
        (dict(objective="cauchy"), "objective"),
        (dict(rule="adam"), "rule"),
        (dict(read="last"), "read"),
        (dict(write_grad="none"), "write_grad"),
        (dict(rule="dgd", read="per_token"), "per_token"),
        (dict(q=torch.randn(1, 4, 2, 5)), "q must have"),
        (dict(v=torch.randn(1, 3, 2, 3)), "v must have"),
        (dict(k=torch.randn(4, 2, 3)), "k must have"),
        (dict(lr=torch.rand(1, 4, 3)), "lr must have"),
        (dict(lr=torch.tensor([[[1.0, float("nan")]] * 4])), "lr must be finite"),
        (dict(alpha=torch.tensor([[[1.0, float("inf")]] * 4])), "alpha must be finite"),
        (dict(alpha=torch.zeros(1, 4, 2)), "alpha must be finite and > 0"),
        (dict(beta=torch.full((1, 4, 2), -0.5)), "beta"),
        (dict(memory="residual_mlp"), "initial_state"),
        (dict(v=torch.randn(1, 4, 2, 5), memory="residual_mlp"), "value dim"),
        (dict(initial_state=MemoryState(weights=(torch.zeros(2, 3, 4),))), "initial_state"),
        (dict(initial_state=MemoryState(weights=(torch.zeros(2, 3, 3),), offset=5),
              chunk_size=4), "offset"),
    ],
)
@pytest.mark.parametrize("impl", [memory_chunked, memory_reference], ids=["chunked", "reference"])
def test_invalid_arguments_raise_value_error(impl, change, match):
    kw = _base() | change
    with pytest.raises(ValueError, match=match):
        impl(kw.pop("q"), kw.pop("k"), kw.pop("v"), kw.pop("lr"), **kw)


def test_non_tensor_input_raises_type_error():
    kw = _base()
    with pytest.raises(TypeError, match="q must be a torch.Tensor"):
        memory_chunked([[1.0]], kw["k"], kw["v"], kw["lr"])


def test_huber_step_caps_the_error_norm():
    """One huber step of a linear memory: W - lr * e min(1, delta/||e||) k^T (independent form)."""
    from nestlearn.memory import MemoryState, memory_chunked

    g = torch.Generator().manual_seed(3)
    B, H, D = 1, 2, 4
    k = torch.nn.functional.normalize(
        torch.randn(B, 1, H, D, generator=g, dtype=torch.float64), dim=-1)
    v = 3 * torch.randn(B, 1, H, D, generator=g, dtype=torch.float64)
    lr = torch.full((B, 1, H), 0.5, dtype=torch.float64)
    W0 = torch.randn(B, H, D, D, generator=g, dtype=torch.float64)
    _, st = memory_chunked(k, k, v, lr, objective="huber", huber_delta=0.7, chunk_size=1,
                           initial_state=MemoryState(weights=(W0,)))
    e = torch.einsum("bhij,bhj->bhi", W0, k[:, 0]) - v[:, 0]
    n = e.norm(dim=-1, keepdim=True)
    assert bool((n > 0.7).all())  # the cap is active in this case
    expected = W0 - 0.5 * torch.einsum("bhi,bhj->bhij", e * (0.7 / n), k[:, 0])
    torch.testing.assert_close(st.weights[0], expected)
    # a cap above every error is the l2 objective
    _, st_l2 = memory_chunked(k, k, v, lr, objective="l2", chunk_size=1,
                              initial_state=MemoryState(weights=(W0,)))
    _, st_big = memory_chunked(k, k, v, lr, objective="huber", huber_delta=1e6, chunk_size=1,
                               initial_state=MemoryState(weights=(W0,)))
    torch.testing.assert_close(st_big.weights[0], st_l2.weights[0], rtol=0, atol=0)


def test_huber_delta_must_be_positive():
    from nestlearn.memory import memory_chunked

    x = torch.randn(1, 2, 1, 3)
    with pytest.raises(ValueError, match="huber_delta"):
        memory_chunked(x, x, x, torch.ones(1, 2, 1), objective="huber", huber_delta=0.0)
