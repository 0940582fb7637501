"""A key/value cache written into buffers sized once per decode, instead of grown by concatenation.

transformers' ``DynamicLayer`` concatenates every step's keys and values onto the cache,
copying the whole cache each step (the largest non-matmul cost of a batched decode in a
profile, ``python -m benchmarks.engine``). ``PreallocatedLayer`` writes each step into a
buffer that holds the decode's longest possible sequence and hands attention views of the
filled part; dropping finished rows compacts the kept rows in place.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class PreallocatedLayer(DynamicLayer):
    def __init__(self, capacity: int):
        super().__init__()
        self.capacity, self.length, self.rows = capacity, 0, 0
        self._keys = self._values = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        batch, heads, _, dim = key_states.shape
        self.rows = batch
        self._keys = key_states.new_empty((batch, heads, self.capacity, dim))
        self._values = value_states.new_empty((batch, value_states.shape[1], self.capacity, value_states.shape[-1]))

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self._keys.shape[2]:  # longer than planned: grow once, by at least double
            extra = max(end, 2 * self._keys.shape[2]) - self._keys.shape[2]
            self._keys = torch.cat([self._keys, self._keys.new_empty((*self._keys.shape[:2], extra, self._keys.shape[3]))], 2)
            self._values = torch.cat([self._values, self._values.new_empty(
                (*self._values.shape[:2], extra, self._values.shape[3]))], 2)
        self._keys[: self.rows, :, self.length:end] = key_states
        self._values[: self.rows, :, self.length:end] = value_states
        self.length = end
        self._views()
        return self.keys, self.values

    def _views(self) -> None:
        self.keys = self._keys[: self.rows, :, : self.length]
        self.values = self._values[: self.rows, :, : self.length]

    def get_seq_length(self) -> int:
        return self.length

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized:
            kept = len(indices)
            self._keys[:kept, :, : self.length] = self._keys[indices, :, : self.length]
            self._values[:kept, :, : self.length] = self._values[indices, :, : self.length]
            self.rows = kept
            self._views()

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative number of tokens to remove")
        if self.is_initialized:
            self.length = max(0, self.length + tokens_to_remove)
            self._views()


def full_attention_only(model) -> bool:
    """Whether every cache layer of the model is plain full attention (no sliding window, no linear attention)."""
    layers = DynamicCache(config=model.config).layers
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


def preallocated_cache(model, capacity: int) -> DynamicCache:
    """A cache for ``model`` whose layers hold ``capacity`` positions (a dynamic one where layers are not full attention)."""
    if not full_attention_only(model):
        return DynamicCache()
    cache = DynamicCache(config=model.config)
    cache.layers = [PreallocatedLayer(capacity) for _ in cache.layers]
    return cache
