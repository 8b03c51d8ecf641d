"""nestlearn.data: corpora, the split by document, tokenizers and token-window samplers.

Typical use::

    from nestlearn.data import prepare_data, RandomWindows, eval_windows

    data = prepare_data(["shakespeare", "wikipedia"], vocab_size=4096)  # cached under ./data_cache
    train = RandomWindows(data.train, seq_len=256, batch_size=8, seed=0)
    x, y, pos = next(train)                    # [8, 256] int64 each, pos [8]
    for x, y, _ in eval_windows(data.validation, seq_len=256, batch_size=8): ...

See ``README.md`` next to this file for sources, licences, the split rule and the cache layout.
"""

from .cache import (
    PreparedData,
    default_cache_dir,
    load_prepared,
    prepare_data,
    prepare_documents,
)
from .corpus import (
    DEFAULT_FRACTIONS,
    SPLITS,
    Document,
    corpus_digest,
    split_documents,
    split_of,
)
from .samplers import Batch, RandomWindows, SequentialWindows, eval_windows
from .sources import (
    DEFAULT_SOURCES,
    SOURCES,
    SourceInfo,
    load_corpus,
    load_source,
    load_text_files,
)
from .tokenizer import (
    DEFAULT_VOCAB_SIZE,
    EOT_TOKEN,
    BPETokenizer,
    ByteTokenizer,
    Tokenizer,
    load_tokenizer,
)
from .tokens import TokenArray

__all__ = [
    "DEFAULT_FRACTIONS",
    "DEFAULT_SOURCES",
    "DEFAULT_VOCAB_SIZE",
    "EOT_TOKEN",
    "SOURCES",
    "SPLITS",
    "BPETokenizer",
    "Batch",
    "ByteTokenizer",
    "Document",
    "PreparedData",
    "RandomWindows",
    "SequentialWindows",
    "SourceInfo",
    "TokenArray",
    "Tokenizer",
    "corpus_digest",
    "default_cache_dir",
    "eval_windows",
    "load_corpus",
    "load_prepared",
    "load_source",
    "load_text_files",
    "load_tokenizer",
    "prepare_data",
    "prepare_documents",
    "split_documents",
    "split_of",
]
