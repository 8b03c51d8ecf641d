"""The train/validation/test split by document (``nestlearn.data.corpus``)."""

from __future__ import annotations

import pytest

from nestlearn.data import SPLITS, Document, split_documents, split_of


def _docs(n: int, source: str = "s") -> list[Document]:
    return [Document(source, f"doc-{i:04d}", f"text {i}") for i in range(n)]


def _keys(docs: list[Document]) -> set[tuple[str, str]]:
    return {(d.source, d.doc_id) for d in docs}


def test_split_is_deterministic_disjoint_and_covers_all():
    docs = _docs(500, "a") + _docs(300, "b")
    first, second = split_documents(docs), split_documents(list(docs))
    assert first == second
    parts = [_keys(first[s]) for s in SPLITS]
    assert sum(len(p) for p in parts) == len(docs)
    assert set().union(*parts) == _keys(docs)
    for i in range(3):
        for j in range(i + 1, 3):
            assert not parts[i] & parts[j]
    # roughly the default fractions
    assert 0.85 < len(first["train"]) / len(docs) < 0.95
    assert len(first["validation"]) > 10 and len(first["test"]) > 10


def test_split_of_a_document_does_not_depend_on_the_others():
    docs = _docs(400)
    alone = {(d.source, d.doc_id): split_of(d) for d in docs}
    together = split_documents(docs)
    for split, part in together.items():
        for d in part:
            assert alone[(d.source, d.doc_id)] == split
    more = split_documents(docs + _docs(50, "other"))
    for split in SPLITS:
        assert _keys(together[split]) <= _keys(more[split])


@pytest.mark.parametrize("n", [3, 4, 5, 7, 10, 20])
def test_split_nonempty_validation_and_test_from_three_documents(n):
    for source in ["x", "y", "long-source-name"]:
        out = split_documents(_docs(n, source))
        assert all(out[s] for s in SPLITS), {s: len(out[s]) for s in SPLITS}


def test_split_nonempty_for_any_three_or_more_documents():
    for n in range(3, 40):
        for offset in range(0, 200, 20):
            docs = [Document("s", f"{i}", "x") for i in range(offset, offset + n)]
            out = split_documents(docs)
            assert all(out[s] for s in SPLITS), (n, offset)
    singletons = [Document(f"source-{i}", "only", "x") for i in range(3)]
    assert all(split_documents(singletons)[s] for s in SPLITS)


def test_split_applies_per_source_and_keeps_corpus_order():
    docs = _docs(40, "a") + _docs(5, "b")
    out = split_documents(docs)
    for split in SPLITS:
        assert {d.source for d in out[split]} == {"a", "b"}
        order = [docs.index(d) for d in out[split]]
        assert order == sorted(order)


def test_split_fewer_than_three_documents_goes_by_hash():
    out = split_documents(_docs(2))
    assert sum(len(v) for v in out.values()) == 2


@pytest.mark.parametrize(
    "fractions", [(0.9, 0.1), (0.5, 0.2, 0.2), (0.0, 0.5, 0.5), (1.2, -0.1, -0.1)]
)
def test_split_rejects_bad_fractions(fractions):
    with pytest.raises(ValueError, match="fractions"):
        split_documents(_docs(5), fractions=fractions)


def test_split_custom_fractions():
    out = split_documents(_docs(1000), fractions=(0.5, 0.25, 0.25))
    assert 400 < len(out["train"]) < 600


def test_split_of_empty_corpus_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        split_documents([])
