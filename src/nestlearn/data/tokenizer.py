"""Tokenizers: a byte-level BPE trained on the training split, and a 256-symbol byte tokenizer.

Both share one small interface (:class:`Tokenizer`): ``encode(text) -> list[int]``,
``encode_batch(texts)``, ``decode(ids) -> str``, ``vocab_size``, ``eot_id`` (the id of
``<|endoftext|>``, the document separator), ``name`` (for cache directories) and ``fingerprint``
(a hash of everything that determines the ids).

- :class:`BPETokenizer` wraps a Hugging Face ``tokenizers.Tokenizer``: GPT-2 style byte-level
  pre-tokenization (no prefix space, so ``decode(encode(text)) == text`` for any text), a BPE
  model trained with :meth:`BPETokenizer.train` on training documents only, and
  ``<|endoftext|>`` as its only special token (id 0). The default vocabulary is 8192
  (``DEFAULT_VOCAB_SIZE``): about 8 MB of English text supports that many merges with
  frequency >= 2, and uint16 ids keep the cache at 2 bytes per token; small models should pass
  4096 or less. Saved and loaded as ``tokenizer.json``; :meth:`BPETokenizer.to_hf` gives a
  ``transformers.PreTrainedTokenizerFast`` built from the same object (``tokenizer_object=``;
  in transformers 5 building GPT-2 tokenizers from vocab/merges *files* silently gives an empty
  tokenizer, which this path avoids).
- :class:`ByteTokenizer` needs nothing: ids 0-255 are UTF-8 bytes and 256 is ``<|endoftext|>``
  (vocabulary 257). Invalid UTF-8 decodes with replacement characters.

The text ``<|endoftext|>`` inside a document is encoded as ordinary text by both tokenizers, so
only the separators that the dataset inserts are document boundaries.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "DEFAULT_VOCAB_SIZE",
    "EOT_TOKEN",
    "BPETokenizer",
    "ByteTokenizer",
    "Tokenizer",
    "load_tokenizer",
]

EOT_TOKEN = "<|endoftext|>"
DEFAULT_VOCAB_SIZE = 8192
_MIN_BPE_VOCAB = 257  # 256 byte symbols + <|endoftext|>


@runtime_checkable
class Tokenizer(Protocol):
    """What the dataset needs from a tokenizer."""

    name: str

    @property
    def vocab_size(self) -> int: ...

    @property
    def eot_id(self) -> int: ...

    @property
    def fingerprint(self) -> str: ...

    def encode(self, text: str) -> list[int]: ...

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def save(self, path: str | os.PathLike[str]) -> Path: ...


class ByteTokenizer:
    """UTF-8 bytes as ids 0-255, ``<|endoftext|>`` as 256."""

    name = "byte"

    @property
    def vocab_size(self) -> int:
        return 257

    @property
    def eot_id(self) -> int:
        return 256

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(b"nestlearn-byte-tokenizer-v1").hexdigest()

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        data = bytes(i for i in (int(i) for i in ids) if i < 256)
        return data.decode("utf-8", errors="replace")

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write a small JSON marker (``{"type": "byte"}``) that :func:`load_tokenizer` reads."""
        path = _json_path(path)
        _atomic_write_text(path, json.dumps({"type": "byte", "eot_token": EOT_TOKEN}) + "\n")
        return path

    def __repr__(self) -> str:
        return "ByteTokenizer(vocab_size=257)"


class BPETokenizer:
    """Byte-level BPE (HF ``tokenizers``) with ``<|endoftext|>`` as id 0."""

    def __init__(self, tokenizer: Any) -> None:
        eot = tokenizer.token_to_id(EOT_TOKEN)
        if eot is None:
            raise ValueError(
                f"tokenizer has no {EOT_TOKEN} token; train it with BPETokenizer.train"
            )
        self._tok = tokenizer
        self._eot = int(eot)
        # Special-token text inside documents is encoded as plain text (see module docstring).
        self._tok.encode_special_tokens = True
        self._fingerprint = hashlib.sha256(self._tok.to_str().encode("utf-8")).hexdigest()
        self.name = f"bpe{self._tok.get_vocab_size()}"

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        *,
        vocab_size: int = DEFAULT_VOCAB_SIZE,
        min_frequency: int = 2,
        show_progress: bool = False,
    ) -> BPETokenizer:
        """Train on ``texts`` (the training documents, one string each).

        The result can be smaller than ``vocab_size`` when the text has too few pairs that
        occur ``min_frequency`` times.
        """
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, processors, trainers

        if not isinstance(vocab_size, int) or vocab_size < _MIN_BPE_VOCAB:
            raise ValueError(
                f"vocab_size must be an integer >= {_MIN_BPE_VOCAB}, got {vocab_size!r}"
            )
        tok = HFTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=[EOT_TOKEN],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=show_progress,
        )
        seen = 0

        def counted() -> Iterable[str]:
            nonlocal seen
            for t in texts:
                seen += 1
                yield t

        tok.train_from_iterator(counted(), trainer=trainer)
        if seen == 0:
            raise ValueError("cannot train a tokenizer on an empty training split")
        return cls(tok)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> BPETokenizer:
        """Load a ``tokenizer.json`` (a file, or a directory holding one)."""
        from tokenizers import Tokenizer as HFTokenizer

        path = _json_path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        return cls(HFTokenizer.from_file(str(path)))

    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size())

    @property
    def eot_id(self) -> int:
        return self._eot

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    @property
    def backend(self) -> Any:
        """The underlying ``tokenizers.Tokenizer``."""
        return self._tok

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``tokenizer.json`` (``path`` is the file or its directory); returns the file."""
        path = _json_path(path)
        _atomic_write_text(path, self._tok.to_str())
        return path

    def to_hf(self) -> Any:
        """A ``transformers.PreTrainedTokenizerFast`` with ``<|endoftext|>`` as bos/eos/pad."""
        from tokenizers import Tokenizer as HFTokenizer
        from transformers import PreTrainedTokenizerFast

        backend = HFTokenizer.from_str(self._tok.to_str())  # a copy: HF may change its settings
        return PreTrainedTokenizerFast(
            tokenizer_object=backend,
            bos_token=EOT_TOKEN,
            eos_token=EOT_TOKEN,
            pad_token=EOT_TOKEN,
            unk_token=None,
            model_max_length=int(1e30),
        )

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size}, eot_id={self.eot_id})"


def load_tokenizer(path: str | os.PathLike[str]) -> BPETokenizer | ByteTokenizer:
    """Load what :meth:`BPETokenizer.save` or :meth:`ByteTokenizer.save` wrote."""
    path = _json_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file not found: {path}")
    try:
        head = json.loads(path.read_text("utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not a tokenizer.json ({e.msg})") from None
    if isinstance(head, dict) and head.get("type") == "byte":
        return ByteTokenizer()
    return BPETokenizer.load(path)


def _json_path(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    return p / "tokenizer.json" if p.is_dir() or p.suffix != ".json" else p


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
