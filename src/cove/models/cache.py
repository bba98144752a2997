"""The key/value cache of decoder models: preallocated once, filled in place.

Each layer's keys and values live in one tensor of shape [2, batch, kv_heads, max_length,
head_dim] allocated before generation starts, so decoding appends without reallocating or
copying.
"""

from __future__ import annotations

from collections import Counter

import torch

_SPARE = -1  # in a row move: the copy set aside to break a cycle of rows


class KVCache:
    """Preallocated keys and values for `num_layers` layers.

    A forward pass calls `update(layer, k, v)` once per layer with the new positions' keys and
    values ([batch, kv_heads, new, head_dim]) and attends over what it returns: every position
    cached so far for that layer, the new ones included.
    """

    def __init__(self, num_layers: int, batch_size: int, num_kv_heads: int, head_dim: int,
                 max_length: int, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None) -> None:
        # A layer's keys and values share one tensor [2, batch, ...]: a beam-search reorder
        # then moves a row of both with one copy.
        shape = (2, batch_size, num_kv_heads, max_length, head_dim)
        self._kv = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.lengths = [0] * num_layers
        self.max_length = max_length

    @property
    def keys(self) -> list[torch.Tensor]:
        """Each layer's key slots, [batch, kv_heads, max_length, head_dim] (views)."""
        return [kv[0] for kv in self._kv]

    @property
    def values(self) -> list[torch.Tensor]:
        """Each layer's value slots, [batch, kv_heads, max_length, head_dim] (views)."""
        return [kv[1] for kv in self._kv]

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
        kv = self._kv[layer]
        if kv.device != k.device:
            # a layer placed on another device (device_map): its slots move there, once
            kv = self._kv[layer] = kv.to(k.device)
        kv[0, :, :, start:end] = k
        kv[1, :, :, start:end] = v
        self.lengths[layer] = end
        return kv[0, :, :, :end], kv[1, :, :, :end]

    def reorder(self, index: torch.Tensor) -> None:
        """Keep the batch rows `index` names, in that order (beam search).

        With the row count unchanged (beam search), only the rows that change are rewritten,
        in place, over the filled positions: beam search calls this every step, and copying
        every allocated position of every layer then cost as much as the step's own work.
        Another row count allocates slots for that many rows.
        """
        index = index.reshape(-1).long()
        if index.numel() != self._kv[0].shape[1]:
            self._resize(index)
            return
        rows = index.tolist()  # (beam search reads its scores on the host every step anyway)
        if rows and not 0 <= min(rows) <= max(rows) < len(rows):
            raise IndexError(f"reorder: row indices must lie in [0, {len(rows)}), got {rows}.")
        moves = _row_moves(rows)
        for kv, end in zip(self._kv, self.lengths, strict=True):
            filled = kv[:, :, :, :end]
            spare = None
            for to, frm in moves:
                if to == _SPARE:
                    spare = filled[:, frm].clone()
                else:
                    filled[:, to].copy_(spare if frm == _SPARE else filled[:, frm])

    def _resize(self, index: torch.Tensor) -> None:
        for layer, (kv, end) in enumerate(zip(self._kv, self.lengths, strict=True)):
            new = kv.new_zeros((2, index.numel(), *kv.shape[2:]))
            # layers may live on different devices (device_map)
            new[:, :, :, :end] = kv[:, :, :, :end].index_select(1, index.to(kv.device))
            self._kv[layer] = new


def _row_moves(index: list[int]) -> list[tuple[int, int]]:
    """Row copies (to, from) that make row i hold what row index[i] held, in place.

    Each row that changes is written once, after every copy that reads its old content; rows
    that only read one another in a cycle (two beams swapping) go through one spare copy:
    (_SPARE, row) sets it aside, (to, _SPARE) reads it back.
    """
    todo = {to: frm for to, frm in enumerate(index) if to != frm}
    readers = Counter(todo.values())
    ready = [to for to in todo if not readers[to]]
    moves: list[tuple[int, int]] = []
    while todo:
        if not ready:  # only cycles are left: set one row aside, its readers read the copy
            row = next(iter(todo))
            moves.append((_SPARE, row))
            for to, frm in todo.items():
                if frm == row:
                    todo[to] = _SPARE
            readers[row] = 0
            ready.append(row)
        to = ready.pop()
        frm = todo.pop(to)
        moves.append((to, frm))
        readers[frm] -= 1
        if frm in todo and not readers[frm]:
            ready.append(frm)
    return moves
