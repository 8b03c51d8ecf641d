"""Associative-memory update rules as pure tensor functions (NL sections 1-2, 4-5; Titans 3).

Two implementations of one rule family with one signature and one result:

- :func:`memory_reference`: a plain token-by-token loop, the executable specification;
- :func:`memory_chunked`: the chunk-parallel fast path (use this one).

Memories: ``"linear"`` (a matrix) and the 2-layer MLP of Eq. 89 (``"residual_mlp"``, or
``"mlp"`` without the skip). Objectives: ``"dot"`` (Hebbian; with a linear memory this is linear
attention, Eq. 14-18) and ``"l2"`` (the delta rule). Update rules: ``"gd"`` and ``"dgd"`` (Delta
Gradient Descent, Eq. 57/88), with optional per-token retention ``alpha`` and momentum ``beta``
(Titans Eq. 13-14). Each row of a batch may sit at its own place of its chunk
(``MemoryState.offset`` a tensor; :func:`anchored_offsets` anchors a left-padded batch and
:func:`written_rows` keeps its padding from cutting the graph under ``write_grad="detach"``).
Several memories written with the same keys and rates (the self-modifying Titans layer's) advance
together in a stacked layout: :func:`stack_memories`, :func:`plan_segments`,
:func:`stacked_project`, :func:`stacked_write`, :func:`unstack_memories` (``stacked.py``).
The derivation of the fast path is in ``memory/README.md``.
"""

from nestlearn.memory.chunked import memory_chunked, memory_read
from nestlearn.memory.reference import memory_reference
from nestlearn.memory.stacked import (
    SegmentPlan,
    StackedMemories,
    plan_segments,
    read_chunk_start,
    stack_memories,
    stacked_project,
    stacked_write,
    unstack_memories,
)
from nestlearn.memory.state import MemoryState, anchored_offsets, written_rows

__all__ = [
    "MemoryState", "SegmentPlan", "StackedMemories", "anchored_offsets", "memory_chunked",
    "memory_read", "memory_reference", "plan_segments", "read_chunk_start", "stack_memories",
    "stacked_project", "stacked_write", "unstack_memories", "written_rows",
]
