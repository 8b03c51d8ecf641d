"""``austen``: Jane Austen's six novels from the Debian package r-cran-janeaustenr, by chapter.

The package is extracted with ``dpkg -x`` (not installed: it pulls in R); its text is an R
lazy-load database of XDR-serialised character vectors, decoded here without R.
"""

from __future__ import annotations

import itertools
import os
import re
import struct
import zlib
from pathlib import Path

from ..corpus import Document
from .base import SourceInfo, not_installed, tidy

__all__ = ["SOURCE", "load_austen"]

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


def load_austen() -> list[Document]:
    env = os.environ.get("NESTLEARN_AUSTEN_DIR", "")
    candidates = [Path(env) / _AUSTEN_RDB, Path(env)] if env else []
    candidates.append(Path("/") / _AUSTEN_RDB)
    rdb = next((c for c in candidates if c.is_file()), None)
    if rdb is None:
        raise not_installed(
            "austen",
            "r-cran-janeaustenr extracted with dpkg -x into NESTLEARN_AUSTEN_DIR",
            SOURCE.install,
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
            chapter = tidy(text[a:b])
            if chapter:
                docs.append(Document("austen", f"{slug}/{ch:03d}", f"{title}\n\n{chapter}"))
    if not docs:
        raise ValueError(f"corpus source 'austen': no novels found in {rdb}")
    return docs


SOURCE = SourceInfo(
    "austen",
    "Jane Austen, 6 novels split into chapters (about 4 MB)",
    "apt-get download r-cran-janeaustenr && dpkg -x r-cran-janeaustenr_*.deb DIR "
    "&& export NESTLEARN_AUSTEN_DIR=DIR",
    "janeaustenr: MIT; the novels are in the public domain",
    load_austen,
)
