"""Task instances as rows for a causal LM (inputs, targets, right padding) and their scoring."""

from __future__ import annotations

import pytest
import torch

from nestlearn.eval.tasks.base import Classification, Generation
from nestlearn.eval.tasks.encoding import IGNORE, encode, score_logits, task_kind
from nestlearn.eval.tasks.jsonl import CharVocab

CLS = [Classification("abb", 1), Classification("a", 0), Classification("ba", 1)]
GEN = [Generation("ab", "ba"), Generation("abba", "a"), Generation("b", "abb")]


def test_classification_rows_are_input_sep_with_the_label_at_sep():
    vocab = CharVocab.from_examples(CLS)
    a, b = vocab.encode("ab")
    one, zero = vocab.label_id(1), vocab.label_id(0)
    enc = encode(CLS, vocab)
    assert enc.kind == "classification" and len(enc) == 3
    pad, sep = vocab.pad_id, vocab.sep_id
    assert enc.inputs.tolist() == [[a, b, b, sep], [a, sep, pad, pad], [b, a, sep, pad]]
    assert enc.targets.tolist() == [[IGNORE, IGNORE, IGNORE, one],
                                    [IGNORE, zero, IGNORE, IGNORE],
                                    [IGNORE, IGNORE, one, IGNORE]]
    assert enc.inputs.dtype == enc.targets.dtype == torch.long
    assert enc.tokens == 4 + 2 + 3


def test_generation_rows_are_prompt_sep_answer_with_targets_answer_eos():
    vocab = CharVocab.from_examples(GEN)
    a, b = vocab.encode("ab")
    pad, sep, eos, no = vocab.pad_id, vocab.sep_id, vocab.eos_id, IGNORE
    enc = encode(GEN, vocab)
    assert enc.kind == "generation"
    # "ab" -> "ba": the target at t is the token at t + 1, then <eos> after the answer.
    assert enc.inputs.tolist() == [[a, b, sep, b, a, pad],
                                   [a, b, b, a, sep, a],
                                   [b, sep, a, b, b, pad]]
    assert enc.targets.tolist() == [[no, no, b, a, eos, no],
                                    [no, no, no, no, a, eos],
                                    [no, a, b, b, eos, no]]
    # Targets are the next input token wherever the next token is part of the answer.
    for row_in, row_t in zip(enc.inputs.tolist(), enc.targets.tolist()):
        sep_at = row_in.index(sep)
        n_answer = sum(t != no for t in row_t) - 1
        assert row_t[sep_at:sep_at + n_answer] == row_in[sep_at + 1:sep_at + 1 + n_answer]


def test_rows_trims_to_the_longest_selected_row():
    vocab = CharVocab.from_examples(GEN)
    enc = encode(GEN, vocab)
    sub = enc.rows(torch.tensor([0, 2]))
    assert sub.inputs.shape == (2, 5)
    assert torch.equal(sub.inputs, enc.inputs[[0, 2], :5])
    assert torch.equal(sub.targets, enc.targets[[0, 2], :5])


def test_unknown_character_names_the_example():
    vocab = CharVocab.from_examples(GEN)
    with pytest.raises(ValueError, match=r"example 2: unknown character 'z'"):
        encode([Generation("ab", "a"), Generation("b", "a"), Generation("bz", "a")], vocab)
    vocab = CharVocab.from_examples(CLS)
    with pytest.raises(ValueError, match=r"example 1: unknown label 5"):
        encode([Classification("a", 0), Classification("a", 5)], vocab)


def test_task_kind_refuses_mixed_and_empty():
    assert task_kind(CLS) == "classification" and task_kind(GEN) == "generation"
    with pytest.raises(ValueError, match="all be Classification or all be Generation"):
        task_kind([CLS[0], GEN[0]])
    with pytest.raises(ValueError, match="non-empty"):
        task_kind([])


def _logits_predicting(enc, predictions, vocab_size):
    """Logits whose argmax at [r, t] is ``predictions[r][t]`` (one-hot of 5, noise elsewhere)."""
    logits = torch.randn(*enc.inputs.shape, vocab_size) * 0.1
    for r, row in enumerate(predictions):
        for t, token in enumerate(row):
            logits[r, t, token] = 5.0
    return logits


def test_score_classification_argmax_is_over_label_tokens_only():
    vocab = CharVocab.from_examples(CLS)
    enc = encode(CLS, vocab)
    one, zero = vocab.label_id(1), vocab.label_id(0)
    logits = torch.zeros(*enc.inputs.shape, len(vocab))
    # Row 0 (label 1): a character token has the largest logit, then label 1 -> right.
    logits[0, 3, vocab.encode("a")[0]] = 9.0
    logits[0, 3, one] = 2.0
    logits[0, 3, zero] = 1.0
    # Row 1 (label 0): <eos> largest, then label 1 over label 0 -> wrong.
    logits[1, 1, vocab.eos_id] = 9.0
    logits[1, 1, one] = 1.0
    logits[1, 1, zero] = 0.5
    # Row 2 (label 1): label 1 wins at <sep>; label 0 wins at an unscored position -> right.
    logits[2, 2, one] = 1.0
    logits[2, 0, zero] = 3.0
    scores = score_logits(logits, enc, vocab)
    assert scores.correct.tolist() == [True, False, True]
    assert scores.tokens.tolist() == [1, 1, 1]
    assert scores.tokens_correct.tolist() == [1, 0, 1]


def test_score_generation_exact_match_and_token_counts():
    vocab = CharVocab.from_examples(GEN)
    enc = encode(GEN, vocab)
    a, b = vocab.encode("ab")
    eos = vocab.eos_id
    # Predictions at every position; only the scored ones (targets != -100) count.
    predictions = [
        [a, a, b, a, eos, b],  # all 3 scored right (unscored ones wrong): exact match
        [b, b, b, b, a, b],  # answer "a" right, <eos> missed: 1 of 2
        [b, a, b, b, a, eos],  # "abb" right, <eos> missed (eos at an unscored pad): 3 of 4
    ]
    scores = score_logits(_logits_predicting(enc, predictions, len(vocab)), enc, vocab)
    assert scores.correct.tolist() == [True, False, False]
    assert scores.tokens.tolist() == [3, 2, 4]
    assert scores.tokens_correct.tolist() == [3, 1, 3]
    # The one-token change that breaks row 0's <eos> breaks its exact match.
    predictions[0][4] = a
    scores = score_logits(_logits_predicting(enc, predictions, len(vocab)), enc, vocab)
    assert scores.correct.tolist() == [False, False, False]
    assert scores.tokens_correct.tolist() == [2, 1, 3]
