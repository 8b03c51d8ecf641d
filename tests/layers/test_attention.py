"""nestlearn.layers.attention: against a naive softmax reference, causality, streaming, padding.

Dimension legend: B batch, T tokens, D width, H heads, G key/value heads, Dh head width.
"""

import math

import pytest
import torch

from nestlearn.layers import Attention, RMSNorm, SwiGLU, swiglu_hidden_size

D = 24
DTYPE = torch.float64


def make_attention(*, num_heads=4, num_kv_heads=None, window=None, head_dim=None):
    layer = Attention(
        D, num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim, window=window
    ).to(DTYPE)
    # Asymmetric weights, so a transposed or mis-grouped head cannot go unnoticed.
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn_like(p) / math.sqrt(p.shape[-1]))
    return layer


def naive_attention(layer, x, *, mask=None):
    """softmax(q k^T / sqrt(Dh) + M) v written out with loops, RoPE as complex rotations.

    ``mask: [B, T]`` 0/1 padding (1 = real). RoPE positions count real tokens only; a query sees key
    j iff j <= i, i - j < window and key j is real (a padded query sees itself only).
    """
    B, T, _ = x.shape
    H, G, Dh = layer.num_heads, layer.num_kv_heads, layer.head_dim
    q = (x @ layer.q_proj.weight.T).view(B, T, H, Dh)
    k = (x @ layer.k_proj.weight.T).view(B, T, G, Dh)
    v = (x @ layer.v_proj.weight.T).view(B, T, G, Dh)
    real = torch.ones(B, T, dtype=torch.bool) if mask is None else mask.bool()

    def rope(t, pos):
        # Pair i with i + Dh/2 as the complex number (t_i + 1j t_{i+Dh/2}), rotate by pos * theta_i.
        half = Dh // 2
        theta = torch.tensor([10000.0 ** (-2 * i / Dh) for i in range(half)], dtype=DTYPE)
        z = torch.complex(t[..., :half], t[..., half:]) * torch.exp(1j * pos * theta)
        return torch.cat([z.real, z.imag], dim=-1)

    out = torch.zeros(B, T, H, Dh, dtype=DTYPE)
    for b in range(B):
        pos = torch.cumsum(real[b].long(), 0) - 1
        for i in range(T):
            for h in range(H):
                g = h // (H // G)
                qi = rope(q[b, i, h], max(int(pos[i]), 0))
                scores = torch.full((T,), -math.inf, dtype=DTYPE)
                for j in range(T):
                    visible = j <= i and (layer.window is None or i - j < layer.window)
                    visible = visible and (bool(real[b, j]) or not bool(real[b, i]))
                    if not bool(real[b, i]):
                        visible = j == i
                    if visible:
                        kj = rope(k[b, j, g], max(int(pos[j]), 0))
                        scores[j] = qi @ kj / math.sqrt(Dh)
                out[b, i, h] = torch.softmax(scores, 0) @ v[b, :, g]
    return out.reshape(B, T, H * Dh) @ layer.o_proj.weight.T


CONFIGS = [
    pytest.param({}, id="mha"),
    pytest.param({"num_kv_heads": 2}, id="gqa2"),
    pytest.param({"num_kv_heads": 1}, id="mqa"),
    pytest.param({"window": 3}, id="window3"),
    pytest.param({"num_kv_heads": 2, "window": 1}, id="gqa2-window1"),
    pytest.param({"num_heads": 2, "head_dim": 6}, id="head-dim6"),
]


@pytest.mark.parametrize("kwargs", CONFIGS)
@pytest.mark.parametrize("padded", [False, True], ids=["nopad", "leftpad"])
def test_matches_naive_reference(kwargs, padded):
    layer = make_attention(**kwargs)
    x = torch.randn(2, 7, D, dtype=DTYPE)
    mask = None
    if padded:
        mask = torch.ones(2, 7, dtype=torch.long)
        mask[1, :3] = 0
    y, _ = layer(x, attention_mask=mask)
    torch.testing.assert_close(y, naive_attention(layer, x, mask=mask), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kwargs", CONFIGS)
def test_causal(kwargs):
    layer = make_attention(**kwargs)
    x = torch.randn(2, 9, D, dtype=DTYPE)
    x2 = x.clone()
    x2[:, 5:] = torch.randn(2, 4, D, dtype=DTYPE)
    y, _ = layer(x)
    y2, _ = layer(x2)
    torch.testing.assert_close(y[:, :5], y2[:, :5], rtol=0, atol=0)
    assert not torch.allclose(y[:, 5:], y2[:, 5:])


@pytest.mark.parametrize("kwargs", CONFIGS)
@pytest.mark.parametrize("splits", [(1,) * 10, (4, 6), (3, 1, 5, 1), (9, 1)], ids=str)
@pytest.mark.parametrize("padded", [False, True], ids=["nopad", "leftpad"])
def test_streaming_equals_one_pass(kwargs, splits, padded):
    layer = make_attention(**kwargs)
    x = torch.randn(3, 10, D, dtype=DTYPE)
    mask = None
    if padded:
        mask = torch.ones(3, 10, dtype=torch.long)
        mask[0, :2] = 0
        mask[2, :6] = 0
    y_full, state_full = layer(x, attention_mask=mask)
    state, ys, start = None, [], 0
    for n in splits:
        # The full-so-far mask, as generate() passes it.
        piece_mask = None if mask is None else mask[:, : start + n]
        y, state = layer(x[:, start : start + n], state=state, attention_mask=piece_mask)
        ys.append(y)
        start += n
    torch.testing.assert_close(torch.cat(ys, dim=1), y_full, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(state.keys, state_full.keys, rtol=1e-10, atol=1e-10)
    assert state.num_seen == 10


def test_mask_of_new_tokens_only_is_accepted():
    """A caller may pass only the new tokens' mask: the state remembers which keys were pads."""
    layer = make_attention(window=4)
    x = torch.randn(2, 8, D, dtype=DTYPE)
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, :3] = 0
    y_full, _ = layer(x, attention_mask=mask)
    y1, s = layer(x[:, :5], attention_mask=mask[:, :5])
    y2, _ = layer(x[:, 5:], state=s, attention_mask=mask[:, 5:])
    torch.testing.assert_close(torch.cat([y1, y2], 1), y_full, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    "kwargs", [{}, {"num_kv_heads": 2, "window": 3}], ids=["mha", "gqa-window"]
)
def test_left_padded_rows_equal_unpadded(kwargs):
    layer = make_attention(**kwargs)
    a = torch.randn(1, 6, D, dtype=DTYPE)
    b = torch.randn(1, 4, D, dtype=DTYPE)
    # Padding content is arbitrary; it must not leak into real positions.
    batch = torch.cat([a, torch.cat([torch.randn(1, 2, D, dtype=DTYPE) * 100, b], 1)], 0)
    mask = torch.tensor([[1] * 6, [0, 0] + [1] * 4])
    y, _ = layer(batch, attention_mask=mask)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y[0:1], layer(a)[0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(y[1:2, 2:], layer(b)[0], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("window", [1, 2, 5])
def test_sliding_window_state_is_bounded(window):
    layer = make_attention(window=window)
    state = None
    _, state = layer(torch.randn(2, 11, D, dtype=DTYPE), state=state)
    assert state.keys.shape[2] == min(window - 1, 11)
    for _ in range(6):
        _, state = layer(torch.randn(2, 1, D, dtype=DTYPE), state=state)
        assert state.keys.shape == (2, layer.num_kv_heads, window - 1, layer.head_dim)
        assert state.values.shape == state.keys.shape
    assert state.num_seen == 17


def test_explicit_position_ids_equal_derived_ones():
    layer = make_attention()
    x = torch.randn(2, 5, D, dtype=DTYPE)
    y, _ = layer(x)
    y_shift, _ = layer(x, position_ids=torch.arange(3, 8).unsqueeze(0))
    # RoPE is relative: shifting every position leaves the attention output unchanged.
    torch.testing.assert_close(y_shift, y, rtol=1e-10, atol=1e-10)
    y_perm, _ = layer(x, position_ids=torch.tensor([[0, 2, 1, 3, 4]]))
    assert not torch.allclose(y_perm, y)


def test_state_map_and_detach():
    layer = make_attention(num_kv_heads=2)
    x = torch.randn(3, 4, D, dtype=DTYPE)
    _, state = layer(x)
    picked = state.map(lambda t: t[torch.tensor([2, 0])])
    torch.testing.assert_close(picked.keys[0], state.keys[2])
    assert picked.next_position.tolist() == [4, 4]
    assert state.keys.requires_grad and not state.detach().keys.requires_grad


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"num_heads": 4, "num_kv_heads": 3}, "num_kv_heads"),
        ({"num_heads": 5}, "hidden_size"),
        ({"num_heads": 4, "head_dim": 5}, "head_dim"),
        ({"num_heads": 4, "window": 0}, "window"),
        ({"num_heads": 0}, "num_heads"),
        ({"num_heads": 4, "dropout": 1.0}, "dropout"),
    ],
)
def test_invalid_arguments_raise(kwargs, field):
    with pytest.raises(ValueError, match=field):
        Attention(D, **kwargs)


def test_bad_attention_mask_shape_raises():
    layer = make_attention()
    x = torch.randn(2, 5, D, dtype=DTYPE)
    with pytest.raises(ValueError, match="attention_mask"):
        layer(x, attention_mask=torch.ones(2, 4))
    with pytest.raises(ValueError, match="attention_mask"):
        layer(x, attention_mask=torch.ones(2, 1, 5, 5))


def test_rmsnorm_and_swiglu_formulas():
    x = torch.randn(2, 3, D, dtype=DTYPE)
    norm = RMSNorm(D, eps=1e-5).to(DTYPE)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(D, dtype=DTYPE))
    expected = x / torch.sqrt((x**2).mean(-1, keepdim=True) + 1e-5) * norm.weight
    torch.testing.assert_close(norm(x), expected, rtol=1e-12, atol=1e-12)
    mlp = SwiGLU(D, hidden_size=40).to(DTYPE)
    g, u, d = mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight
    h = x @ g.T
    torch.testing.assert_close(
        mlp(x), (h * torch.sigmoid(h) * (x @ u.T)) @ d.T, rtol=1e-12, atol=1e-12
    )
    assert swiglu_hidden_size(1024) == 2816 and swiglu_hidden_size(1536) == 4096
