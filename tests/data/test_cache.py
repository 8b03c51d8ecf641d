"""Token caches (``nestlearn.data.cache``): memmap, EOT boundaries, cache keys, the command line."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from nestlearn.data import (
    SPLITS,
    ByteTokenizer,
    Document,
    TokenArray,
    load_prepared,
    prepare_data,
    prepare_documents,
)

WORDS = ["the", "king", "doth", "wake", "tonight", "and", "takes", "his", "rouse", "wassail"]


def _corpus(n: int = 30, seed: int = 0) -> list[Document]:
    rng = np.random.default_rng(seed)
    docs = []
    for i in range(n):
        words = rng.choice(WORDS, size=int(rng.integers(20, 200)))
        docs.append(Document("synth", f"d{i:03d}", " ".join(words) + f"\nDocument {i} ends. ü"))
    return docs


@pytest.fixture(scope="module")
def byte_data(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return prepare_documents(_corpus(), tokenizer="byte", cache_dir=cache, progress=False)


@pytest.fixture(scope="module")
def bpe_data(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return prepare_documents(
        _corpus(), tokenizer="bpe", vocab_size=320, cache_dir=cache, progress=False
    )


@pytest.mark.parametrize("which", ["byte_data", "bpe_data"])
def test_memmap_equals_direct_tokenization(which, request):
    data = request.getfixturevalue(which)
    tok = data.tokenizer
    from nestlearn.data import split_documents

    splits = split_documents(_corpus())
    for split in SPLITS:
        arr = data[split]
        assert isinstance(arr.ids, np.memmap) and arr.ids.dtype == np.uint16
        assert arr.num_documents == len(splits[split])
        expected = []
        for d in splits[split]:
            expected += tok.encode(d.text) + [tok.eot_id]
        assert arr.ids.tolist() == expected
        for j, d in enumerate(splits[split]):
            assert tok.decode(arr.document(j)) == d.text
        rows = data.documents(split)
        assert [(r[0], r[1]) for r in rows] == [(d.source, d.doc_id) for d in splits[split]]


@pytest.mark.parametrize("which", ["byte_data", "bpe_data"])
def test_eot_marks_exactly_the_document_ends(which, request):
    data = request.getfixturevalue(which)
    for split in SPLITS:
        arr = data[split]
        ids = np.asarray(arr.ids)
        eots = np.flatnonzero(ids == arr.eot_id)
        assert eots.tolist() == arr.eot_positions().tolist()
        assert len(eots) == arr.num_documents and eots[-1] == len(arr) - 1


def test_bpe_is_trained_on_the_training_split_only(bpe_data, tmp_path):
    from nestlearn.data import BPETokenizer, split_documents

    train = split_documents(_corpus())["train"]
    direct = BPETokenizer.train([d.text for d in train], vocab_size=320)
    assert direct.fingerprint == bpe_data.tokenizer.fingerprint
    assert (bpe_data.directory / "tokenizer.json").is_file()


def test_cache_is_reused_and_keyed_by_content(tmp_path):
    docs = _corpus(10)
    first = prepare_documents(docs, tokenizer="byte", cache_dir=tmp_path, progress=False)
    stamp = os.stat(first.directory / "train.bin").st_mtime_ns
    again = prepare_documents(docs, tokenizer="byte", cache_dir=tmp_path, progress=False)
    assert again.directory == first.directory
    assert os.stat(again.directory / "train.bin").st_mtime_ns == stamp
    assert load_prepared(first.directory).meta == first.meta
    edited = docs[:-1] + [Document("synth", docs[-1].doc_id, docs[-1].text + "!")]
    other = prepare_documents(edited, tokenizer="byte", cache_dir=tmp_path, progress=False)
    refract = prepare_documents(
        docs, tokenizer="byte", fractions=(0.8, 0.1, 0.1), cache_dir=tmp_path, progress=False
    )
    assert len({first.directory, other.directory, refract.directory}) == 3
    assert not list(tmp_path.rglob("*.tmp*"))


def test_prepare_data_from_files_and_tokenizer_path(tmp_path, bpe_data):
    root = tmp_path / "texts"
    root.mkdir()
    for d in _corpus(12):
        (root / f"{d.doc_id}.txt").write_text(d.text, encoding="utf-8")
    data = prepare_data(
        root,
        tokenizer=bpe_data.directory / "tokenizer.json",
        cache_dir=tmp_path / "c",
        progress=False,
    )
    assert data.tokenizer.fingerprint == bpe_data.tokenizer.fingerprint
    assert sum(data[s].num_documents for s in SPLITS) == 12
    assert data.meta["sources"] == ["texts"]


def test_large_vocabulary_uses_uint32(tmp_path):
    class WideTokenizer(ByteTokenizer):
        name = "wide"

        @property
        def vocab_size(self) -> int:
            return 70_000

        @property
        def eot_id(self) -> int:
            return 69_999

        # saved and reloaded as the byte tokenizer (same fingerprint): only the dtype matters here

    assert TokenArray.from_documents([[70_000]], eot_id=0).ids.dtype == np.uint32
    arr = TokenArray.from_documents([[1, 2], [3]], eot_id=69_999)
    assert arr.ids.dtype == np.uint32 and arr.ids.tolist() == [1, 2, 69_999, 3, 69_999]
    data = prepare_documents(
        _corpus(5), tokenizer=WideTokenizer(), cache_dir=tmp_path, progress=False
    )
    assert data.meta["dtype"] == "uint32" and data.train.ids.dtype == np.uint32
    assert data.train.ids[-1] == 69_999


def test_prepare_errors(tmp_path):
    with pytest.raises(ValueError, match="corpus is empty"):
        prepare_documents([], tokenizer="byte", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown tokenizer 'gpt2'"):
        prepare_documents(_corpus(5), tokenizer="gpt2", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="vocab_size"):
        prepare_documents(_corpus(5), tokenizer="bpe", vocab_size=10, cache_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="corpus path not found"):
        prepare_data(tmp_path / "missing", cache_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="meta.json"):
        load_prepared(tmp_path / "nothing")


def test_by_source_gives_one_array_per_domain(tmp_path):
    docs = _corpus(12) + [Document("other", f"o{i}", f"other text {i}") for i in range(6)]
    data = prepare_documents(docs, tokenizer="byte", cache_dir=tmp_path, progress=False)
    for split in SPLITS:
        parts = data.by_source(split)
        assert list(parts) == ["synth", "other"]
        joined = np.concatenate([np.asarray(p.ids) for p in parts.values()])
        assert joined.tolist() == np.asarray(data[split].ids).tolist()
        for part in parts.values():
            assert np.asarray(part.ids)[part.eot_positions()].tolist() == [256] * part.num_documents
    arr = TokenArray.from_documents([[1], [2, 3], [4]], eot_id=9)
    assert arr.select_documents(1, 3).ids.tolist() == [2, 3, 9, 4, 9]
    with pytest.raises(ValueError, match="document range"):
        arr.select_documents(2, 5)
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        data.documents("dev")


def test_incomplete_cache_entry_is_rebuilt(tmp_path):
    docs = _corpus(8)
    first = prepare_documents(docs, tokenizer="byte", cache_dir=tmp_path, progress=False)
    expected = np.asarray(first.train.ids).tolist()
    (first.directory / "meta.json").unlink()  # as if a writer died before finishing
    (first.directory / "train.bin").write_bytes(b"garbage")
    again = prepare_documents(docs, tokenizer="byte", cache_dir=tmp_path, progress=False)
    assert again.directory == first.directory
    assert np.asarray(again.train.ids).tolist() == expected
    assert [p.name for p in tmp_path.iterdir()] == [first.directory.name]


def test_command_line_prepares_and_reports(tmp_path, capsys):
    from nestlearn.data.__main__ import main

    for d in _corpus(6):
        (tmp_path / f"{d.doc_id}.txt").write_text(d.text, encoding="utf-8")
    assert main([str(tmp_path), "--tokenizer", "byte", "--cache-dir", str(tmp_path / "c")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert sum(s["documents"] for s in report["splits"].values()) == 6
    assert main(["no-such-source", "--cache-dir", str(tmp_path / "c")]) == 2
    assert "unknown corpus source 'no-such-source'" in capsys.readouterr().err
