"""FSDP2 in one process (a 1-rank mesh, gloo): fast checks of the FSDP code paths of the loop.

``fully_shard`` replaces every parameter of a sharded module by a new DTensor parameter even on
one rank, so the bugs of parameter identity (the slow CMS level hook once held the pre-shard
parameters and HOPE drifted by ~1e-3 from step 2) show here without launching processes; the
2-process comparison is ``test_distributed.py::test_two_processes_equal_one[fsdp-hope]`` (slow).
"""

import pytest
import torch
from conftest import debug_config
from safetensors.torch import load_file
from test_distributed import IN_CONTEXT, _free_port

from nestlearn.train import train

EXTRA = ["train.steps=5", "train.precision=fp64", "train.eval_batches=1"]
# debug_cpu's HOPE: CMS level 0 always on, level 1 slow (applied at step 4 only)
SLOW_ONLY: list[str] = []
# IN_CONTEXT adds an in-context level: HopeModel differentiates inside its forward, which
# FSDP2's backward hooks must not reshard under it


@pytest.fixture
def one_rank_env(monkeypatch):
    for k, v in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": str(_free_port())}.items():
        monkeypatch.setenv(k, v)


@pytest.mark.parametrize("model", [pytest.param(SLOW_ONLY, id="slow-level"),
                                   pytest.param(IN_CONTEXT, id="in-context-level")])
def test_fsdp_one_rank_equals_plain_and_resumes(tmp_path, debug_overrides, one_rank_env, model):
    """HOPE under FSDP2 (killed after the step-3 checkpoint, when the slow level holds a partial
    gradient sum, then resumed) gives the losses and final weights of the plain run."""
    plain = train(debug_config(debug_overrides, tmp_path / "plain", *EXTRA, *model,
                               "train.checkpoint_every=0"), progress=False)
    config = debug_config(debug_overrides, tmp_path / "fsdp", *EXTRA, *model,
                          "train.checkpoint_every=3", "train.parallel=fsdp")
    first = train(config, progress=False, interrupt_after=3)
    assert first.interrupted and first.step == 3
    resumed = train(config, progress=False)
    assert resumed.resumed_from == 3 and resumed.step == 5

    for a, b in zip(resumed.losses, plain.losses, strict=True):
        assert abs(a - b) <= 1e-12 * abs(b), (resumed.losses, plain.losses)
    want = load_file(plain.model_dir / "model.safetensors")
    got = load_file(resumed.model_dir / "model.safetensors")
    assert want.keys() == got.keys()
    for name, t in want.items():
        torch.testing.assert_close(got[name], t, rtol=1e-12, atol=1e-12, msg=name)
    # the slow level (applied at step 4 only) did move: the check above is not vacuous
    first_slow = load_file(first.run_dir / "checkpoints" / "step-00000003" / "model.safetensors")
    slow = f"model.layers.0.cms.levels.{2 if model else 1}.w_up"  # the last level is slow
    assert not torch.equal(first_slow[slow], got[slow])
