"""Token caches (memmap, EOT boundaries, cache keys) and the window samplers."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from nestlearn.data import (
    SPLITS,
    ByteTokenizer,
    Document,
    RandomWindows,
    SequentialWindows,
    TokenArray,
    eval_windows,
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


# ---------------------------------------------------------------------------- cache


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


# ---------------------------------------------------------------------------- samplers


@pytest.fixture
def stream() -> TokenArray:
    return TokenArray.from_documents([list(range(1, 40)), list(range(50, 120)), [7] * 30], eot_id=0)


def test_random_windows_shapes_targets_and_resume(stream):
    sampler = RandomWindows(stream, seq_len=16, batch_size=4, seed=3)
    batches = [next(sampler) for _ in range(5)]
    for b in batches:
        assert b.inputs.shape == b.targets.shape == (4, 16) and b.inputs.dtype == torch.int64
        for row, pos in zip(b.inputs, b.positions, strict=True):
            assert row.tolist() == np.asarray(stream.ids[pos : pos + 16]).tolist()
        assert torch.equal(b.inputs[:, 1:], b.targets[:, :-1])
    assert int(max(b.positions.max() for b in batches)) <= len(stream) - 17
    # resume from the state after two batches: the next three are identical
    fresh = RandomWindows(stream, seq_len=16, batch_size=4, seed=3)
    next(fresh), next(fresh)
    state = fresh.state_dict()
    resumed = RandomWindows(stream, seq_len=16, batch_size=4, seed=999)
    resumed.load_state_dict(state)
    for b in batches[2:]:
        assert torch.equal(next(resumed).inputs, b.inputs)
    other_seed = RandomWindows(stream, seq_len=16, batch_size=4, seed=4)
    assert not torch.equal(next(other_seed).positions, batches[0].positions)


def test_sequential_windows_stream_in_order_and_resume(stream):
    one = list(SequentialWindows(stream, seq_len=10, batch_size=1))
    flat = torch.cat([b.inputs[0] for b in one]).tolist()
    assert flat == np.asarray(stream.ids[: len(flat)]).tolist()
    lanes = SequentialWindows(stream, seq_len=5, batch_size=3, epochs=2)
    got = list(lanes)
    assert len(got) == len(lanes) == 2 * lanes.batches_per_epoch
    for k in range(lanes.batches_per_epoch - 1):  # each row continues the same row
        assert torch.equal(got[k + 1].positions, got[k].positions + 5)
    assert torch.equal(got[0].positions, got[lanes.batches_per_epoch].positions)
    with pytest.raises(StopIteration):
        next(lanes)
    again = SequentialWindows(stream, seq_len=5, batch_size=3, epochs=2)
    for _ in range(4):
        next(again)
    resumed = SequentialWindows(stream, seq_len=5, batch_size=3, epochs=2)
    resumed.load_state_dict(again.state_dict())
    assert [b.inputs.tolist() for b in resumed] == [b.inputs.tolist() for b in got[4:]]
    forever = SequentialWindows(stream, seq_len=5, batch_size=3, epochs=None)
    assert sum(1 for _, _ in zip(range(100), forever, strict=False)) == 100


def test_eval_windows_score_every_target_once(stream):
    for seq_len, batch_size in [(7, 2), (10, 3), (len(stream) - 1, 1)]:
        targets = [
            b.targets.reshape(-1)
            for b in eval_windows(stream, seq_len=seq_len, batch_size=batch_size)
        ]
        assert torch.cat(targets).tolist() == np.asarray(stream.ids[1:]).tolist()


def test_sampler_errors(stream):
    with pytest.raises(ValueError, match="fewer than seq_len"):
        RandomWindows(stream, seq_len=len(stream), batch_size=1)
    with pytest.raises(ValueError, match="seq_len must be a positive integer"):
        RandomWindows(stream, seq_len=0, batch_size=1)
    with pytest.raises(ValueError, match="batch_size"):
        next(eval_windows(stream, seq_len=4, batch_size=0))
    with pytest.raises(ValueError, match="too short"):
        SequentialWindows(stream, seq_len=100, batch_size=2)
    with pytest.raises(ValueError, match="expected 'random'"):
        RandomWindows(stream, seq_len=4, batch_size=1).load_state_dict(
            {"kind": "sequential", "step": 1}
        )
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        RandomWindows(stream, seq_len=4, batch_size=1, seed=-1)
    with pytest.raises(ValueError, match="epochs"):
        SequentialWindows(stream, seq_len=4, epochs=0)


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
