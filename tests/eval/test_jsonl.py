"""JSON Lines task files and the character vocabulary."""

from __future__ import annotations

import pytest

from nestlearn.eval.tasks.base import Classification, Generation
from nestlearn.eval.tasks.formal import generate_formal
from nestlearn.eval.tasks.jsonl import CharVocab, read_jsonl, write_jsonl

CLASSIFICATION = [Classification("abba", 1), Classification("ab", 0),
                  Classification('q"\\ü\t€', 7)]
GENERATION = [Generation("k1v1k2v2|k1", "v1"), Generation("x y\nz", "é")]


@pytest.mark.parametrize("examples", [CLASSIFICATION, GENERATION])
def test_round_trip(tmp_path, examples):
    path = tmp_path / "task.jsonl"
    write_jsonl(path, examples)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(examples)
    assert read_jsonl(path) == examples


def test_round_trip_of_a_generated_set(tmp_path):
    data = generate_formal("shuffle2", 40, seed=1, min_len=1, max_len=40)
    write_jsonl(tmp_path / "s.jsonl", data)
    assert read_jsonl(tmp_path / "s.jsonl") == data


def test_blank_lines_are_skipped(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('\n{"input": "a", "label": 0}\n   \n\n{"input": "b", "label": 1}\n\n')
    assert read_jsonl(path) == [Classification("a", 0), Classification("b", 1)]


BAD_LINES = {
    "not json": ("{input: 1}", "not valid JSON"),
    "truncated json": ('{"input": "a", "label": ', "not valid JSON"),
    "not an object": ('["a", 1]', "not an object"),
    "a bare string": ('"abba"', "not an object"),
    "missing key": ('{"input": "a"}', "keys exactly"),
    "extra key": ('{"input": "a", "label": 1, "weight": 2}', "keys exactly"),
    "misspelled key": ('{"inputs": "a", "label": 1}', "keys exactly"),
    "keys of both kinds": ('{"input": "a", "label": 1, "prompt": "p", "answer": "x"}',
                           "keys exactly"),
    "mixed kinds": ('{"prompt": "p", "answer": "x"}', "generation example in a file of class"),
    "empty input": ('{"input": "", "label": 1}', '"input" must be a non-empty string'),
    "input not a string": ('{"input": 12, "label": 1}', '"input" must be a string'),
    "bool label": ('{"input": "a", "label": true}', '"label" must be an int'),
    "float label": ('{"input": "a", "label": 1.0}', '"label" must be an int'),
    "string label": ('{"input": "a", "label": "1"}', '"label" must be an int'),
    "null label": ('{"input": "a", "label": null}', '"label" must be an int'),
}


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_bad_line_is_a_one_line_error_naming_file_and_line(tmp_path, case):
    line, message = BAD_LINES[case]
    path = tmp_path / "bad.jsonl"
    path.write_text('{"input": "ab", "label": 0}\n\n' + line + '\n{"input": "b", "label": 1}\n')
    with pytest.raises(ValueError, match=message) as info:
        read_jsonl(path)
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(f"{path}, line 3: ")


@pytest.mark.parametrize("line,message", [
    ('{"prompt": "", "answer": "x"}', '"prompt" must be a non-empty string'),
    ('{"prompt": "p", "answer": ""}', '"answer" must be a non-empty string'),
    ('{"prompt": "p", "answer": 3}', '"answer" must be a string'),
    ('{"input": "a", "label": 1}', "classification example in a file of generation"),
])
def test_bad_generation_line(tmp_path, line, message):
    path = tmp_path / "gen.jsonl"
    path.write_text('{"prompt": "p", "answer": "x"}\n' + line + "\n")
    with pytest.raises(ValueError, match=message) as info:
        read_jsonl(path)
    assert str(info.value).startswith(f"{path}, line 2: ") and "\n" not in str(info.value)


def test_first_line_bad_and_empty_file(tmp_path):
    path = tmp_path / "first.jsonl"
    path.write_text('{"input": "a", "label": false}\n')
    with pytest.raises(ValueError, match=r"first\.jsonl, line 1: \"label\" must be an int"):
        read_jsonl(path)
    path.write_text("\n  \n")
    with pytest.raises(ValueError, match="no examples"):
        read_jsonl(path)


def test_write_rejects_what_read_would_reject(tmp_path):
    path = tmp_path / "w.jsonl"
    with pytest.raises(ValueError, match="one kind"):
        write_jsonl(path, [Classification("a", 1), Generation("p", "x")])
    with pytest.raises(ValueError, match="example 1: \"input\" must be a non-empty"):
        write_jsonl(path, [Classification("a", 1), Classification("", 0)])
    with pytest.raises(ValueError, match="must be an int"):
        write_jsonl(path, [Classification("a", True)])
    with pytest.raises(TypeError, match="Classification or Generation"):
        write_jsonl(path, [{"input": "a", "label": 1}])
    assert not path.exists()


def test_vocab_layout_classification():
    vocab = CharVocab.from_examples([Classification("ba", 1), Classification("ca", 0)])
    assert vocab.tokens == ["<pad>", "<sep>", "<eos>", "a", "b", "c", "<label:0>", "<label:1>"]
    assert (vocab.pad_id, vocab.sep_id, vocab.eos_id) == (0, 1, 2)
    assert len(vocab) == 8
    assert vocab.label_id(0) == 6 and vocab.label_id(1) == 7
    assert vocab.label_of(7) == 1
    with pytest.raises(ValueError, match="unknown label 2"):
        vocab.label_id(2)
    with pytest.raises(ValueError, match="not a label token"):
        vocab.label_of(3)


def test_vocab_layout_generation_has_no_label_tokens():
    vocab = CharVocab.from_examples([Generation("k1|", "v2"), Generation("zz", "1")])
    assert vocab.tokens == ["<pad>", "<sep>", "<eos>", "1", "2", "k", "v", "z", "|"]
    assert vocab.labels == []


@pytest.mark.parametrize("examples", [CLASSIFICATION, GENERATION])
def test_vocab_encode_decode_round_trip(examples):
    vocab = CharVocab.from_examples(examples)
    for ex in examples:
        for text in ((ex.input,) if isinstance(ex, Classification) else (ex.prompt, ex.answer)):
            ids = vocab.encode(text)
            assert len(ids) == len(text)
            assert all(3 <= i < 3 + len(vocab.chars) for i in ids)
            assert vocab.decode(ids) == text
            assert vocab.decode([vocab.pad_id, *ids, vocab.eos_id, *ids]) == text


def test_decode_names_non_character_tokens_and_checks_range():
    vocab = CharVocab.from_examples([Classification("ab", 1)])
    ids = [*vocab.encode("ab"), vocab.sep_id, vocab.label_id(1)]
    assert vocab.decode(ids) == "ab<sep><label:1>"
    with pytest.raises(ValueError, match="token id must be in 0..5"):
        vocab.decode([6])


def test_unknown_character_is_an_error_naming_it():
    vocab = CharVocab.from_examples([Classification("abab", 1)])
    with pytest.raises(ValueError, match=r"unknown character 'c' \(U\+0063\) at position 2"):
        vocab.encode("abca")
    with pytest.raises(ValueError, match="unknown character"):
        CharVocab.from_examples([Generation("ab", "b")]).encode("€")


def test_vocab_rejects_empty_training_set():
    with pytest.raises(ValueError, match="non-empty"):
        CharVocab.from_examples([])
