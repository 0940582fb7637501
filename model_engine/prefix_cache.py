"""Key/value states of fixed prompt prefixes, computed once and reused by every batch.

An optimizer that sends the same question (chat header + question) with many prompt
candidates pays the prefix's forward pass once per run instead of once per candidate,
rollout and scoring pass. Batches are assembled by left-padding each row's stored
prefix states; the suffix (the part after the prefix) follows, with its own padding,
and explicit position ids keep every token where it would be without the cache.

Only models whose cache layers are all full attention qualify (``supports``); others
(sliding-window layers, as in Gemma 3) run without the prefix cache.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from model_engine.kv_cache import full_attention_only as supports


class PrefixCache:
    def __init__(self, engine, prefixes: list[list[int]],
                 layers: list[list[tuple[torch.Tensor, torch.Tensor]]] | None = None):
        """``layers``: the prefixes' states where they were computed already (a row's own decode), per prefix
        and layer; then no forward pass runs here and ``last_logits`` is None."""
        if not supports(engine.model):
            raise ValueError(f"{engine.spec.name} has cache layers other than full attention; no prefix cache")
        self.engine, self.prefixes = engine, [list(p) for p in prefixes]
        self.layers: list[list[tuple[torch.Tensor, torch.Tensor]]] = []  # per prefix, per layer: (keys, values)
        if layers is not None:
            self.layers, self.last_logits = layers, None
            return
        last = []
        with torch.inference_mode():
            for start in range(0, len(prefixes), engine.batch_size):
                batch = self.prefixes[start:start + engine.batch_size]
                ids, attention, positions, pads = engine.left_pad(batch)
                cache = DynamicCache(config=engine.model.config)
                out = engine.model(input_ids=ids, attention_mask=attention, position_ids=positions,
                                   past_key_values=cache, use_cache=True, logits_to_keep=1)
                last.append(out.logits[:, -1, :].float())
                for row, pad in enumerate(pads):
                    self.layers.append([(layer.keys[row, :, pad:].clone(), layer.values[row, :, pad:].clone())
                                        for layer in cache.layers])
        #: logits at each prefix's last position: the prediction of the first suffix token
        self.last_logits = torch.cat(last)

    def __len__(self) -> int:
        return len(self.prefixes)

    def assemble(self, indices: list[int]) -> tuple[DynamicCache, torch.Tensor, torch.Tensor]:
        """A batch cache of the given prefixes (left-padded), its attention mask and their lengths."""
        lengths = torch.tensor([len(self.prefixes[i]) for i in indices], device=self.engine.device)
        width = int(lengths.max())
        layers = []
        for layer in range(len(self.layers[indices[0]])):
            keys, values = [], []
            for i in indices:
                k, v = self.layers[i][layer]
                pad = width - k.shape[1]
                keys.append(torch.nn.functional.pad(k, (0, 0, pad, 0)))
                values.append(torch.nn.functional.pad(v, (0, 0, pad, 0)))
            layers.append((torch.stack(keys), torch.stack(values)))
        mask = (torch.arange(width, device=self.engine.device)[None, :] >= (width - lengths)[:, None]).long()
        return DynamicCache(ddp_cache_data=layers), mask, lengths
