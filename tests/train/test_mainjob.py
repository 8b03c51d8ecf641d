"""The main job end to end on the small test corpus (the real one trains the tiny presets)."""

import json

import pytest

from nestlearn import cli
from nestlearn.eval import unigram_log_probs, unigram_loss
from nestlearn.mainjob import MainJob, run_main_job


def test_main_job_trains_evaluates_and_reports(tmp_path, debug_overrides):
    job = MainJob(out=str(tmp_path), recipe="debug_cpu", families=("hope", "transformer"),
                  steps=4, seq_len=32, batch_size=4, eval_batches=2, warmup_steps=1,
                  sample_tokens=8, extra=list(debug_overrides))
    report = run_main_job(job, progress=False)
    text = report.read_text()
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["models"]) == {"hope", "transformer"}
    for name, m in results["models"].items():
        assert m["steps"] == 4 and m["status"] == "trained", name
        assert (tmp_path / "runs" / name / "model" / "model.safetensors").is_file()
        assert len(m["per_position"]) == 32
        assert m["name"] in text and f"{m['val_loss']:.3f}" in text
    # the unigram row scores the same targets: recompute it independently
    assert results["scored_tokens"] == 2 * 4 * 32
    assert f"{results['unigram_val_loss']:.3f}" in text
    assert "HOPE's levels" in text and "CMS level 1" in text
    for png in ("loss.png", "context.png"):
        assert (tmp_path / png).stat().st_size > 1000
    # a second invocation reuses the finished runs (no retraining: same metrics files)
    before = (tmp_path / "runs" / "hope" / "metrics.jsonl").read_text()
    run_main_job(job, progress=False)
    assert (tmp_path / "runs" / "hope" / "metrics.jsonl").read_text() == before


def test_main_job_rejects_bad_settings():
    with pytest.raises(ValueError, match="families"):
        MainJob(families=("gpt",))
    with pytest.raises(ValueError, match="recipe"):
        MainJob(recipe="huge")
    with pytest.raises(ValueError, match="steps"):
        MainJob(steps=0)
    assert cli.main(["main", "--families", "hope,nope"]) == 2


def test_unigram_baseline_matches_counting_by_hand():
    import math

    import torch

    train = torch.tensor([0, 1, 1, 2, 2, 2])
    lp = unigram_log_probs(train, 4, smoothing=1.0)  # counts + 1 = 2, 3, 4, 1 of 10
    assert torch.allclose(lp.exp(), torch.tensor([0.2, 0.3, 0.4, 0.1], dtype=torch.float64))
    loss = unigram_loss(lp, [torch.tensor([[1, 3]]), torch.tensor([2])])
    assert loss == pytest.approx(-(math.log(0.3) + math.log(0.1) + math.log(0.4)) / 3)
    with pytest.raises(ValueError, match="vocab_size"):
        unigram_log_probs(train, 2)
    with pytest.raises(ValueError, match="smoothing"):
        unigram_log_probs(train, 4, smoothing=0)


def test_a_diverging_model_is_reported_not_fatal(tmp_path, debug_overrides):
    job = MainJob(out=str(tmp_path), recipe="debug_cpu", families=("transformer",), steps=6,
                  seq_len=32, batch_size=4, eval_batches=1, warmup_steps=1, sample_tokens=4,
                  extra=[*debug_overrides, "optim.eps=0"])  # 0/0 for unused embedding rows
    text = run_main_job(job, progress=False).read_text()
    assert "diverged (training loss is" in text


def test_report_compares_models_at_equal_steps_when_a_limit_stopped_one():
    from nestlearn.mainjob import _equal_steps

    models = {
        "hope": {"name": "HOPE", "train_curve": [(10, 7.0), (20, 6.5), (30, 6.2)]},
        "transformer": {"name": "Transformer++", "train_curve": [(10, 7.1), (20, 6.4), (40, 5.9)]},
    }
    (blank, line) = _equal_steps(models)
    assert blank == ""
    assert "step 30" in line and "HOPE 6.200 (step 30)" in line
    assert "Transformer++ 6.400 (step 20)" in line  # the last logged step <= 30
    models["transformer"]["train_curve"][-1] = (30, 6.0)
    assert _equal_steps(models) == []  # same number of steps: nothing to add

