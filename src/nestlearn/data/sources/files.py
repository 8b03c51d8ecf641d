"""A user's own text: ``.txt`` files, ``.jsonl`` files, or a directory searched for both."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..corpus import Document

__all__ = ["TEXT_SUFFIXES", "load_text_files"]

TEXT_SUFFIXES = (".txt", ".jsonl")


def _read_utf8(path: Path) -> str:
    try:
        return path.read_text("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not valid UTF-8 ({e.reason} at byte {e.start})") from None


def _jsonl_documents(path: Path, source: str, doc_prefix: str) -> list[Document]:
    docs = []
    for line_no, line in enumerate(_read_utf8(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{line_no}: invalid JSON ({e.msg})") from None
        text = record.get("text") if isinstance(record, dict) else None
        if not isinstance(text, str):  # bad user data, hence ValueError (house rule)
            msg = f"{path}:{line_no}: expected an object with a string 'text' field"
            raise ValueError(msg)  # noqa: TRY004
        text = text.strip()
        if text:
            doc_id = str(record.get("id", line_no))
            docs.append(Document(source, f"{doc_prefix}#{doc_id}", text))
    return docs


def load_text_files(path: str | os.PathLike[str], *, source: str | None = None) -> list[Document]:
    """Read a ``.txt`` file, a ``.jsonl`` file or a directory of them (recursively, sorted).

    A ``.txt`` file is one document; a ``.jsonl`` file holds one document per line in its
    ``"text"`` field (``"id"`` optional). ``doc_id`` is the path relative to ``path`` (plus
    ``#id`` or ``#line`` for JSONL), ``source`` defaults to the file or directory name, so the
    split does not change when the directory moves. Whitespace-only documents are skipped.
    """
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"corpus path not found: {root}")
    source = source or root.name
    if root.is_dir():
        files = sorted(p for p in root.rglob("*") if p.suffix in TEXT_SUFFIXES and p.is_file())
        if not files:
            raise ValueError(f"corpus directory {root} holds no .txt or .jsonl files")
    elif root.suffix in TEXT_SUFFIXES:
        files = [root]
    else:
        raise ValueError(
            f"corpus file {root}: unsupported type '{root.suffix}'; allowed: .txt, .jsonl"
        )
    base = root if root.is_dir() else root.parent
    docs: list[Document] = []
    for f in files:
        rel = f.relative_to(base).as_posix()
        if f.suffix == ".jsonl":
            docs.extend(_jsonl_documents(f, source, rel))
        else:
            text = _read_utf8(f).strip()
            if text:
                docs.append(Document(source, rel, text))
    if not docs:
        raise ValueError(f"corpus path {root}: all {len(files)} file(s) are empty")
    return docs
