"""Token-id caches per split: :func:`prepare_data` and :func:`load_prepared`.

:func:`prepare_data` loads sources, splits them by document (``corpus.split_documents``), trains
or loads a tokenizer on the training split, tokenizes each split once and caches the ids:

    <cache_dir>/<tokenizer>-<key16>/       key = sha256(corpus digest, fractions, tokenizer spec)
        tokenizer.json                     the tokenizer used (BPE trained on the train split)
        documents.json                     per split: [source, doc_id, chars, tokens] per document
        {train,validation,test}.bin        token ids, raw little-endian uint16 or uint32
        {train,validation,test}.docs.npy   int64 offsets, len = documents + 1
        meta.json                          dtype, eot_id, vocab size, token counts; written last

The ids are uint16 when the vocabulary has at most 65536 entries, else uint32. An entry is built
in a private temporary directory (``.<name>.<pid>.tmp``) and renamed into place, so a cache
directory is either complete or absent, even with concurrent or killed writers. The corpus digest
covers every document's text, so an edited user file gives a new cache entry. ``cache_dir``
defaults to ``$NESTLEARN_DATA_CACHE`` or ``./data_cache``. Each split is opened as a memory-mapped
:class:`~nestlearn.data.tokens.TokenArray`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .corpus import DEFAULT_FRACTIONS, SPLITS, Document, corpus_digest, split_documents
from .sources import DEFAULT_SOURCES, load_corpus
from .tokenizer import (
    DEFAULT_VOCAB_SIZE,
    BPETokenizer,
    ByteTokenizer,
    Tokenizer,
    load_tokenizer,
)
from .tokens import TokenArray

__all__ = [
    "PreparedData",
    "default_cache_dir",
    "load_prepared",
    "prepare_data",
    "prepare_documents",
]

_CACHE_FORMAT = 1
_ENCODE_CHUNK_CHARS = 1 << 20  # tokenize about 1 MB of text per batch (progress granularity)


def default_cache_dir() -> Path:
    """``$NESTLEARN_DATA_CACHE`` or ``./data_cache``."""
    return Path(os.environ.get("NESTLEARN_DATA_CACHE", "data_cache"))


def _concatenate(parts: list[TokenArray]) -> TokenArray:
    if len(parts) == 1:
        return parts[0]
    ids = np.concatenate([np.asarray(p.ids) for p in parts])
    lengths = np.concatenate([np.diff(p.docs) for p in parts])
    docs = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return TokenArray(ids, docs, parts[0].eot_id, parts[0].name)


@dataclass
class PreparedData:
    """A tokenized corpus: the tokenizer and one :class:`TokenArray` per split."""

    directory: Path
    tokenizer: Tokenizer
    splits: dict[str, TokenArray]
    meta: dict[str, Any] = field(default_factory=dict)
    _table: dict[str, Any] | None = field(default=None, repr=False)

    def __getitem__(self, split: str) -> TokenArray:
        if split not in self.splits:
            raise ValueError(f"unknown split '{split}'; allowed: {', '.join(self.splits)}")
        return self.splits[split]

    @property
    def train(self) -> TokenArray:
        return self.splits["train"]

    @property
    def validation(self) -> TokenArray:
        return self.splits["validation"]

    @property
    def test(self) -> TokenArray:
        return self.splits["test"]

    def documents(self, split: str) -> list[tuple[str, str, int, int]]:
        """``(source, doc_id, chars, tokens)`` of each document of ``split``, in order."""
        self[split]  # checks the name
        if self._table is None:
            self._table = json.loads((self.directory / "documents.json").read_text("utf-8"))
        return [tuple(row) for row in self._table["splits"][split]]  # type: ignore[misc]

    def by_source(self, split: str) -> dict[str, TokenArray]:
        """``split`` cut into one TokenArray per source, in corpus order (e.g. one per domain
        for continual learning). Views of the memory map when a source's documents are
        contiguous, which they are unless the same source name was given twice."""
        sources = [row[0] for row in self.documents(split)]
        runs: dict[str, list[TokenArray]] = {}
        start = 0
        for j in range(1, len(sources) + 1):
            if j == len(sources) or sources[j] != sources[start]:
                name = f"{split}/{sources[start]}"
                runs.setdefault(sources[start], []).append(
                    self[split].select_documents(start, j, name=name)
                )
                start = j
        return {source: _concatenate(parts) for source, parts in runs.items()}


def prepare_data(
    sources: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] = DEFAULT_SOURCES,
    *,
    tokenizer: str | os.PathLike[str] | Tokenizer = "bpe",
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> PreparedData:
    """Load ``sources`` (see ``corpus.load_corpus``) and :func:`prepare_documents` them."""
    docs = load_corpus(sources)
    return prepare_documents(
        docs,
        tokenizer=tokenizer,
        vocab_size=vocab_size,
        fractions=fractions,
        cache_dir=cache_dir,
        progress=progress,
    )


def prepare_documents(
    docs: Sequence[Document],
    *,
    tokenizer: str | os.PathLike[str] | Tokenizer = "bpe",
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> PreparedData:
    """Split, tokenize and cache ``docs``, or load the cache when it is already there.

    ``tokenizer`` is ``"bpe"`` (train a byte-level BPE of ``vocab_size`` on the training split),
    ``"byte"`` (256 bytes + EOT), a path to a ``tokenizer.json`` or a :class:`Tokenizer`.
    """
    docs = list(docs)
    if not docs:
        raise ValueError("the corpus is empty: no documents to prepare")
    splits = split_documents(docs, fractions=fractions)
    if not splits["train"]:
        raise ValueError(
            "the training split is empty; give more documents or a larger train fraction"
        )
    tok_obj, spec = _resolve_tokenizer(tokenizer, vocab_size)
    key_src = json.dumps(
        {
            "format": _CACHE_FORMAT,
            "corpus": corpus_digest(docs),
            "fractions": [float(f) for f in fractions],
            "tokenizer": spec,
        },
        sort_keys=True,
    )
    key = hashlib.sha256(key_src.encode()).hexdigest()[:16]
    prefix = spec.get("name", "tok")
    directory = (
        Path(cache_dir if cache_dir is not None else default_cache_dir()) / f"{prefix}-{key}"
    )
    if (directory / "meta.json").is_file():
        return load_prepared(directory)
    # Build everything in a private temporary directory, then rename it into place: a cache
    # directory either is complete or does not exist, even with concurrent or killed writers.
    tmp_dir = directory.with_name(f".{directory.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir(parents=True)
    try:
        _build_cache(tmp_dir, docs, splits, tok_obj, spec, vocab_size, fractions, progress)
        if directory.exists() and not (directory / "meta.json").is_file():
            shutil.rmtree(directory)  # a stale, incomplete entry
        try:
            os.rename(tmp_dir, directory)
        except OSError:
            if not (directory / "meta.json").is_file():  # not "another process finished first"
                raise
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return load_prepared(directory)


def _build_cache(
    directory: Path,
    docs: list[Document],
    splits: dict[str, list[Document]],
    tok_obj: Tokenizer | None,
    spec: dict[str, Any],
    vocab_size: int,
    fractions: Sequence[float],
    progress: bool,
) -> None:
    if tok_obj is None:  # train the BPE on the training split only
        tok_obj = BPETokenizer.train(
            (d.text for d in splits["train"]), vocab_size=vocab_size, show_progress=progress
        )
    tok_obj.save(directory / "tokenizer.json")

    dtype = np.uint16 if tok_obj.vocab_size <= 65536 else np.uint32
    table: dict[str, list[list[Any]]] = {}
    stats: dict[str, dict[str, int]] = {}
    total_chars = sum(len(d.text) for d in docs)
    bar = tqdm(
        total=total_chars, unit="char", unit_scale=True, desc="tokenizing", disable=not progress
    )
    for split in SPLITS:
        offsets, rows = _write_split(directory, split, splits[split], tok_obj, dtype, bar)
        table[split] = rows
        stats[split] = {
            "documents": len(rows),
            "chars": sum(r[2] for r in rows),
            "tokens": int(offsets[-1]),
        }
    bar.close()
    (directory / "documents.json").write_text(
        json.dumps({"fractions": list(fractions), "splits": table}), encoding="utf-8"
    )
    meta = {
        "format": _CACHE_FORMAT,
        "dtype": np.dtype(dtype).name,
        "eot_id": tok_obj.eot_id,
        "vocab_size": tok_obj.vocab_size,
        "tokenizer": spec,
        "tokenizer_fingerprint": tok_obj.fingerprint,
        "fractions": list(fractions),
        "sources": sorted({d.source for d in docs}),
        "splits": stats,
    }
    (directory / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")


def load_prepared(directory: str | os.PathLike[str]) -> PreparedData:
    """Open a cache directory written by :func:`prepare_documents` (memory-mapped, read-only)."""
    directory = Path(directory)
    meta_path = directory / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"no prepared data at {directory} (meta.json missing)")
    meta = json.loads(meta_path.read_text("utf-8"))
    tok = load_tokenizer(directory / "tokenizer.json")
    if tok.fingerprint != meta["tokenizer_fingerprint"]:
        raise ValueError(f"{directory}/tokenizer.json does not match meta.json; delete {directory}")
    splits = {}
    for split in SPLITS:
        n = meta["splits"][split]["tokens"]
        bin_path = directory / f"{split}.bin"
        if n:
            ids = np.memmap(bin_path, dtype=meta["dtype"], mode="r", shape=(n,))
        else:
            ids = np.zeros(0, dtype=meta["dtype"])
        docs = np.load(directory / f"{split}.docs.npy")
        splits[split] = TokenArray(ids, docs, int(meta["eot_id"]), split)
    return PreparedData(directory, tok, splits, meta)


def _resolve_tokenizer(
    tokenizer: str | os.PathLike[str] | Tokenizer, vocab_size: int
) -> tuple[Tokenizer | None, dict[str, Any]]:
    """The tokenizer (None: train a BPE later) and the spec that enters the cache key."""
    if isinstance(tokenizer, str) and tokenizer == "bpe":
        if not isinstance(vocab_size, int) or vocab_size < 257:
            raise ValueError(f"vocab_size must be an integer >= 257, got {vocab_size!r}")
        return None, {"name": f"bpe{vocab_size}", "type": "bpe", "vocab_size": vocab_size}
    if isinstance(tokenizer, str) and tokenizer == "byte":
        tok: Tokenizer = ByteTokenizer()
    elif isinstance(tokenizer, (str, os.PathLike)):
        if (
            isinstance(tokenizer, str)
            and not tokenizer.endswith(".json")
            and not Path(tokenizer).exists()
        ):
            raise ValueError(
                f"unknown tokenizer '{tokenizer}'; allowed: 'bpe', 'byte' "
                "or a path to tokenizer.json"
            )
        tok = load_tokenizer(tokenizer)
    elif isinstance(tokenizer, Tokenizer):
        tok = tokenizer
    else:
        raise ValueError(
            "tokenizer must be 'bpe', 'byte', a tokenizer.json path or a Tokenizer, "
            f"got {tokenizer!r}"
        )
    return tok, {"name": tok.name, "fingerprint": tok.fingerprint}


def _write_split(
    directory: Path,
    split: str,
    docs: list[Document],
    tok: Tokenizer,
    dtype: type[np.unsignedinteger[Any]],
    bar: tqdm,
) -> tuple[np.ndarray, list[list[Any]]]:
    lengths: list[int] = []
    rows: list[list[Any]] = []
    eot = np.array([tok.eot_id], dtype=dtype)
    with open(directory / f"{split}.bin", "wb") as f:
        for chunk in _chunks(docs, _ENCODE_CHUNK_CHARS):
            for d, ids in zip(chunk, tok.encode_batch([d.text for d in chunk]), strict=True):
                np.asarray(ids, dtype=dtype).tofile(f)
                eot.tofile(f)
                lengths.append(len(ids) + 1)
                rows.append([d.source, d.doc_id, len(d.text), len(ids)])
            bar.update(sum(len(d.text) for d in chunk))
    offsets = np.concatenate([[0], np.cumsum(np.asarray(lengths, dtype=np.int64))]).astype(np.int64)
    np.save(directory / f"{split}.docs.npy", offsets)
    return offsets, rows


def _chunks(docs: list[Document], max_chars: int) -> Iterator[list[Document]]:
    chunk: list[Document] = []
    size = 0
    for d in docs:
        chunk.append(d)
        size += len(d.text)
        if size >= max_chars:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk
