"""The main job end to end on the small test corpus (the real one trains the tiny presets)."""

import json

import pytest

from experiments.main_job import MainJob, calibrated_steps, predicted_makespan, run_main_job
from experiments.main_job import plan as planning
from experiments.main_job.__main__ import main as main_job_cli
from experiments.main_job.report import binned, level_updates
from experiments.main_job.synthetic import panel_lanes
from nestlearn.eval import unigram_log_probs, unigram_loss


def test_main_job_trains_evaluates_and_reports(tmp_path, debug_overrides):
    job = MainJob(out=str(tmp_path), recipe="debug_cpu", families=("hope", "transformer"),
                  steps=4, seq_len=32, batch_size=4, eval_batches=2, warmup_steps=1,
                  sample_tokens=8, extra=list(debug_overrides), synthetic_task="aa_star",
                  synthetic_steps=2, synthetic_seeds=2)
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
    # the synthetic panel: both families, both seeds, both bins, mean ± std from the cells
    panel = results["synthetic"]
    cells = json.loads((tmp_path / "synthetic" / "aa_star" / "results.json").read_text())["cells"]
    assert sorted((c["family"], c["seed"]) for c in cells) == [
        ("hope", 0), ("hope", 1), ("transformer", 0), ("transformer", 1)]
    for family in ("hope", "transformer"):
        bin1 = [c["accuracy"]["bin1"] for c in cells if c["family"] == family]
        mean = sum(bin1) / 2
        assert abs(panel["values"][family]["aa_star/bin1"][0] - mean) < 1e-12
    assert "## Synthetic panel" in text and "aa_star/bin1" in text and "2 seeds" in text
    assert (tmp_path / "synthetic" / "aa_star" / "results.png").stat().st_size > 1000
    assert "synthetic best: aa_star/bin0" in text
    # the default probe: 4 debug steps take milliseconds, so all 4 steps fit the time limit
    assert results["calibration"]["outcome"] == "fits" and results["steps"] == 4
    assert "Steps: all 4 steps fit the time limit" in text
    # a second invocation reuses the finished runs (no retraining: same metrics files)
    before = (tmp_path / "runs" / "hope" / "metrics.jsonl").read_text()
    run_main_job(job, progress=False)
    assert (tmp_path / "runs" / "hope" / "metrics.jsonl").read_text() == before
    assert json.loads((tmp_path / "results.json").read_text())["calibration"]["reused"]


def test_main_job_rejects_bad_settings():
    with pytest.raises(ValueError, match="families"):
        MainJob(families=("gpt",))
    with pytest.raises(ValueError, match="recipe"):
        MainJob(recipe="huge")
    with pytest.raises(ValueError, match="steps"):
        MainJob(steps=0)
    with pytest.raises(ValueError, match="calibrate must be True or False"):
        MainJob(calibrate="yes")
    with pytest.raises(ValueError, match="synthetic_task must be empty or one of"):
        MainJob(synthetic_task="parity2")
    with pytest.raises(ValueError, match="synthetic_seeds must be a positive int"):
        MainJob(synthetic_seeds=0)
    assert main_job_cli(["--families", "hope,nope"]) == 2
    assert main_job_cli(["--no-calibrate", "--families", "nope"]) == 2


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
                  extra=[*debug_overrides, "optim.eps=0"],  # 0/0 for unused embedding rows
                  synthetic_task="")
    text = run_main_job(job, progress=False).read_text()
    assert "diverged (training loss is" in text
    assert "Steps: 6 steps (not calibrated: the probe timed no model)" in text  # it diverged too


def test_report_compares_models_at_equal_steps_when_a_limit_stopped_one():
    from experiments.main_job.report import _equal_steps

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



# The calibration probe (the step count that fits the time limit)

SEC = {"hope": 10.0, "transformer": 1.5, "titans": 3.5}
OVERHEAD = {"hope": 100.0, "transformer": 20.0, "titans": 30.0}
TWO_LANES = [["hope"], ["transformer", "titans"]]


def test_calibrated_steps_keeps_all_steps_when_everything_fits():
    # slowest lane at 160 steps: hope 1600 + 100 s; 85% of 3000 s = 2550 s
    assert calibrated_steps(SEC, TWO_LANES, overhead=OVERHEAD, limit_s=3000, max_steps=160) == 160
    assert predicted_makespan(160, SEC, TWO_LANES, OVERHEAD) == 1700


def test_calibrated_steps_shrinks_to_the_slowest_lane():
    # 85% of 600 s = 510 s: hope fits (510 - 100) / 10 = 41 steps, lane 1 (510 - 50) / 5 = 92
    n = calibrated_steps(SEC, TWO_LANES, overhead=OVERHEAD, limit_s=600, max_steps=160)
    assert n == 41
    assert predicted_makespan(41, SEC, TWO_LANES, OVERHEAD) <= 510
    assert predicted_makespan(42, SEC, TWO_LANES, OVERHEAD) > 510
    # a budget hit exactly is still a fit
    assert calibrated_steps(SEC, TWO_LANES, overhead=OVERHEAD, limit_s=510, max_steps=160,
                            fraction=1.0) == 41


def test_calibrated_steps_sums_the_families_of_a_lane():
    # lane 1 decides when its two models together are slower than HOPE alone
    sec = {"hope": 2.0, "transformer": 3.0, "titans": 4.0}
    n = calibrated_steps(sec, TWO_LANES, overhead=OVERHEAD, limit_s=600, max_steps=160)
    assert n == (510 - 50) // 7 == 65
    # one lane: everything one after another, 15 s per step and 150 s of overhead
    one = [["hope", "transformer", "titans"]]
    assert calibrated_steps(SEC, one, overhead=OVERHEAD, limit_s=600, max_steps=160) == 24
    # three lanes: HOPE alone decides
    three = [["hope"], ["transformer"], ["titans"]]
    assert calibrated_steps(SEC, three, overhead=OVERHEAD, limit_s=600, max_steps=160) == 41


def test_calibrated_steps_trains_a_minimum_when_nothing_fits():
    # 85% of 100 s = 85 s < HOPE's 100 s overhead: the minimum of 10 steps
    assert calibrated_steps(SEC, TWO_LANES, overhead=OVERHEAD, limit_s=100, max_steps=160) == 10
    # 85% of 200 s = 170 s: 7 steps would fit, fewer than the minimum
    assert calibrated_steps(SEC, TWO_LANES, overhead=OVERHEAD, limit_s=200, max_steps=160) == 10
    assert calibrated_steps(SEC, TWO_LANES, overhead=OVERHEAD, limit_s=100, max_steps=6) == 6
    assert calibrated_steps(SEC, TWO_LANES, overhead=OVERHEAD, limit_s=100, max_steps=160,
                            min_steps=1) == 1


def test_calibrated_steps_rejects_bad_input():
    kw = {"overhead": OVERHEAD, "limit_s": 600, "max_steps": 160}
    with pytest.raises(ValueError, match=r"sec_per_step\['hope'\] must be a number >= 0"):
        calibrated_steps({"transformer": 1.0, "titans": 1.0}, TWO_LANES, **kw)
    with pytest.raises(ValueError, match=r"overhead\['titans'\]"):
        calibrated_steps(SEC, TWO_LANES, **{**kw, "overhead": {"hope": 1, "transformer": 1}})
    with pytest.raises(ValueError, match="limit_s must be a positive number"):
        calibrated_steps(SEC, TWO_LANES, **{**kw, "limit_s": 0})
    with pytest.raises(ValueError, match="max_steps must be a positive int"):
        calibrated_steps(SEC, TWO_LANES, **{**kw, "max_steps": 0})
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\]"):
        calibrated_steps(SEC, TWO_LANES, **kw, fraction=1.5)


def test_fewer_steps_scale_the_warmup_and_keep_the_cadence():
    job = MainJob()
    assert [job.warmup(n) for n in (160, 80, 41, 10, 1)] == [20, 10, 5, 1, 1]
    assert MainJob(warmup_steps=0).warmup(10) == 0
    sets = dict(o.split("=", 1) for o in job.overrides("hope", 41))
    assert sets["train.steps"] == "41" and sets["optim.warmup_steps"] == "5"
    assert sets["train.eval_every"] == "11" and sets["train.checkpoint_every"] == "6"
    sets = dict(o.split("=", 1) for o in job.overrides("hope"))
    assert sets["train.steps"] == "160" and sets["train.eval_every"] == "40"


@pytest.mark.slow  # ~60 s: five rounds of child processes (probe, train, eval, train, eval)
def test_probe_plans_equal_steps_and_a_rerun_reuses_the_plan(tmp_path, debug_overrides,
                                                              monkeypatch):
    """The real probe path on the debug recipe; a budget fraction of ~0 makes every prediction
    overrun, so the job trains the documented minimum (10 of 12 steps) whatever the speed."""
    monkeypatch.setattr(planning, "BUDGET_FRACTION", 1e-9)
    job = MainJob(out=str(tmp_path), recipe="debug_cpu", families=("hope", "transformer"),
                  steps=12, seq_len=32, batch_size=4, eval_batches=1, warmup_steps=6,
                  sample_tokens=4, extra=list(debug_overrides), synthetic_task="")
    text = run_main_job(job, progress=False).read_text()
    results = json.loads((tmp_path / "results.json").read_text())
    plan = results["calibration"]
    assert plan["outcome"] == "minimum" and plan["steps"] == results["steps"] == 10
    assert "training the minimum of 10 of 12 steps" in text and "s/step" in text
    for f in ("hope", "transformer"):
        assert plan["sec_per_step"][f] > 0 and plan["overhead_s"][f] > 0
        probe = tmp_path / "probe" / f
        steps = [json.loads(line)["step"] for line in (probe / "metrics.jsonl").open()]
        assert max(steps) == planning.PROBE_STEPS
        assert not (probe / "checkpoints").exists() and not (probe / "model").exists()
        run = tmp_path / "runs" / f
        assert results["models"][f]["steps"] == 10 and results["models"][f]["status"] == "trained"
        config = json.loads((run / "train_config.json").read_text())["config"]
        assert config["train"]["steps"] == 10 and config["optim"]["warmup_steps"] == 5
    # a rerun: no probe, the recorded plan (a new probe would now keep all 12 steps)
    monkeypatch.setattr(planning, "BUDGET_FRACTION", 0.85)
    (tmp_path / "probe" / "hope" / "metrics.jsonl").unlink()
    run_main_job(job, progress=False)
    again = json.loads((tmp_path / "results.json").read_text())
    assert again["calibration"]["reused"] and again["steps"] == 10
    assert all(m["steps"] == 10 for m in again["models"].values())
    assert not (tmp_path / "probe" / "hope" / "metrics.jsonl").exists()


def test_reading_is_derived_from_the_numbers():
    from experiments.main_job.report import reading

    models = {f: {"name": n, "val_loss": v} for f, n, v in
              (("hope", "HOPE", 6.2), ("transformer", "Transformer++", 6.5), ("titans", "T", 6.3))}
    text = reading(models, 6.0)
    assert "No model beat the unigram baseline (6.000)" in text and "well beyond" not in text
    assert "HOPE 6.200 < T 6.300 (+0.100) < Transformer++ 6.500 (+0.300)" in text
    assert reading(models, 7.0).startswith("Every model beat the unigram baseline")
    assert reading(models, 6.25).startswith("HOPE beat the unigram baseline (6.250); "
                                           "Transformer++, T did not")


def test_level_updates_count_what_the_schedule_applied():
    rows = level_updates([0, 32 * 2048, 64], [0.0, 0.0, 0.1], steps=10, tokens_per_step=2048)
    assert rows[0] == "CMS level 0: every optimizer step (10 updates)"
    assert rows[1].startswith("CMS level 1: every 32 optimizer steps") and "0 updates" in rows[1]
    assert "never" in rows[1]
    assert rows[2].startswith("CMS level 2: in context, every 64 tokens")
    rows = level_updates([0, 4096], [0.0, 0.0], steps=9, tokens_per_step=1024)
    assert rows[1].endswith("every 4 optimizer steps (4,096 tokens): 2 updates")


def test_context_curve_is_averaged_over_log_spaced_bins():
    curve = [float(i) for i in range(1, 257)]
    xs, ys = binned(curve)
    assert xs[0] == 1.0 and ys[0] == 1.0
    assert len(xs) < 30 and all(a < b for a, b in zip(xs, xs[1:], strict=False))
    widths = [b / a for a, b in zip(xs[4:], xs[5:], strict=False)]
    assert max(widths) < 1.6
    # every position is counted once: the bin means weighted by their sizes give the overall mean
    assert abs(ys[-1] - curve[-1]) < 40 and min(ys) == 1.0


def test_panel_lanes_start_hope_in_one_lane_and_end_with_it_in_the_others():
    assert panel_lanes(("transformer", "hope", "titans"), 2) == [
        ["hope", "transformer", "titans"], ["transformer", "titans", "hope"]]
    assert panel_lanes(("transformer", "hope", "titans"), 3) == [
        ["hope", "transformer", "titans"], ["transformer", "titans", "hope"],
        ["titans", "transformer", "hope"]]
    assert panel_lanes(("hope", "transformer"), 1) == [["hope", "transformer"]]
    assert panel_lanes(("transformer", "titans"), 2) == [
        ["transformer", "titans"], ["titans", "transformer"]]
    assert panel_lanes(("hope",), 2) == [["hope"], ["hope"]]


def test_the_time_limit_stops_trainings_not_evaluations(tmp_path):
    """An evaluation running when the limit passes is left to finish (stopping it left a trained
    model unscored and failed the job); a training is signalled (it saves a checkpoint)."""
    import subprocess
    import sys

    from experiments.main_job.lanes import Lane

    lane = Lane(MainJob(out=str(tmp_path)), ["transformer"], None, 1)
    for stoppable, stopped in ((False, False), (True, True)):
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        lane.current, lane.stoppable = child, stoppable
        lane.stop()
        try:
            child.wait(timeout=5 if stopped else 0.5)
        except subprocess.TimeoutExpired:
            pass
        assert (child.poll() is not None) == stopped
        child.kill()
        child.wait()
