"""Token-id caches per split, and the samplers that cut them into (input, target) windows.

:func:`prepare_data` loads sources, splits them by document (``corpus.split_documents``), trains
or loads a tokenizer on the training split, tokenizes each split once and caches the ids:

    <cache_dir>/<tokenizer>-<key16>/       key = sha256(corpus digest, fractions, tokenizer spec)
        tokenizer.json                     the tokenizer used (BPE trained on the train split)
        documents.json                     per split: [source, doc_id, chars, tokens] per document
        {train,validation,test}.bin        token ids, raw little-endian uint16 (vocab < 65536) or uint32
        {train,validation,test}.docs.npy   int64 offsets, len = documents + 1
        meta.json                          dtype, eot_id, vocab size, token counts; written last

An entry is built in a private temporary directory (``.<name>.<pid>.tmp``) and renamed into
place, so a cache directory is either complete or absent, even with concurrent or killed writers. The corpus digest covers every document's text, so an edited user file
gives a new cache entry. ``cache_dir`` defaults to ``$NESTLEARN_DATA_CACHE`` or ``./data_cache``.

Layout of a split: document 0's tokens, ``<|endoftext|>``, document 1's tokens,
``<|endoftext|>``, ... Every document ends with EOT, so ``ids[i] == eot_id`` marks the end of a
document and ``docs[j]`` is where document j starts (:class:`TokenArray`).

Samplers yield :class:`Batch` ``(inputs [B, T], targets [B, T], positions [B])`` of int64 tensors,
``targets`` being ``inputs`` shifted by one and ``positions`` the offset of ``inputs[:, 0]``:

- :class:`RandomWindows` (pre-training): windows at uniform random offsets; batch ``k`` depends
  only on ``(seed, k)``, so ``state_dict()`` is two integers and resuming is exact.
- :class:`SequentialWindows` (continual learning, streaming): the split, in document order, is cut
  into ``batch_size`` contiguous lanes; row ``b`` of batch ``k + 1`` continues row ``b`` of batch
  ``k`` (carry the memory state across batches; reset it where ``inputs == eot_id``).
- :func:`eval_windows` (evaluation): non-overlapping windows from the start, every target token
  scored exactly once; the remainder is a final shorter batch of one row.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm

from .corpus import (
    DEFAULT_FRACTIONS,
    DEFAULT_SOURCES,
    SPLITS,
    Document,
    corpus_digest,
    load_corpus,
    split_documents,
)
from .tokenizer import (
    DEFAULT_VOCAB_SIZE,
    BPETokenizer,
    ByteTokenizer,
    Tokenizer,
    load_tokenizer,
)

__all__ = [
    "Batch",
    "PreparedData",
    "RandomWindows",
    "SequentialWindows",
    "TokenArray",
    "default_cache_dir",
    "eval_windows",
    "load_prepared",
    "prepare_data",
    "prepare_documents",
]

_CACHE_FORMAT = 1
_ENCODE_CHUNK_CHARS = 1 << 20  # tokenize about 1 MB of text per batch (progress granularity)


def default_cache_dir() -> Path:
    """``$NESTLEARN_DATA_CACHE`` or ``./data_cache``."""
    return Path(os.environ.get("NESTLEARN_DATA_CACHE", "data_cache"))


# --------------------------------------------------------------------------------------------
# A tokenized split
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenArray:
    """One split's token ids (a read-only memory map) and its document offsets."""

    ids: np.ndarray  # [N] uint16/uint32; every document ends with eot_id
    docs: np.ndarray  # [D + 1] int64; document j is ids[docs[j]:docs[j + 1]] (EOT included)
    eot_id: int
    name: str = "tokens"

    def __post_init__(self) -> None:
        if self.ids.ndim != 1 or self.docs.ndim != 1 or len(self.docs) < 1:
            raise ValueError("TokenArray needs 1-D ids and 1-D document offsets")

    @classmethod
    def from_documents(
        cls, token_lists: Sequence[Sequence[int]], *, eot_id: int, name: str = "tokens"
    ) -> TokenArray:
        """Build an in-memory array: each list followed by ``eot_id``."""
        lengths = np.array([len(t) + 1 for t in token_lists], dtype=np.int64)
        docs = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        top = max([eot_id, *(max(t) for t in token_lists if len(t))])
        dtype = np.uint16 if top < 65536 else np.uint32
        ids = np.empty(int(docs[-1]), dtype=dtype)
        for j, t in enumerate(token_lists):
            ids[docs[j] : docs[j + 1] - 1] = t
            ids[docs[j + 1] - 1] = eot_id
        return cls(ids, docs, eot_id, name)

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def num_documents(self) -> int:
        return len(self.docs) - 1

    def eot_positions(self) -> np.ndarray:
        """Positions of the EOT token closing each document (``docs[1:] - 1``)."""
        return self.docs[1:] - 1

    def document(self, j: int) -> np.ndarray:
        """Token ids of document ``j`` without its closing EOT."""
        return np.asarray(self.ids[self.docs[j] : self.docs[j + 1] - 1])

    def select_documents(self, start: int, stop: int, *, name: str | None = None) -> TokenArray:
        """Documents ``start .. stop - 1`` as a TokenArray sharing this one's memory."""
        if not 0 <= start <= stop <= self.num_documents:
            raise ValueError(f"document range [{start}, {stop}) outside 0..{self.num_documents}")
        lo = int(self.docs[start])
        ids = self.ids[lo : int(self.docs[stop])]
        return TokenArray(ids, self.docs[start : stop + 1] - lo, self.eot_id, name or self.name)

    def window(self, start: int, length: int) -> np.ndarray:
        return np.asarray(self.ids[start : start + length], dtype=np.int64)


class Batch(NamedTuple):
    """One batch; ``inputs == eot_id`` marks document ends (where per-sequence memory resets)."""

    inputs: torch.Tensor  # [B, T] int64
    targets: torch.Tensor  # [B, T] int64, inputs shifted left by one
    positions: torch.Tensor  # [B] int64, offset of inputs[:, 0] in the split


def _batch(tokens: TokenArray, starts: np.ndarray, seq_len: int) -> Batch:
    rows = np.stack([tokens.window(int(s), seq_len + 1) for s in starts])  # [B, T + 1]
    data = torch.from_numpy(rows)
    inputs, targets = data[:, :-1].contiguous(), data[:, 1:].contiguous()
    return Batch(inputs, targets, torch.from_numpy(starts.astype(np.int64)))


def _concatenate(parts: list[TokenArray]) -> TokenArray:
    if len(parts) == 1:
        return parts[0]
    ids = np.concatenate([np.asarray(p.ids) for p in parts])
    lengths = np.concatenate([np.diff(p.docs) for p in parts])
    docs = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return TokenArray(ids, docs, parts[0].eot_id, parts[0].name)


def _check_window(tokens: TokenArray, seq_len: int, batch_size: int) -> None:
    if not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"seq_len must be a positive integer, got {seq_len!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if len(tokens) < seq_len + 1:
        raise ValueError(
            f"split '{tokens.name}' has {len(tokens)} tokens, fewer than seq_len + 1 = {seq_len + 1}"
        )


# --------------------------------------------------------------------------------------------
# Samplers
# --------------------------------------------------------------------------------------------


class RandomWindows:
    """Endless batches of windows at uniform random offsets; batch ``k`` is a function of ``(seed, k)``."""

    def __init__(self, tokens: TokenArray, *, seq_len: int, batch_size: int, seed: int = 0) -> None:
        _check_window(tokens, seq_len, batch_size)
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self.tokens, self.seq_len, self.batch_size = tokens, seq_len, batch_size
        self.seed = seed
        self.step = 0

    def __iter__(self) -> RandomWindows:
        return self

    def __next__(self) -> Batch:
        rng = np.random.default_rng([self.seed, self.step])
        high = len(self.tokens) - self.seq_len  # last valid start + 1
        starts = rng.integers(0, high, size=self.batch_size, dtype=np.int64)
        self.step += 1
        return _batch(self.tokens, starts, self.seq_len)

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "random", "seed": self.seed, "step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _check_state(state, "random")
        self.seed, self.step = int(state["seed"]), int(state["step"])


class SequentialWindows:
    """Stream the split in document order as ``batch_size`` contiguous lanes of ``seq_len`` windows.

    Lane ``b`` covers tokens ``[b * L, (b + 1) * L + 1)`` with ``L = (N - 1) // batch_size``; one
    epoch is ``L // seq_len`` batches (the tail of each lane that does not fill a window is
    skipped). ``epochs=None`` streams forever; otherwise iteration stops after ``epochs`` passes.
    """

    def __init__(
        self, tokens: TokenArray, *, seq_len: int, batch_size: int = 1, epochs: int | None = 1
    ) -> None:
        _check_window(tokens, seq_len, batch_size)
        if epochs is not None and (not isinstance(epochs, int) or epochs < 1):
            raise ValueError(f"epochs must be a positive integer or None, got {epochs!r}")
        self.tokens, self.seq_len, self.batch_size, self.epochs = (
            tokens,
            seq_len,
            batch_size,
            epochs,
        )
        self.lane_len = (len(tokens) - 1) // batch_size
        self.batches_per_epoch = self.lane_len // seq_len
        if self.batches_per_epoch < 1:
            raise ValueError(
                f"split '{tokens.name}' ({len(tokens)} tokens) is too short for "
                f"batch_size={batch_size} lanes of seq_len={seq_len}"
            )
        self.step = 0

    def __len__(self) -> int:
        return self.batches_per_epoch * (self.epochs or 1)

    @property
    def epoch(self) -> int:
        return self.step // self.batches_per_epoch

    def __iter__(self) -> SequentialWindows:
        return self

    def __next__(self) -> Batch:
        if self.epochs is not None and self.step >= self.batches_per_epoch * self.epochs:
            raise StopIteration
        k = self.step % self.batches_per_epoch
        starts = np.arange(self.batch_size, dtype=np.int64) * self.lane_len + k * self.seq_len
        self.step += 1
        return _batch(self.tokens, starts, self.seq_len)

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "sequential", "step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _check_state(state, "sequential")
        self.step = int(state["step"])


def _check_state(state: dict[str, Any], kind: str) -> None:
    if not isinstance(state, dict) or state.get("kind") != kind:
        got = state.get("kind") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"sampler state is for '{got}', expected '{kind}'")


def eval_windows(tokens: TokenArray, *, seq_len: int, batch_size: int) -> Iterator[Batch]:
    """Non-overlapping windows from position 0; every one of the ``N - 1`` targets appears once."""
    _check_window(tokens, seq_len, batch_size)
    n_targets = len(tokens) - 1
    full = n_targets // seq_len
    starts = np.arange(full, dtype=np.int64) * seq_len
    for i in range(0, full, batch_size):
        yield _batch(tokens, starts[i : i + batch_size], seq_len)
    rest = n_targets - full * seq_len
    if rest:
        yield _batch(tokens, np.array([full * seq_len], dtype=np.int64), rest)


# --------------------------------------------------------------------------------------------
# Preparing and caching
# --------------------------------------------------------------------------------------------


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
                f"unknown tokenizer '{tokenizer}'; allowed: 'bpe', 'byte' or a path to tokenizer.json"
            )
        tok = load_tokenizer(tokenizer)
    elif isinstance(tokenizer, Tokenizer):
        tok = tokenizer
    else:
        raise ValueError(
            f"tokenizer must be 'bpe', 'byte', a tokenizer.json path or a Tokenizer, got {tokenizer!r}"
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
