"""A tokenized split: :class:`TokenArray`, the token ids and the offsets of the documents in them.

Layout of a split: document 0's tokens, ``<|endoftext|>``, document 1's tokens,
``<|endoftext|>``, ... Every document ends with EOT, so ``ids[i] == eot_id`` marks the end of a
document and ``docs[j]`` is where document j starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["TokenArray"]


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
