"""The key/value cache of decoder models: preallocated once, filled in place.

Keys and values of every layer live in tensors of shape [batch, kv_heads, max_length, head_dim]
allocated before generation starts, so decoding appends without reallocating or copying.
"""

from __future__ import annotations

import torch


class KVCache:
    """Preallocated keys and values for `num_layers` layers.

    A forward pass calls `update(layer, k, v)` once per layer with the new positions' keys and
    values ([batch, kv_heads, new, head_dim]) and attends over what it returns: every position
    cached so far for that layer, the new ones included.
    """

    def __init__(self, num_layers: int, batch_size: int, num_kv_heads: int, head_dim: int,
                 max_length: int, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None) -> None:
        shape = (batch_size, num_kv_heads, max_length, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.lengths = [0] * num_layers
        self.max_length = max_length

    @property
    def length(self) -> int:
        """Positions cached so far (as seen by the first layer)."""
        return self.lengths[0]

    def get_seq_length(self, layer: int = 0) -> int:  # transformers' name
        return self.lengths[layer]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        start = self.lengths[layer]
        end = start + k.shape[2]
        if end > self.max_length:
            raise ValueError(f"The KV cache holds {self.max_length} positions; "
                             f"{end} were asked for. Allocate a larger cache.")
        if self.keys[layer].device != k.device:
            # a layer placed on another device (device_map): its slots move there, once
            self.keys[layer] = self.keys[layer].to(k.device)
            self.values[layer] = self.values[layer].to(k.device)
        self.keys[layer][:, :, start:end] = k
        self.values[layer][:, :, start:end] = v
        self.lengths[layer] = end
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def reorder(self, index: torch.Tensor) -> None:
        """Keep the batch rows `index` names, in that order (beam search)."""
        for i in range(len(self.keys)):
            rows = index.to(self.keys[i].device)  # layers may live on different devices
            self.keys[i] = self.keys[i].index_select(0, rows)
            self.values[i] = self.values[i].index_select(0, rows)
