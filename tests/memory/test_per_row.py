"""Per-row chunk offsets (``MemoryState.offset`` a tensor ``[B]``): each row of a batch keeps its
own chunk grid. A batch equals its rows run one by one with their own (int) offsets, and the
chunked path equals the reference, outputs, final states and gradients, in float64."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from nestlearn.memory import (
    MemoryState,
    anchored_offsets,
    memory_chunked,
    memory_reference,
    written_rows,
)

from ._cases import Rule, call, grads, make_inputs, scalar_of, state_tensors

RULES = [
    Rule("residual_mlp", "huber", "dgd", "chunk_start", momentum=True, retention=True),
    Rule("linear", "l2", "gd", "per_token", momentum=True, retention=True),
    Rule("mlp", "l2", "dgd", "chunk_start", momentum=False, retention=True),
]
C = 4
OFFSETS = [0, 3, 1]  # three rows, three phases of a chunk of 4


def _close(a, b, what):
    assert a.shape == b.shape, what
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, msg=lambda m: f"{what}: {m}")


def _chunked_equals_reference(rule, leaves, st: MemoryState, write_grad: str):
    """Run both paths from ``st``; compare outputs, final states and the gradients of every
    leaf; return both final states and the chunked outputs."""
    o_fast, s_fast = call(memory_chunked, rule, leaves, st, C, write_grad=write_grad)
    o_ref, s_ref = call(memory_reference, rule, leaves, st, C, write_grad=write_grad)
    _close(o_fast, o_ref, "outputs")
    for i, (a, b) in enumerate(zip(state_tensors(s_ref), state_tensors(s_fast))):
        _close(a, b, f"state tensor {i}")
    g_fast = grads(leaves, scalar_of(o_fast, s_fast))
    g_ref = grads(leaves, scalar_of(o_ref, s_ref))
    for name in g_ref:
        _close(g_ref[name], g_fast[name], f"d/d{name}")
    return o_fast.detach(), s_fast, s_ref


def _with_offsets(state: MemoryState | None, offsets, leaves) -> MemoryState:
    if state is None:  # the linear rules start from zeros; give them an explicit state
        B, _, H, D = leaves["k"].shape
        state = MemoryState.zeros_linear(B, H, D, leaves["v"].shape[-1], dtype=leaves["k"].dtype)
    return dataclasses.replace(state, offset=torch.tensor(offsets))


def _row(state: MemoryState, b: int) -> MemoryState:
    """Row ``b`` of a batched state, with its offset as an int."""

    def pick(ts):
        return None if ts is None else tuple(t[b:b + 1] if t.ndim == 4 else t for t in ts)

    return MemoryState(weights=pick(state.weights), momentum=pick(state.momentum),
                       chunk_start=pick(state.chunk_start), offset=int(state.offset[b]))


@pytest.mark.parametrize("write_grad", ["full", "detach"])
@pytest.mark.parametrize("T", [1, 3, 4, 5, 9, 13])
@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.id)
def test_batch_with_row_offsets_equals_rows_alone_and_reference(rule, T, write_grad):
    leaves, state = make_inputs(rule, B=3, T=T, initial_state=True)
    st = _with_offsets(state, OFFSETS, leaves)
    o_fast, s_fast, s_ref = _chunked_equals_reference(rule, leaves, st, write_grad)
    assert s_fast.offset.tolist() == s_ref.offset.tolist() == [(o + T) % C for o in OFFSETS]
    # each row alone, with its own offset as an int, through the uniform path
    names = ("q", "k", "v", "lr", "alpha", "beta")
    for b in range(3):
        part = {n: None if leaves[n] is None else leaves[n][b:b + 1] for n in names}
        o_b, s_b = call(memory_chunked, rule, part, _row(st, b), C, write_grad=write_grad)
        _close(o_fast[b:b + 1], o_b, f"row {b} outputs")
        assert s_b.offset == s_fast.offset[b]
        for i, (x, y) in enumerate(zip(state_tensors(s_b), state_tensors(_row(s_fast, b)))):
            _close(x, y, f"row {b} state tensor {i}")


def test_row_offsets_stream_in_pieces():
    """Per-row offsets are carried: two calls equal one."""
    rule = RULES[0]
    leaves, state = make_inputs(rule, B=3, T=11, initial_state=True)
    st = _with_offsets(state, OFFSETS, leaves)
    o_full, s_full = call(memory_chunked, rule, leaves, st, C)
    names = ("q", "k", "v", "lr", "alpha", "beta")
    first = {n: None if leaves[n] is None else leaves[n][:, :6] for n in names}
    rest = {n: None if leaves[n] is None else leaves[n][:, 6:] for n in names}
    o1, s1 = call(memory_chunked, rule, first, st, C)
    o2, s2 = call(memory_chunked, rule, rest, s1, C)
    _close(o_full, torch.cat([o1, o2], 1), "outputs")
    assert s2.offset.tolist() == s_full.offset.tolist()
    for i, (a, b) in enumerate(zip(state_tensors(s_full), state_tensors(s2))):
        _close(a, b, f"state tensor {i}")


def test_equal_row_offsets_take_the_uniform_path_and_stay_a_tensor():
    rule = RULES[0]
    leaves, state = make_inputs(rule, B=2, T=6, initial_state=True)
    o_t, s_t = call(memory_chunked, rule, leaves, _with_offsets(state, [1, 1], leaves), C)
    o_i, s_i = call(memory_chunked, rule, leaves, dataclasses.replace(state, offset=1), C)
    _close(o_t, o_i, "outputs")
    assert isinstance(s_t.offset, torch.Tensor) and s_t.offset.tolist() == [3, 3]
    assert s_i.offset == 3


@pytest.mark.parametrize("impl", [memory_chunked, memory_reference], ids=["chunked", "reference"])
def test_bad_row_offsets_raise(impl):
    rule = RULES[0]
    leaves, state = make_inputs(rule, B=2, T=3, initial_state=True)
    with pytest.raises(ValueError, match="offset"):  # one per row
        call(impl, rule, leaves, _with_offsets(state, [0, 1, 2], leaves), C)
    with pytest.raises(ValueError, match="offset"):  # below the chunk size
        call(impl, rule, leaves, _with_offsets(state, [0, 4], leaves), C)
    with pytest.raises(ValueError, match="offset"):
        dataclasses.replace(state, offset=torch.tensor([0, -1]))
    with pytest.raises(TypeError, match="offset"):
        dataclasses.replace(state, offset=torch.tensor([0.0, 1.0]))


def test_map_selects_row_offsets():
    """Beam search and batch selection reorder the offsets with the weights."""
    w = torch.randn(3, 1, 2, 2)
    st = MemoryState(weights=(w,), offset=torch.tensor([0, 1, 2]))
    picked = st.map(lambda t: t.index_select(0, torch.tensor([2, 0])))
    assert picked.offset.tolist() == [2, 0]
    assert picked.row_offsets(2) == [2, 0]
    assert MemoryState(weights=(w,), offset=1).row_offsets(3) == [1, 1, 1]
    as_double = st.map(lambda t: t.to(torch.float64))  # a dtype cast keeps integer offsets
    assert as_double.offset.dtype == torch.long and as_double.weights[0].dtype == torch.float64


PADS = [0, 2, 5]  # leading "padding" tokens (lr = 0, alpha = 1) of three rows


@pytest.mark.parametrize("T", [5, 8, 11])
@pytest.mark.parametrize("rule", RULES[::2], ids=lambda r: r.id)
def test_written_rows_keep_the_initial_state_in_the_graph_under_detach(rule, T):
    """``MemoryState.written``: with ``write_grad="detach"`` a chunk end cuts only rows that
    have written (lr > 0). Rows with 0/2/5 leading tokens that write nothing, anchored like a
    left-padded batch: chunked == reference (outputs, states, flags, gradients), and each row
    equals its real tokens run alone, including the gradient reaching the shared initial
    weights (without the flags the padding's chunk ends cut it)."""
    leaves, state = make_inputs(rule, B=3, T=T)  # initial weights [H, O, I], shared
    with torch.no_grad():
        for b, p in enumerate(PADS):
            leaves["lr"][b, :p] = 0.0
            if leaves["alpha"] is not None:
                leaves["alpha"][b, :p] = 1.0
    keep = torch.tensor([[False] * p + [True] * (T - p) for p in PADS])
    st = dataclasses.replace(state, offset=anchored_offsets(keep, C), written=written_rows(keep))
    assert st.written.tolist() == [False] * 3
    o_fast, s_fast, s_ref = _chunked_equals_reference(rule, leaves, st, "detach")
    assert s_fast.written.tolist() == s_ref.written.tolist() == [T > p for p in PADS]
    # each row alone from its first real token; the initial weights sum the rows' gradients
    names = ("q", "k", "v", "lr", "alpha", "beta")
    weights = [leaves[n] for n in ("W0", "W1")]
    total_alone = 0.0
    for b, p in enumerate(PADS):
        part = {n: None if leaves[n] is None else leaves[n][b:b + 1, p:] for n in names}
        o_b, s_b = call(memory_chunked, rule, part, state, C, write_grad="detach")
        _close(o_fast[b:b + 1, p:], o_b, f"row {b} outputs")
        total_alone = total_alone + o_b.square().sum()
    o_fast, _ = call(memory_chunked, rule, leaves, st, C, write_grad="detach")  # fresh graph
    total = sum(o_fast[b:b + 1, p:].square().sum() for b, p in enumerate(PADS))
    g_batch = torch.autograd.grad(total, weights)
    g_alone = torch.autograd.grad(total_alone, weights)
    for i, (a, b) in enumerate(zip(g_batch, g_alone)):
        assert bool(b.abs().max() > 0)
        _close(a, b, f"d/dW{i} (initial weights)")


def test_written_flags_are_validated_and_follow_row_selection():
    w = torch.randn(3, 1, 2, 2)
    st = MemoryState(weights=(w,), written=torch.tensor([True, False, False]))
    picked = st.map(lambda t: t.index_select(0, torch.tensor([1, 0])).to(torch.float64))
    assert picked.written.dtype == torch.bool and picked.written.tolist() == [False, True]
    with pytest.raises(TypeError, match="written"):
        MemoryState(weights=(w,), written=torch.tensor([1, 0, 0]))
    rule = RULES[0]
    leaves, state = make_inputs(rule, B=2, T=3)
    with pytest.raises(ValueError, match="written"):
        call(memory_chunked, rule, leaves,
             dataclasses.replace(state, written=torch.zeros(3, dtype=torch.bool)), C)
    assert written_rows(torch.ones(2, 4, dtype=torch.bool)) is None
