"""The key/value cache of decoder models: preallocated once, filled in place.

All layers' keys and values live in one tensor of shape [layers, 2, batch, kv_heads,
max_length, head_dim] allocated before generation starts, so decoding appends without
reallocating or copying.
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
        # Every layer's keys and values in one block [layers, 2, batch, ...] (each layer's
        # [2, batch, ...] a view of it): a beam-search reorder then moves the rows of all
        # layers with one gather and one scatter, not a copy per layer and row.
        shape = (num_layers, 2, batch_size, num_kv_heads, max_length, head_dim)
        self._block: torch.Tensor | None = torch.zeros(shape, dtype=dtype, device=device)
        self._kv = list(self._block.unbind(0))
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
            # a layer placed on another device (device_map): its slots move there, once, and
            # the layers no longer share one block
            kv = self._kv[layer] = kv.to(k.device)
            self._block = None
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
        changed = [i for i, row in enumerate(rows) if row != i]
        if not changed:
            return
        to, frm = torch.tensor(changed), torch.tensor([rows[i] for i in changed])
        if self._block is not None and len(set(self.lengths)) == 1:
            parts = [(self._block, self.lengths[0])]
        else:  # layers on several devices, or filled to different lengths
            parts = [(kv[None], end) for kv, end in zip(self._kv, self.lengths, strict=True)]
        for kv, end in parts:
            filled = kv[:, :, :, :, :end]
            # the changed rows' sources are gathered (a copy) before any is overwritten
            filled.index_copy_(2, to.to(kv.device),
                               filled.index_select(2, frm.to(kv.device)))

    def _resize(self, index: torch.Tensor) -> None:
        # layers may live on different devices (device_map)
        moved = [kv[:, :, :, :end].index_select(1, index.to(kv.device))
                 for kv, end in zip(self._kv, self.lengths, strict=True)]
        if self._block is not None:
            self._block = self._block.new_zeros(
                (len(moved), 2, index.numel(), *self._block.shape[3:]))
            self._kv = list(self._block.unbind(0))
        else:
            self._kv = [kv.new_zeros((2, index.numel(), *kv.shape[2:])) for kv in self._kv]
        for kv, rows in zip(self._kv, moved, strict=True):
            kv[:, :, :, :rows.shape[3]] = rows


class SlotKVCache:
    """A fixed pool of `num_slots` rows, each holding one sequence of up to `slot_length`
    positions: the KV cache of a continuous-batching engine.

    A row's position p sits at index p of that row, so each sequence grows in place at its own
    length, whatever the others hold. Before a forward pass the engine `bind`s the slots the
    pass runs over (its batch rows, in order) and each one's filled length; `update` then writes
    each row's new keys and values at that row's own positions and returns, for the bound rows,
    indices [0, max length + new): the shorter rows' tail past their own length is stale and
    the engine masks it out with the attention mask (`attention_mask`).

    To a model it reads as a `KVCache` whose `length` is the longest bound row's: the model
    then attends over `length + new` keys, the position ids say where each row really is.

    All layers' slots are one block, `storage` [layers, 2, num_slots, kv_heads, slot_length,
    head_dim] (each layer's [2, num_slots, ...] a view of it), which the kernels' decoding
    steps (cove.models.decoding.KernelSteps) index by slot and length directly, no binding.
    """

    def __init__(self, num_layers: int, num_slots: int, num_kv_heads: int, head_dim: int,
                 slot_length: int, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None) -> None:
        shape = (num_layers, 2, num_slots, num_kv_heads, slot_length, head_dim)
        self._block: torch.Tensor | None = torch.zeros(shape, dtype=dtype, device=device)
        self._kv = list(self._block.unbind(0))
        self.num_slots = num_slots
        self.max_length = slot_length
        self._slots: list[int] = []
        self._starts: list[int] = []
        self._index: torch.Tensor | None = None  # the bound slots, unless a contiguous range

    @property
    def nbytes(self) -> int:
        """The memory the pool holds."""
        return sum(kv.numel() * kv.element_size() for kv in self._kv)

    @property
    def storage(self) -> torch.Tensor | None:
        """The one block of every layer's slots; None once a layer's slots moved to another
        device (a model placed across devices), when the layers no longer share one."""
        return self._block

    def bind(self, slots: list[int], lengths: list[int]) -> None:
        """Run the next forward pass over `slots` (its batch rows, in order), each already
        holding `lengths[i]` positions: the new ones go right after them."""
        if len(slots) != len(lengths) or not slots:
            raise ValueError("bind: one length per slot, and at least one slot.")
        if not all(0 <= s < self.num_slots for s in slots):
            raise IndexError(f"bind: slots lie in [0, {self.num_slots}), got {slots}.")
        self._slots, self._starts = list(slots), list(lengths)
        contiguous = slots == list(range(slots[0], slots[0] + len(slots)))
        self._index = None if contiguous else torch.tensor(slots, device=self._kv[0].device)

    @property
    def length(self) -> int:
        """The longest bound row's filled positions (what a model counts as cached)."""
        return max(self._starts) if self._starts else 0

    def get_seq_length(self, layer: int = 0) -> int:  # transformers' name
        return self.length

    def attention_mask(self, new: int, device: torch.device | str | None = None
                       ) -> torch.Tensor:
        """The [bound rows, length + new] 1/0 mask of the positions each row really holds once
        `new` positions are written after its own: its own filled ones and the new ones."""
        starts = torch.tensor(self._starts, device=device)
        return (torch.arange(self.length + new, device=device)[None]
                < (starts + new)[:, None]).long()

    def position_ids(self, new: int, device: torch.device | str | None = None) -> torch.Tensor:
        """[bound rows, new]: each row's new positions, after its own filled ones."""
        starts = torch.tensor(self._starts, device=device)
        return starts[:, None] + torch.arange(new, device=device)[None]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        if k.shape[0] != len(self._slots):
            raise ValueError(f"{k.shape[0]} rows for {len(self._slots)} bound slots; call "
                             "bind(slots, lengths) before the forward pass.")
        new = k.shape[2]
        end = self.length + new
        if max(self._starts) + new > self.max_length:
            raise ValueError(f"A slot holds {self.max_length} positions; "
                             f"{max(self._starts) + new} were asked for.")
        kv = self._kv[layer]
        if kv.device != k.device:
            kv = self._kv[layer] = kv.to(k.device)
            self._block = None
        # one indexed write per tensor: row i's new positions start at its own length
        slots = torch.tensor(self._slots, device=kv.device)[:, None]
        pos = (torch.tensor(self._starts, device=kv.device)[:, None]
               + torch.arange(new, device=kv.device)[None])
        kv[0][slots, :, pos] = k.transpose(1, 2).to(kv.dtype)
        kv[1][slots, :, pos] = v.transpose(1, 2).to(kv.dtype)
        if self._index is None:
            first = self._slots[0]
            rows = kv[:, first:first + len(self._slots), :, :end]
        else:
            rows = kv[:, :, :, :end].index_select(1, self._index.to(kv.device))
        return rows[0], rows[1]
