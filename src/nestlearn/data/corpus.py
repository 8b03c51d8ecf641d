"""Documents, and the train/validation/test split by document.

A corpus is a list of :class:`Document` (source, doc_id, text); ``sources/`` reads them from
installed packages or the user's files, and ``sources.load_corpus`` concatenates sources.

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

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "DEFAULT_FRACTIONS",
    "SPLITS",
    "Document",
    "corpus_digest",
    "split_documents",
    "split_of",
]

SPLITS = ("train", "validation", "test")
DEFAULT_FRACTIONS = (0.9, 0.05, 0.05)


@dataclass(frozen=True)
class Document:
    """One document: ``source`` names its corpus, ``doc_id`` is unique within the source."""

    source: str
    doc_id: str
    text: str


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
    """Split documents into ``{"train", "validation", "test"}`` (rule: the module docstring)."""
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
