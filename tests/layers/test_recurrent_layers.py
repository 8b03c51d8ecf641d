"""Self-modifying Titans and the Titans memory layer: the chunked path equals the token-by-token
reference (outputs and gradients of every parameter), streaming equals one pass, gradients reach
the meta-learned initial memories, batches equal their sequences one by one, padding writes
nothing."""

from __future__ import annotations

import pytest
import torch

from nestlearn.layers.conv import CausalDepthwiseConv
from nestlearn.layers.self_modifying_titans import SelfModifyingTitans
from nestlearn.layers.titans_memory import TitansMemory

DT = torch.float64
D, H = 16, 2

LAYERS = {
    "smt": lambda: SelfModifyingTitans(D, H, chunk_size=4, proj_chunk_size=4),
    "smt-grids-3-4": lambda: SelfModifyingTitans(D, H, chunk_size=4, proj_chunk_size=3),
    "smt-gd-adaptive-q": lambda: SelfModifyingTitans(
        D, H, chunk_size=4, proj_chunk_size=4, rule="gd", q_projection="adaptive",
        momentum="none", retention="none"),
    "smt-detach-grids-3-4": lambda: SelfModifyingTitans(D, H, chunk_size=4, proj_chunk_size=3,
                                                        write_grad="detach"),
    "smt-huber": lambda: SelfModifyingTitans(D, H, chunk_size=4, proj_chunk_size=4,
                                             objective="huber", huber_delta=0.3, eta_max=1.0),
    "titans-mlp": lambda: TitansMemory(D, H, chunk_size=4),
    "titans-huber": lambda: TitansMemory(D, H, chunk_size=4, objective="huber", huber_delta=0.3,
                                         lr_max=1.0),
    "titans-linear-per-token": lambda: TitansMemory(D, H, chunk_size=4, memory="linear",
                                                    read="per_token"),
    "titans-detach": lambda: TitansMemory(D, H, chunk_size=4, write_grad="detach"),
}


def _layer(name):
    torch.manual_seed(1)
    return LAYERS[name]().to(DT)


def _close(a, b, what=""):
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("T", [1, 3, 4, 5, 11])
@pytest.mark.parametrize("name", list(LAYERS))
def test_chunked_matches_reference(name, T):
    layer = _layer(name)
    x = torch.randn(2, T, D, dtype=DT, requires_grad=True)
    y_fast, _ = layer(x)
    y_ref, _ = layer(x, impl="reference")
    _close(y_fast, y_ref, "outputs")
    params = [x] + [p for p in layer.parameters()]
    g_fast = torch.autograd.grad(y_fast.square().sum(), params, allow_unused=True)
    g_ref = torch.autograd.grad(y_ref.square().sum(), params, allow_unused=True)
    names = ["x"] + [n for n, _ in layer.named_parameters()]
    for n, a, b, p in zip(names, g_fast, g_ref, params):
        # a parameter the output does not depend on (e.g. the projection memories while T fits in
        # the first chunk) may get no gradient (None) or zeros: the fused path stacks the five
        # memories into shared tensors
        zero = torch.zeros_like(p)
        _close(zero if a is None else a, zero if b is None else b, f"d/d{n}")


@pytest.mark.parametrize("splits", [[4, 8], [3, 6, 7], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]],
                         ids=["on-boundaries", "off-boundaries", "token-by-token"])
@pytest.mark.parametrize("name", ["smt", "smt-grids-3-4", "titans-mlp"])
def test_streaming_equals_one_pass(name, splits):
    layer = _layer(name)
    x = torch.randn(2, 11, D, dtype=DT)
    y_full, _ = layer(x)
    state, outs = None, []
    for lo, hi in zip([0, *splits], [*splits, 11]):
        y, state = layer(x[:, lo:hi], state=state)
        outs.append(y)
    _close(torch.cat(outs, 1), y_full, "streamed outputs")


@pytest.mark.parametrize("name", ["smt", "smt-gd-adaptive-q"])
def test_gradients_reach_every_initial_memory(name):
    layer = _layer(name)
    y, _ = layer(torch.randn(2, 13, D, dtype=DT))
    y.square().sum().backward()
    for n, p in layer.named_parameters():
        g = p.grad
        assert g is not None and g.abs().max() > 0, f"no gradient reaches {n}"


@pytest.mark.parametrize("impl", ["per_group", "reference"])
@pytest.mark.parametrize("name", ["smt", "smt-grids-3-4", "smt-gd-adaptive-q"])
def test_smt_paths_agree_on_states(name, impl):
    """The fused path's final state (all five memories, momentum, chunk starts, offsets) equals
    the per-group and token-by-token paths', on and off chunk boundaries."""
    layer = _layer(name)
    x = torch.randn(2, 7, D, dtype=DT)
    _, s_fast = layer(x)
    _, s_other = layer(x, impl=impl)
    for group in ("vec", "gate", "main"):
        a, b = getattr(s_fast, group), getattr(s_other, group)
        assert a.offset == b.offset, group
        assert (a.momentum is None) == (b.momentum is None), group
        for field in ("weights", "momentum", "chunk_start"):
            for i, (ta, tb) in enumerate(zip(getattr(a, field) or (), getattr(b, field) or ())):
                _close(ta, tb, f"{group}.{field}[{i}]")


def test_smt_second_order_gradients_match_reference():
    """HOPE's second-order CMS meta-gradient differentiates through the layer's backward: the
    fused path's double backward equals the reference's."""
    layer = _layer("smt")
    x = torch.randn(2, 6, D, dtype=DT, requires_grad=True)
    params = list(layer.parameters())
    out = []
    for impl in ("chunked", "reference"):
        y, _ = layer(x, impl=impl)
        (g,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
        out.append(torch.autograd.grad(g.square().sum(), params, allow_unused=True))
    for (n, p), a, b in zip(layer.named_parameters(), *out):
        zero = torch.zeros_like(p)
        _close(zero if a is None else a, zero if b is None else b, f"d2/d{n}")


@pytest.mark.parametrize("name", ["smt", "titans-mlp"])
def test_batch_equals_one_by_one(name):
    layer = _layer(name)
    x = torch.randn(3, 9, D, dtype=DT)
    y, _ = layer(x)
    for b in range(3):
        y_b, _ = layer(x[b:b + 1])
        _close(y[b:b + 1], y_b, f"sequence {b}")


@pytest.mark.parametrize("name", ["smt", "titans-mlp"])
def test_left_padding_writes_nothing(name):
    """A sequence left-padded by a whole number of chunks gives the outputs it gives alone, and
    the padded positions never change the memory."""
    layer = _layer(name)
    x = torch.randn(1, 7, D, dtype=DT)
    pad = torch.randn(1, 4, D, dtype=DT)  # garbage at padded positions must not matter
    mask = torch.tensor([[0] * 4 + [1] * 7])
    y_pad, s_pad = layer(torch.cat([pad, x], 1), attention_mask=mask)
    y, s = layer(x)
    _close(y_pad[:, 4:], y, "outputs after padding")


PADS = [0, 1, 3, 6]  # leading pads per row: every phase of a chunk of 4 (and of 3)


def _state_tensors(state):
    """Every tensor of a layer state, with each memory's per-row offsets."""
    out = []
    groups = ("vec", "gate", "main") if hasattr(state, "main") else ("memory",)
    for g in groups:
        m = getattr(state, g)
        out += list(m.weights) + list(m.chunk_start) + list(m.momentum or ())
        out.append(torch.as_tensor(m.row_offsets(m.weights[-1].shape[0])))
    return out


@pytest.mark.parametrize("name,impl", [
    (name, impl)
    for name in ("smt", "smt-grids-3-4", "smt-gd-adaptive-q", "smt-detach-grids-3-4",
                 "titans-mlp", "titans-linear-per-token", "titans-detach")
    for impl in (("chunked", "per_group", "reference") if name.startswith("smt")
                 else ("chunked", "reference"))
])
def test_left_padding_any_count_equals_each_sequence_alone(name, impl):
    """Rows with 0, 1, 3 and 6 leading pads (each row's chunk grid anchored at its first real
    token): outputs, final states (weights, momentum, chunk starts, per-row offsets) and the
    gradients of every parameter equal those of each sequence run alone; the carried state then
    continues each row exactly (a second call with no padding).

    With ``write_grad="detach"`` the chunk ends inside a row's padding (the last one at its
    first real token) do not cut the graph (the row has written nothing yet,
    ``MemoryState.written``), so the meta-learned initial memories get each row's gradient as
    when it runs alone."""
    layer = _layer(name)
    T, more = 9, 5
    xs = [torch.randn(1, T - p, D, dtype=DT) for p in PADS]
    tails = [torch.randn(1, more, D, dtype=DT) for _ in PADS]
    x = torch.cat([torch.cat([torch.randn(1, p, D, dtype=DT), x_b], 1) for p, x_b in zip(PADS, xs)])
    mask = torch.tensor([[0] * p + [1] * (T - p) for p in PADS])
    params = list(layer.parameters())
    y, s = layer(x, attention_mask=mask, impl=impl)
    y2, s2 = layer(torch.cat(tails), state=s, impl=impl)
    total = sum((y[b:b + 1, p:].square().sum() for b, p in enumerate(PADS)), y2.square().sum())
    g_batch = torch.autograd.grad(total, params, allow_unused=True)
    g_alone = [torch.zeros_like(q) for q in params]
    for b, p in enumerate(PADS):
        y_b, s_b = layer(xs[b], impl=impl)
        y2_b, s2_b = layer(tails[b], state=s_b, impl=impl)
        _close(y[b:b + 1, p:], y_b, f"row {b} outputs")
        _close(y2[b:b + 1], y2_b, f"row {b} continued outputs")
        for i, (u, w) in enumerate(zip(_state_tensors(s2.map(lambda t, b=b: t[b:b + 1])),
                                       _state_tensors(s2_b))):
            _close(u.to(w.dtype), w, f"row {b} state tensor {i}")
        gs = torch.autograd.grad(y_b.square().sum() + y2_b.square().sum(), params,
                                 allow_unused=True)
        g_alone = [a if g is None else a + g for a, g in zip(g_alone, gs)]
    for (n, _), a, b in zip(layer.named_parameters(), g_batch, g_alone):
        _close(torch.zeros_like(b) if a is None else a, b, f"d/d{n}")
    initial = [g for (n, _), g in zip(layer.named_parameters(), g_batch)
               if n.startswith(("vec_w", "gate_w", "main_w", "mem_w"))]
    assert any(g is not None and bool(g.abs().max() > 0) for g in initial)  # they do get one


def test_l2_normalize_equals_f_normalize_and_is_smooth_at_zero():
    import torch.nn.functional as F

    from nestlearn.layers.norm import l2_normalize

    x = torch.randn(3, 5, dtype=DT)
    x[1] = 0.0  # a padded position
    x.requires_grad_(True)
    _close(l2_normalize(x), F.normalize(x, dim=-1))
    w = torch.randn(3, 5, dtype=DT)
    (g_ours,) = torch.autograd.grad((l2_normalize(x) * w).sum(), x)
    (g_ref,) = torch.autograd.grad((F.normalize(x, dim=-1) * w).sum(), x)
    _close(g_ours, g_ref, "first-order gradient")
    (g,) = torch.autograd.grad(l2_normalize(x).sin().sum(), x, create_graph=True)
    (gg,) = torch.autograd.grad(g.square().sum(), x)
    assert torch.isfinite(g).all() and torch.isfinite(gg).all()
    assert torch.count_nonzero(gg[1]) == 0


def test_causal_conv_streams():
    conv = CausalDepthwiseConv(5, 4).to(DT)
    x = torch.randn(2, 9, 5, dtype=DT)
    y, _ = conv(x)
    y1, s = conv(x[:, :4])
    y2, _ = conv(x[:, 4:], state=s)
    _close(torch.cat([y1, y2], 1), y)
    manual = x + sum(conv.weight[:, 0, j] * torch.nn.functional.pad(x, (0, 0, 3 - j, 0))[:, :9]
                 for j in range(4))
    _close(y, manual, "depthwise causal conv")


@pytest.mark.parametrize("K", [1, 2, 4])
def test_short_causal_conv_equals_conv1d(K):
    """Short inputs (a chunk) take ``_ShortCausalConv`` (shifted multiply-adds, hand-written
    backward), long ones ``conv1d``: both give the same outputs and gradients (into the input, the
    carried state and the taps), and the short path passes gradcheck and gradgradcheck."""
    from nestlearn.layers.conv import _SHORT, _ShortCausalConv

    g = torch.Generator().manual_seed(K)
    C, T = 6, 5
    assert T <= _SHORT
    xp = torch.randn(2, T + K - 1, C, generator=g, dtype=DT, requires_grad=True)
    w = torch.randn(C, 1, K, generator=g, dtype=DT, requires_grad=True)
    y = _ShortCausalConv.apply(xp, w)
    ref = xp[:, K - 1:] + torch.nn.functional.conv1d(xp.transpose(1, 2), w,
                                                     groups=C).transpose(1, 2)
    _close(y, ref, "outputs")
    cot = torch.randn(y.shape, generator=g, dtype=DT)
    for a, b, n in zip(torch.autograd.grad(y, (xp, w), cot), torch.autograd.grad(ref, (xp, w), cot),
                       ("input", "taps")):
        assert b.abs().max() > 0
        _close(a, b, f"d/d{n}")
    assert torch.autograd.gradcheck(_ShortCausalConv.apply, (xp, w))
    assert torch.autograd.gradgradcheck(_ShortCausalConv.apply, (xp, w))
    # the layer picks the path by length; a long input through conv1d streams into a short one
    conv = CausalDepthwiseConv(C, K).to(DT)
    x = torch.randn(1, _SHORT + 3, C, generator=g, dtype=DT)
    y_full, _ = conv(x)
    y1, s = conv(x[:, :_SHORT + 1])
    y2, _ = conv(x[:, _SHORT + 1:], state=s)
    _close(torch.cat([y1, y2], 1), y_full, "long then short")


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(d_model=10, num_heads=3), "divisible"),
        (dict(rule="adam"), "rule"),
        (dict(momentum="yes"), "momentum"),
        (dict(q_projection="dynamic"), "q_projection"),
        (dict(chunk_size=0), "chunk_size"),
        (dict(eta_max=0.0), "eta_max"),
    ],
)
def test_smt_invalid_config(kwargs, match):
    kw = dict(d_model=D, num_heads=H) | kwargs
    with pytest.raises(ValueError, match=match):
        SelfModifyingTitans(kw.pop("d_model"), kw.pop("num_heads"), **kw)


def test_silu_grad_times_matches_formula():
    """``_SiluGradTimes(g, h) = g * silu'(h)`` (the SMT layer's fused hidden-layer error): values
    equal the elementwise formula, gradients pass gradcheck and, through the differentiable
    backward, gradgradcheck (HOPE's second-order meta-gradient needs it)."""
    from nestlearn.memory.stacked import _SiluGradTimes

    gen = torch.Generator().manual_seed(0)
    g = torch.randn(3, 5, generator=gen, dtype=DT, requires_grad=True)
    h = (3 * torch.randn(3, 5, generator=gen, dtype=DT)).requires_grad_()
    s = torch.sigmoid(h)
    _close(_SiluGradTimes.apply(g, h), g * (s + h * s * (1 - s)), "g * silu'(h)")
    assert torch.autograd.gradcheck(_SiluGradTimes.apply, (g, h))
    assert torch.autograd.gradgradcheck(_SiluGradTimes.apply, (g, h))
