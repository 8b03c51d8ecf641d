"""Two CPU processes (gloo DDP) give the losses of one process on the same global batch."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from conftest import debug_config

from nestlearn.train import train


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _losses(run) -> list[float]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if "loss" in r]


# debug_cpu's HOPE plus an in-context CMS level (inner lr 0.1, period 16 tokens): HopeModel then
# differentiates inside its forward (second-order meta-gradients); its last level stays slow.
IN_CONTEXT = ["model.cms_hidden_sizes=[64,64,64]", "model.cms_periods=[0,16,1024]",
              "model.cms_inner_lrs=[0.0,0.1,0.0]"]


# 2-process FSDP2 runs measured 18-24 s each here (2 busy cores), hence slow; the FSDP code paths
# of HOPE are covered fast, on one rank, by test_fsdp.py.
@pytest.mark.parametrize(("parallel", "family", "model"), [
    pytest.param("ddp", "hope", [], id="ddp-hope"),
    pytest.param("fsdp", "transformer", [], id="fsdp-transformer", marks=pytest.mark.slow),
    pytest.param("fsdp", "hope", [], id="fsdp-hope", marks=pytest.mark.slow),
    pytest.param("fsdp", "hope", IN_CONTEXT, id="fsdp-hope-in-context", marks=pytest.mark.slow),
])
def test_two_processes_equal_one(tmp_path, debug_overrides, parallel, family, model):
    extra = ["train.steps=5", "train.precision=fp64", "train.checkpoint_every=0", *model]
    single = train(debug_config(debug_overrides, tmp_path / "single", *extra, family=family),
                   progress=False)

    port = _free_port()
    cmd = [sys.executable, "-m", "nestlearn", "train", "debug_cpu", "--family", family,
           "--quiet", "--out", str(tmp_path / "ddp"), "--set", *debug_overrides, *extra,
           f"train.parallel={parallel}"]
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs

    ddp = _losses(tmp_path / "ddp")
    assert len(ddp) == 5
    for a, b in zip(ddp, single.losses, strict=True):
        assert abs(a - b) <= 1e-12 * abs(b), (ddp, single.losses)
    config = json.loads((tmp_path / "ddp" / "train_config.json").read_text())
    assert config["world_size"] == 2 and config["parallel"] == parallel


@pytest.mark.slow
def test_sigterm_checkpoints_and_resumes(tmp_path, debug_overrides):
    """A terminated run finishes its step, checkpoints it and exits; rerunning completes it."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "nestlearn", "train", "debug_cpu", "--quiet", "--out", str(out),
           "--steps", "400", "--set", *debug_overrides, "train.checkpoint_every=0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.is_file()
                                          and metrics.read_text().count("\n") > 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, output
    done = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    checkpoint = out / "checkpoints" / f"step-{max(done):08d}"
    assert (checkpoint / "meta.json").is_file()  # nothing lost: the last finished step is saved
