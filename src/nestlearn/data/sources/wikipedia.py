"""``wikipedia``: the English Wikipedia sample shipped with gensim's tests (106 articles).

Read with gensim's own wiki parser; redirects are dropped, ``''``/``'''`` emphasis and ``==``
heading marks removed, and each article starts with its title.
"""

from __future__ import annotations

import bz2
import importlib.util
import re
from pathlib import Path

from ..corpus import Document
from .base import SourceInfo, not_installed, tidy

__all__ = ["SOURCE", "load_wikipedia"]

_WIKI_SAMPLE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
_WIKI_EMPHASIS = re.compile(r"'{2,}")
_WIKI_HEADING = re.compile(r"^(=+)\s*(.*?)\s*\1$", re.MULTILINE)
_WIKI_EMPTY_BULLET = re.compile(r"^[*#:;]+\s*$", re.MULTILINE)


def load_wikipedia() -> list[Document]:
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise not_installed("wikipedia", "the 'gensim' package", SOURCE.install)
    path = Path(next(iter(spec.submodule_search_locations))) / "test" / "test_data" / _WIKI_SAMPLE
    if not path.is_file():
        raise not_installed("wikipedia", f"the sample file {path}", SOURCE.install)
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    docs = []
    with bz2.open(path, "rb") as f:
        for title, wikitext, _page_id in extract_pages(f):
            text = filter_wiki(wikitext)
            if text.lstrip()[:9].upper() == "#REDIRECT":
                continue
            text = _WIKI_EMPHASIS.sub("", text)
            text = _WIKI_HEADING.sub(r"\2", text)
            text = tidy(_WIKI_EMPTY_BULLET.sub("", text))
            if text:
                docs.append(Document("wikipedia", title, f"{title}\n\n{text}"))
    return docs


SOURCE = SourceInfo(
    "wikipedia",
    "English Wikipedia sample shipped with gensim's tests, 106 articles (about 3 MB)",
    "pip install gensim   (or: pip install 'nestlearn[corpus]')",
    "gensim: LGPL-2.1; Wikipedia text: CC BY-SA",
    load_wikipedia,
)
