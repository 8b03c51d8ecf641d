"""The window samplers (``nestlearn.data.samplers``): shapes, targets, order, resume, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nestlearn.data import RandomWindows, SequentialWindows, TokenArray, eval_windows


@pytest.fixture
def stream() -> TokenArray:
    return TokenArray.from_documents([list(range(1, 40)), list(range(50, 120)), [7] * 30], eot_id=0)


def test_random_windows_shapes_targets_and_resume(stream):
    sampler = RandomWindows(stream, seq_len=16, batch_size=4, seed=3)
    batches = [next(sampler) for _ in range(5)]
    for b in batches:
        assert b.inputs.shape == b.targets.shape == (4, 16) and b.inputs.dtype == torch.int64
        for row, pos in zip(b.inputs, b.positions, strict=True):
            assert row.tolist() == np.asarray(stream.ids[pos : pos + 16]).tolist()
        assert torch.equal(b.inputs[:, 1:], b.targets[:, :-1])
    assert int(max(b.positions.max() for b in batches)) <= len(stream) - 17
    # resume from the state after two batches: the next three are identical
    fresh = RandomWindows(stream, seq_len=16, batch_size=4, seed=3)
    next(fresh), next(fresh)
    state = fresh.state_dict()
    resumed = RandomWindows(stream, seq_len=16, batch_size=4, seed=999)
    resumed.load_state_dict(state)
    for b in batches[2:]:
        assert torch.equal(next(resumed).inputs, b.inputs)
    other_seed = RandomWindows(stream, seq_len=16, batch_size=4, seed=4)
    assert not torch.equal(next(other_seed).positions, batches[0].positions)


def test_sequential_windows_stream_in_order_and_resume(stream):
    one = list(SequentialWindows(stream, seq_len=10, batch_size=1))
    flat = torch.cat([b.inputs[0] for b in one]).tolist()
    assert flat == np.asarray(stream.ids[: len(flat)]).tolist()
    lanes = SequentialWindows(stream, seq_len=5, batch_size=3, epochs=2)
    got = list(lanes)
    assert len(got) == len(lanes) == 2 * lanes.batches_per_epoch
    for k in range(lanes.batches_per_epoch - 1):  # each row continues the same row
        assert torch.equal(got[k + 1].positions, got[k].positions + 5)
    assert torch.equal(got[0].positions, got[lanes.batches_per_epoch].positions)
    with pytest.raises(StopIteration):
        next(lanes)
    again = SequentialWindows(stream, seq_len=5, batch_size=3, epochs=2)
    for _ in range(4):
        next(again)
    resumed = SequentialWindows(stream, seq_len=5, batch_size=3, epochs=2)
    resumed.load_state_dict(again.state_dict())
    assert [b.inputs.tolist() for b in resumed] == [b.inputs.tolist() for b in got[4:]]
    forever = SequentialWindows(stream, seq_len=5, batch_size=3, epochs=None)
    assert sum(1 for _, _ in zip(range(100), forever, strict=False)) == 100


def test_eval_windows_score_every_target_once(stream):
    for seq_len, batch_size in [(7, 2), (10, 3), (len(stream) - 1, 1)]:
        targets = [
            b.targets.reshape(-1)
            for b in eval_windows(stream, seq_len=seq_len, batch_size=batch_size)
        ]
        assert torch.cat(targets).tolist() == np.asarray(stream.ids[1:]).tolist()


def test_sampler_errors(stream):
    with pytest.raises(ValueError, match="fewer than seq_len"):
        RandomWindows(stream, seq_len=len(stream), batch_size=1)
    with pytest.raises(ValueError, match="seq_len must be a positive integer"):
        RandomWindows(stream, seq_len=0, batch_size=1)
    with pytest.raises(ValueError, match="batch_size"):
        next(eval_windows(stream, seq_len=4, batch_size=0))
    with pytest.raises(ValueError, match="too short"):
        SequentialWindows(stream, seq_len=100, batch_size=2)
    with pytest.raises(ValueError, match="expected 'random'"):
        RandomWindows(stream, seq_len=4, batch_size=1).load_state_dict(
            {"kind": "sequential", "step": 1}
        )
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        RandomWindows(stream, seq_len=4, batch_size=1, seed=-1)
    with pytest.raises(ValueError, match="epochs"):
        SequentialWindows(stream, seq_len=4, epochs=0)
