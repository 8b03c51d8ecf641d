"""The demo and levels verbs of the `nestlearn` command: reports written, errors are one line."""

import torch

from nestlearn import cli
from nestlearn.memory import MemoryState, memory_chunked, memory_read


def test_demo_writes_report(tmp_path, capsys):
    assert cli.main(["demo", "--out", str(tmp_path)]) == 0
    report = (tmp_path / "report.md").read_text()
    assert "Fast path == reference" in report
    assert (tmp_path / "recall.png").stat().st_size > 1000
    assert "report:" in capsys.readouterr().out


def test_memory_read_matches_the_next_per_token_read():
    """Reading the final state equals what a following token would read before writing."""
    B, T, H, D = 1, 6, 2, 3
    q, k, v = (torch.randn(B, T, H, D, dtype=torch.float64) for _ in range(3))
    lr = torch.rand(B, T, H, dtype=torch.float64)
    _, state = memory_chunked(q, k, v, lr, chunk_size=2)
    expected = torch.einsum("bhij,bthj->bthi", state.weights[0], q)
    torch.testing.assert_close(memory_read(q, state), expected)
    shared = MemoryState(weights=(state.weights[0][0],))  # [H, O, I]
    torch.testing.assert_close(memory_read(q, shared), expected)


def test_levels_command_prints_the_table(capsys):
    assert cli.main(["levels", "--family", "hope", "--preset", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "SMT main memory" in out and "pre-training" in out


def test_levels_command_bad_family_is_one_line_error(capsys):
    assert cli.main(["levels", "--family", "gpt"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --family must be one of") and "\n" not in err
