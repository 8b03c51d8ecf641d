"""The task runner: data, budgets, scoring by one teacher-forced pass, learning, results, resume."""

from __future__ import annotations

import json
import random

import pytest
import torch

from nestlearn.eval import runner
from nestlearn.eval.runner import (
    BUDGETS,
    TaskBudget,
    budget_for,
    build_model,
    file_task,
    generated_task,
    run_task,
    split_seed,
)
from nestlearn.eval.tasks import TASKS, CharVocab, Classification, Generation, write_jsonl
from nestlearn.eval.tasks.encoding import IGNORE, encode, score_logits

TINY = TaskBudget(steps=2, batch_size=4, lr=1e-3, train_size=16, test_size=8)


# --- exact match by one teacher-forced pass == greedy decoding -------------------------------

def _chaotic_model(family: str, vocab: CharVocab) -> torch.nn.Module:
    """A random ``task`` preset whose greedy output depends on the prompt and never is <pad> or
    <sep>: larger weights than the init (which reads mostly the last token), and zero output rows
    for <pad> and <sep> (their logit is 0 while some character's or <eos>'s is positive)."""
    model = build_model(family, len(vocab), seed=3)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
        head = model.get_output_embeddings().weight
        head[[vocab.pad_id, vocab.sep_id]] = 0.0
    return model.double().eval()


def _greedy(model, prompts: list[str], vocab: CharVocab, steps: int) -> list[list[int]]:
    """Token-by-token greedy decoding after ``prompt <sep>``: a full forward pass of the growing
    prefix each step, the argmax at its last position. Prompts of one length (no padding)."""
    ids = torch.tensor([[*vocab.encode(p), vocab.sep_id] for p in prompts])
    emitted = []
    for _ in range(steps):
        token = model(input_ids=ids).logits[:, -1].argmax(-1)
        emitted.append(token)
        ids = torch.cat([ids, token[:, None]], 1)
    return torch.stack(emitted, 1).tolist()


def _instances(model, vocab: CharVocab, rng: random.Random) -> list[tuple[Generation, list]]:
    """(instance, greedy tokens) pairs, right and wrong: an instance whose answer is the greedy
    output up to <eos> (right), and ones with that answer changed, shortened or lengthened, or an
    unrelated answer (wrong)."""
    pairs = []
    for length in (3, 5):
        prompts = ["".join(rng.choice(vocab.chars) for _ in range(length)) for _ in range(12)]
        for prompt, out in zip(prompts, _greedy(model, prompts, vocab, steps=5)):
            chars = out[:out.index(vocab.eos_id)] if vocab.eos_id in out else out
            greedy_text = vocab.decode(chars)
            if chars and vocab.eos_id in out:
                pairs.append((Generation(prompt, greedy_text), out))
                other = "a" if greedy_text[-1] != "a" else "b"
                pairs.append((Generation(prompt, greedy_text[:-1] + other), out))
                pairs.append((Generation(prompt, greedy_text + "a"), out))
                if len(greedy_text) > 1:
                    pairs.append((Generation(prompt, greedy_text[:-1]), out))
            else:
                pairs.append((Generation(prompt, rng.choice(vocab.chars) * 2), out))
    return pairs


@pytest.mark.parametrize("family", ["transformer", "titans", "hope"])
def test_teacher_forced_exact_match_equals_greedy_decoding(family):
    vocab = CharVocab("abcd")
    model = _chaotic_model(family, vocab)
    pairs = _instances(model, vocab, random.Random(0))
    examples = [e for e, _ in pairs]
    batch = encode(examples, vocab)  # mixed lengths: right-padded
    with torch.no_grad():
        logits = model(input_ids=batch.inputs).logits
    scores = score_logits(logits, batch, vocab)
    decoded_right, first_wrong = [], []
    for example, out in pairs:
        want = [*vocab.encode(example.answer), vocab.eos_id]
        got = out[:len(want)]  # stop after len(answer) + 1 tokens (or earlier at <eos>)
        decoded_right.append(got == want)
        first_wrong.append(next((i for i, (g, w) in enumerate(zip(got, want)) if g != w), None))
    assert 3 <= sum(decoded_right) <= len(pairs) - 3  # both right and wrong rows occur
    assert scores.correct.tolist() == decoded_right
    # Stronger: the first wrong answer position agrees too (the induction of encoding.py).
    hits = (logits.argmax(-1) == batch.targets)
    for r, expected in enumerate(first_wrong):
        scored = (batch.targets[r] != IGNORE).nonzero().flatten()
        misses = [i for i, t in enumerate(scored.tolist()) if not hits[r, t]]
        assert (misses[0] if misses else None) == expected, (r, examples[r])
    # Right padding: each row's scored logits are those of the row run alone.
    for r in range(0, len(examples), len(examples) // 4):
        n = int((batch.inputs[r] != vocab.pad_id).sum())
        with torch.no_grad():
            alone = model(input_ids=batch.inputs[r:r + 1, :n]).logits[0]
        torch.testing.assert_close(logits[r, :n], alone, rtol=1e-9, atol=1e-9)


# --- the runner learns easy tasks --------------------------------------------------------------

def _first_char_task(tmp_path):
    rng = random.Random(1)

    def sample(n):
        strings = ["".join(rng.choice("abc") for _ in range(rng.randint(1, 8))) for _ in range(n)]
        return [Classification(s, int(s[0] == "a")) for s in strings]
    write_jsonl(tmp_path / "first_a.jsonl", sample(512))
    write_jsonl(tmp_path / "held_out.jsonl", sample(64))
    return file_task(tmp_path / "first_a.jsonl", [tmp_path / "held_out.jsonl"])


def _copy_task(tmp_path):
    rng = random.Random(2)

    def sample(n):
        strings = ["".join(rng.choice("abcd") for _ in range(rng.randint(2, 4))) for _ in range(n)]
        return [Generation(s, s) for s in strings]
    write_jsonl(tmp_path / "copy.jsonl", sample(1024))
    write_jsonl(tmp_path / "copy_test.jsonl", sample(64))
    return file_task(tmp_path / "copy.jsonl", [tmp_path / "copy_test.jsonl"])


def test_runner_learns_first_character_classification(tmp_path):
    data = _first_char_task(tmp_path)
    budget = TaskBudget(steps=60, batch_size=32, lr=3e-3, train_size=1, test_size=1)
    results = run_task(data, ["transformer"], [0], tmp_path / "out", budget=budget,
                       progress=False)
    (cell,) = results["cells"]
    assert cell["accuracy"]["held_out"] >= 0.9  # chance: about 2/3 (majority label 0)
    assert cell["token_accuracy"]["held_out"] == cell["accuracy"]["held_out"]
    assert cell["curve"][-1][1] < cell["curve"][0][1] / 4


def test_runner_learns_copy(tmp_path):
    STEPS = 60  # noqa: N806  (measured: 0.81-0.86 exact, 0.95-0.97 tokens)
    data = _copy_task(tmp_path)
    budget = TaskBudget(steps=STEPS, batch_size=32, lr=3e-3, train_size=1, test_size=1)
    cell = runner.train_cell("transformer", data, budget, 0)
    # Chance exact match is at most 1/16.
    assert cell["accuracy"]["copy_test"] >= 0.5
    assert cell["token_accuracy"]["copy_test"] >= 0.8
    assert cell["train_tokens"] > STEPS * 32 * 5


# --- results.json, plot and resuming -----------------------------------------------------------

def _fake_cell(calls):
    def train_cell(family, data, budget, seed, *, overrides=None, progress=False):
        calls.append((family, seed))
        accuracy = {t: 0.5 + 0.1 * seed for t in data.tests}
        return {"family": family, "seed": seed, "accuracy": accuracy,
                "token_accuracy": dict(accuracy), "final_loss": 1.0, "curve": [[1, 1.0]],
                "train_tokens": 1, "train_seconds": 0.1, "eval_seconds": 0.1, "parameters": 1}
    return train_cell


def test_results_json_png_and_resume(tmp_path, monkeypatch):
    out = tmp_path / "run"
    results = run_task("aa_star", ["transformer"], 1, out, budget=TINY, progress=False,
                       command="nestlearn task --task aa_star")
    saved = json.loads((out / "results.json").read_text())
    assert saved == results
    assert saved["task"] == "aa_star" and saved["kind"] == "classification"
    assert saved["budget"] == {"steps": 2, "batch_size": 4, "lr": 1e-3, "train_size": 16,
                               "test_size": 8, "warmup": 0.1, "weight_decay": 0.01}
    assert saved["test_instances"] == {"bin0": 8, "bin1": 8}
    assert saved["train_instances"] == 16
    assert saved["command"] == "nestlearn task --task aa_star"
    (cell,) = saved["cells"]
    assert (cell["family"], cell["seed"]) == ("transformer", 0)
    assert set(cell["accuracy"]) == {"bin0", "bin1"}
    assert all(0 <= v <= 1 for v in cell["accuracy"].values())
    assert [step for step, _ in cell["curve"]] == [1, 2]
    assert (out / "results.png").read_bytes()[:4] == b"\x89PNG"
    first_png = (out / "results.png").stat().st_mtime_ns

    calls = []
    monkeypatch.setattr(runner, "train_cell", _fake_cell(calls))
    results = run_task("aa_star", ["transformer", "titans"], 2, out, budget=TINY,
                       progress=False)
    assert sorted(calls) == [("titans", 0), ("titans", 1), ("transformer", 1)]
    assert results["cells"][0] == cell  # the trained cell is kept as it was
    assert sorted((c["family"], c["seed"]) for c in results["cells"]) == [
        ("titans", 0), ("titans", 1), ("transformer", 0), ("transformer", 1)]
    assert json.loads((out / "results.json").read_text())["cells"] == results["cells"]
    assert (out / "results.png").stat().st_mtime_ns >= first_png

    calls.clear()
    run_task("aa_star", ["titans"], [1], out, budget=TINY, progress=False)
    assert calls == []  # all done: nothing trained


def test_a_different_run_in_the_same_out_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "train_cell", _fake_cell([]))
    run_task("aa_star", ["transformer"], 1, tmp_path, budget=TINY, progress=False)
    before = (tmp_path / "results.json").read_text()
    with pytest.raises(ValueError, match=r"different run \(budget differ\)"):
        run_task("aa_star", ["transformer"], 1, tmp_path, progress=False,
                 budget=TaskBudget(steps=3, batch_size=4, lr=1e-3, train_size=16, test_size=8))
    with pytest.raises(ValueError, match=r"different run \(task, vocab_size differ\)"):
        run_task("parity", ["transformer"], 1, tmp_path, budget=TINY, progress=False)
    assert (tmp_path / "results.json").read_text() == before
    (tmp_path / "task.json").write_text("[1, 2")
    with pytest.raises(ValueError, match="not a task runner's file"):
        run_task("aa_star", ["transformer"], 1, tmp_path, budget=TINY, progress=False)


def test_a_cell_of_another_model_config_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "train_cell", _fake_cell([]))
    run_task("aa_star", ["hope"], 1, tmp_path, budget=TINY, progress=False)
    # as if the preset had changed since the cell was trained
    path = tmp_path / "cells" / "hope-seed0.json"
    cell = json.loads(path.read_text())
    cell["config"]["smt_chunk_size"] = 16
    path.write_text(json.dumps(cell))
    with pytest.raises(ValueError, match="trained with another hope config"):
        run_task("aa_star", ["hope"], 1, tmp_path, budget=TINY, progress=False)


def test_processes_sharing_an_out_see_each_others_cells(tmp_path, monkeypatch):
    """Two runs with different families in one directory (as two processes would run them):
    each one's results.json holds every cell finished so far, each cell is its own file."""
    calls = []
    monkeypatch.setattr(runner, "train_cell", _fake_cell(calls))
    run_task("aa_star", ["titans"], 2, tmp_path, budget=TINY, progress=False)
    results = run_task("aa_star", ["transformer"], 2, tmp_path, budget=TINY, progress=False)
    assert sorted(p.name for p in (tmp_path / "cells").iterdir()) == [
        "titans-seed0.json", "titans-seed1.json", "transformer-seed0.json",
        "transformer-seed1.json"]
    assert [(c["family"], c["seed"]) for c in results["cells"]] == [
        ("transformer", 0), ("transformer", 1), ("titans", 0), ("titans", 1)]
    assert sorted(calls) == [("titans", 0), ("titans", 1), ("transformer", 0), ("transformer", 1)]


@pytest.mark.parametrize("families, seeds, match", [
    ([], 1, "families must be a non-empty list"),
    (["transformer", "gpt"], 1, r"families must be .*'gpt'"),
    (["transformer"], 0, "seeds must be"),
    (["transformer"], [0, -1], "seeds must be"),
    (["transformer"], [True], "seeds must be"),
])
def test_bad_families_or_seeds(tmp_path, families, seeds, match):
    with pytest.raises(ValueError, match=match):
        run_task("aa_star", families, seeds, tmp_path, budget=TINY, progress=False)
    assert not (tmp_path / "results.json").exists()


# --- seeds and data ----------------------------------------------------------------------------

def test_split_seed_is_stable_and_distinct():
    assert split_seed(0, "train") == 1382848523564605726  # the same on every run and platform
    seeds = {split_seed(s, n) for s in range(4) for n in ("train", "test/bin0", "test/bin1",
                                                          "init", "order")}
    assert len(seeds) == 20
    assert all(0 <= s < 2**63 for s in seeds)


def test_generated_task_is_seeded_and_train_and_test_differ():
    a = generated_task("aa_star", 0, TINY)
    b = generated_task("aa_star", 0, TINY)
    c = generated_task("aa_star", 1, TINY)
    assert torch.equal(a.train.inputs, b.train.inputs)
    assert torch.equal(a.tests["bin1"].targets, b.tests["bin1"].targets)
    assert not torch.equal(a.train.inputs, c.train.inputs)
    # train and bin0 (same lengths) come from different seeds: different instances.
    n = min(a.train.inputs.shape[1], a.tests["bin0"].inputs.shape[1])
    assert not torch.equal(a.train.inputs[:8, :n], a.tests["bin0"].inputs[:, :n])
    spec = TASKS["aa_star"]
    assert encode(spec.generate(16, seed=split_seed(0, "train"), **spec.train),
                  a.vocab).inputs.equal(a.train.inputs)
    assert len(a.train) == 16 and {k: len(v) for k, v in a.tests.items()} == {"bin0": 8,
                                                                             "bin1": 8}
    lengths = {k: (v.inputs != 0).sum(1) - 1 for k, v in [("train", a.train), *a.tests.items()]}
    assert int(lengths["bin1"].min()) > int(lengths["train"].max())
    assert a.kind == "classification" and a.name == "aa_star"


def test_generated_task_unknown_name():
    with pytest.raises(ValueError, match="task must be one of .*'nope'"):
        generated_task("nope", 0, TINY)


def test_file_task_test_sets_and_errors(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [Generation("ab", "ba"), Generation("b", "bb")])
    write_jsonl(tmp_path / "short.jsonl", [Generation("a", "a")])
    write_jsonl(tmp_path / "long.jsonl", [Generation("abab", "baba"), Generation("b", "a")])
    (tmp_path / "dup").mkdir()
    write_jsonl(tmp_path / "dup" / "short.jsonl", [Generation("b", "b")])
    data = file_task(tmp_path / "train.jsonl", [tmp_path / "short.jsonl",
                                                tmp_path / "long.jsonl",
                                                tmp_path / "dup" / "short.jsonl"])
    assert list(data.tests) == ["short", "long", "short'"]
    assert (len(data.tests["long"]), data.kind, data.name) == (2, "generation", "train")
    assert data.vocab.chars == ["a", "b"]

    write_jsonl(tmp_path / "odd.jsonl", [Generation("a", "a"), Generation("ax", "a")])
    with pytest.raises(ValueError, match=r"odd\.jsonl: example 1: unknown character 'x'"):
        file_task(tmp_path / "train.jsonl", [tmp_path / "short.jsonl", tmp_path / "odd.jsonl"])
    write_jsonl(tmp_path / "cls.jsonl", [Classification("ab", 1)])
    with pytest.raises(ValueError, match=r"cls\.jsonl: classification examples, but the "
                                         r"training file .* holds generation"):
        file_task(tmp_path / "train.jsonl", [tmp_path / "cls.jsonl"])
    with pytest.raises(ValueError, match="at least one test file"):
        file_task(tmp_path / "train.jsonl", [])


# --- budgets -----------------------------------------------------------------------------------

@pytest.mark.parametrize("field, value", [
    ("steps", 0), ("steps", 1.5), ("steps", True), ("batch_size", -1), ("train_size", 0),
    ("test_size", "8"), ("lr", 0.0), ("lr", float("nan")), ("lr", "1e-3"), ("warmup", 1.0),
    ("warmup", -0.1),
])
def test_task_budget_validation_names_the_field(field, value):
    fields = dict(steps=2, batch_size=4, lr=1e-3, train_size=16, test_size=8)
    with pytest.raises(ValueError, match=rf"budget\.{field} must be"):
        TaskBudget(**{**fields, field: value})


def test_budget_for_and_with_steps():
    assert budget_for("parity") is BUDGETS["formal"]
    assert budget_for("mad_icr") is BUDGETS["mad"]
    assert budget_for("mqar_16") is BUDGETS["mqar"]
    assert budget_for("my_file_task") is BUDGETS["file"]
    changed = runner.with_steps(BUDGETS["formal"], steps=5, lr=1e-2)
    assert (changed.steps, changed.lr, changed.batch_size) == (5, 1e-2,
                                                               BUDGETS["formal"].batch_size)
    assert runner.with_steps(BUDGETS["mad"]) == BUDGETS["mad"]


def test_schedule_warms_up_then_decays_to_a_tenth():
    factor = runner._schedule(TaskBudget(steps=100, batch_size=1, lr=1.0, train_size=1,
                                         test_size=1))
    assert [factor(s) for s in range(3)] == pytest.approx([0.1, 0.2, 0.3])
    assert factor(9) == pytest.approx(1.0) and factor(10) == pytest.approx(1.0)
    values = [factor(s) for s in range(10, 100)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert factor(100) == pytest.approx(0.1) and values[-1] > 0.1


def test_cells_claimed_by_a_live_process_are_left_to_it(tmp_path, monkeypatch):
    """N processes with one command split the cells: a cell claimed by a live process is
    skipped; a claim whose process is dead is taken over."""
    import subprocess
    import sys

    calls = []
    monkeypatch.setattr(runner, "train_cell", _fake_cell(calls))
    (tmp_path / "cells").mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        (tmp_path / "cells" / "transformer-seed0.claim").write_text(str(holder.pid))
        (tmp_path / "cells" / "transformer-seed1.claim").write_text(str(dead.pid))
        results = run_task("aa_star", ["transformer"], 2, tmp_path, budget=TINY, progress=False)
    finally:
        holder.kill()
        holder.wait()
    assert calls == [("transformer", 1)]
    assert [c["seed"] for c in results["cells"]] == [1]
    assert (tmp_path / "cells" / "transformer-seed0.claim").exists()  # still the holder's
    assert not (tmp_path / "cells" / "transformer-seed1.claim").exists()  # released
    run_task("aa_star", ["transformer"], 2, tmp_path, budget=TINY, progress=False)
    assert calls == [("transformer", 1), ("transformer", 0)]  # the holder died: taken over
