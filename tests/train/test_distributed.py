"""Two CPU processes (gloo DDP) give the losses of one process on the same global batch."""

import json
import os
import socket
import subprocess
import sys

from conftest import debug_config

from nestlearn.train import train


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _losses(run) -> list[float]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if "loss" in r]


def test_ddp_two_processes_equal_one(tmp_path, debug_overrides):
    extra = ["train.steps=5", "train.precision=fp64", "train.checkpoint_every=0"]
    single = train(debug_config(debug_overrides, tmp_path / "single", *extra), progress=False)

    port = _free_port()
    cmd = [sys.executable, "-m", "nestlearn", "train", "debug_cpu", "--quiet", "--out",
           str(tmp_path / "ddp"), "--set", *debug_overrides, *extra]
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
    assert config["world_size"] == 2 and config["parallel"] == "ddp"
