"""A bounded LRU of text-query embeddings, keyed by the model that made them.

Search traffic repeats itself ("seven", "show me sevens"), and a text's
embedding is a pure function of the model's weights. Keying by the model
fingerprint means a new model never gets an old model's vectors: the entries
of the old one simply age out.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np


class QueryCache:
    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, fingerprint: str, text: str) -> np.ndarray | None:
        key = (fingerprint, text)
        vector = self._entries.get(key)
        if vector is not None:
            self._entries.move_to_end(key)
        return vector

    def put(self, fingerprint: str, text: str, vector: np.ndarray) -> None:
        if self.max_entries <= 0:
            return
        frozen = vector.copy()
        frozen.flags.writeable = False  # shared by every later hit: nobody may change it in place
        self._entries[(fingerprint, text)] = frozen
        self._entries.move_to_end((fingerprint, text))
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
