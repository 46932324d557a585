"""The reference embeddings a scorer keeps between calls (issue 27, cheaper scoring).

A case's reference answers are the same for every seed and for its base answers, so BERTScore
and USE embed them once, in batches of their own (a text's embedding moves by ~1e-7 with the
texts padded beside it, so batching references only with each other makes a kept set give the
bits a fresh one would), and keep the last few sets of the process here.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class ReferenceCache(Generic[V]):
    """The values of the last ``size`` keys, least recently used dropped first."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._sets: OrderedDict[Hashable, V] = OrderedDict()

    def get(self, key: Hashable, build: Callable[[], V]) -> V:
        """The value kept for ``key``, else ``build()``, kept."""
        if key in self._sets:
            self._sets.move_to_end(key)
            return self._sets[key]
        value = build()
        self._sets[key] = value
        while len(self._sets) > self.size:
            self._sets.popitem(last=False)
        return value

    def clear(self) -> None:
        self._sets.clear()

    def __len__(self) -> int:
        return len(self._sets)
