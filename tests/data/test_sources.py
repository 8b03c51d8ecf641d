"""Corpus sources (``nestlearn.data.sources``): user files, the registry and its errors, markup."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nestlearn.data import load_corpus, load_source, load_text_files
from nestlearn.data.sources.austen import _AUSTEN_RDB
from nestlearn.data.sources.shakespeare import _play_documents


def test_directory_of_txt_and_jsonl(tmp_path):
    root = tmp_path / "mine"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("first document\n", encoding="utf-8")
    (root / "sub" / "b.txt").write_text("second ünïcode document", encoding="utf-8")
    (root / "empty.txt").write_text("  \n", encoding="utf-8")
    (root / "ignored.md").write_text("not read", encoding="utf-8")
    lines = [{"text": "json one"}, {"text": "json two", "id": "x7"}, {"text": "   "}]
    (root / "c.jsonl").write_text(
        "\n".join(json.dumps(r) for r in lines) + "\n\n", encoding="utf-8"
    )
    docs = load_text_files(root)
    assert [d.doc_id for d in docs] == ["a.txt", "c.jsonl#1", "c.jsonl#x7", "sub/b.txt"]
    assert {d.source for d in docs} == {"mine"}
    assert docs[0].text == "first document"
    assert load_text_files(root, source="custom")[0].source == "custom"
    # a single file, and a path given to load_corpus as a string
    single = load_text_files(root / "a.txt")
    assert [(d.source, d.doc_id) for d in single] == [("a.txt", "a.txt")]
    assert load_corpus(str(root)) == docs
    assert load_corpus([root]) == docs


def test_missing_path_is_file_not_found(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope"):
        load_text_files(missing)
    with pytest.raises(FileNotFoundError, match="nope"):
        load_corpus([str(missing)])


def test_empty_directory_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match=r"holds no \.txt or \.jsonl"):
        load_text_files(tmp_path)


def test_directory_of_empty_files_is_a_value_error(tmp_path):
    (tmp_path / "a.txt").write_text("", encoding="utf-8")
    (tmp_path / "b.txt").write_text("\n\n  \n", encoding="utf-8")
    with pytest.raises(ValueError, match="all 2 file"):
        load_text_files(tmp_path)
    with pytest.raises(ValueError, match="empty"):
        load_text_files(tmp_path / "a.txt")


def test_bad_files_name_the_path(tmp_path):
    (tmp_path / "x.csv").write_text("a,b", encoding="utf-8")
    with pytest.raises(ValueError, match=r"x\.csv.*allowed: \.txt, \.jsonl"):
        load_text_files(tmp_path / "x.csv")
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{oops\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: invalid JSON"):
        load_text_files(tmp_path / "bad.jsonl")
    (tmp_path / "notext.jsonl").write_text('{"body": "x"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="'text' field"):
        load_text_files(tmp_path / "notext.jsonl")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.txt: not valid UTF-8"):
        load_text_files(tmp_path / "latin1.txt")


def test_unknown_source_lists_allowed_names():
    with pytest.raises(ValueError, match="unknown corpus source 'tinystories'.*shakespeare"):
        load_corpus(["tinystories"])
    with pytest.raises(ValueError, match="unknown corpus source"):
        load_source("nope")
    with pytest.raises(ValueError, match="sources is empty"):
        load_corpus([])


def test_missing_optional_source_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("NESTLEARN_BIBLE_DIR", str(tmp_path / "no-bible"))
    with pytest.raises(FileNotFoundError, match="apt-get install sword-text-web"):
        load_source("bible")
    monkeypatch.setenv("NESTLEARN_AUSTEN_DIR", str(tmp_path / "no-austen"))
    if not (Path("/") / _AUSTEN_RDB).exists():  # not installed system-wide
        with pytest.raises(FileNotFoundError, match="apt-get download r-cran-janeaustenr"):
            load_source("austen")


def test_duplicate_documents_are_rejected(tmp_path):
    (tmp_path / "a.txt").write_text("x", encoding="utf-8")
    with pytest.raises(ValueError, match="duplicate document"):
        load_corpus([tmp_path, tmp_path])


def test_play_markdown_is_split_by_act_and_stripped():
    md = (
        "# The Play\n\n## PROLOGUE\n\n_Enter Chorus_\n\n**CHORUS**  \nO for a muse\n\n"
        "## ACT I\n\n### SCENE I. A room.\n\n**ONE**  \nHello,\\-- there.  \n\n"
        "#### ACT II\n\n### SCENE I. Outside.\n\n**TWO**  \n__\\[Aside]_ Bye.\n"
    )
    docs = _play_documents("comedies", "the-play", md)
    assert [d.doc_id for d in docs] == [
        "comedies/the-play/prologue",
        "comedies/the-play/act-i",
        "comedies/the-play/act-ii",
    ]
    assert docs[1].text == "The Play\n\nACT I\n\nSCENE I. A room.\n\nONE\nHello,-- there."
    assert docs[2].text.endswith("TWO\n[Aside] Bye.")
    assert all(c not in d.text for d in docs for c in "#*_\\")
