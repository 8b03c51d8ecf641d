"""The functional rules trace into one graph (no graph breaks), so they can be torch.compile'd."""

from __future__ import annotations

import functools

import pytest
import torch

from nestlearn.optim import functional as F

DT = torch.float64


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(6, 9, generator=g, dtype=DT) for _ in range(4)]


CASES = {
    "delta_muon": lambda G, a, b, c: F.associative_momentum(
        G, a, b, momentum=0.9, objective="l2", decay=0.5, preconditioner="rms",
        output="newton_schulz"),
    "deep_momentum": lambda G, a, b, c: F.deep_momentum(
        G, a, b[:, :3].contiguous(), c[:3].contiguous(), retention=1.0, inner_lr=0.1,
        memory_lr=0.1, output="sign"),
    "m3": lambda G, a, b, c: F.m3_direction(
        G, a, b, c, 3, beta1=0.9, beta2=0.99, alpha=0.5, eps=1e-8, ns_steps=5),
}


@pytest.mark.parametrize("name", list(CASES))
def test_functional_rule_has_no_graph_break(name):
    fn = CASES[name]
    eager_in = _inputs()
    eager_in[2] = eager_in[2].abs()  # the second moment (rms preconditioner, M3's V)
    compiled_in = [t.clone() for t in eager_in]
    want = fn(*eager_in)
    torch._dynamo.reset()
    got = torch.compile(functools.partial(fn), backend="eager", fullgraph=True)(*compiled_in)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for a, b in zip(eager_in, compiled_in):  # in-place state updates happen in the graph too
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
