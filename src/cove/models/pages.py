"""Weights on 2 MiB pages for decoding.

A decoding step streams every weight once, and at batch 1 its speed is the memory's: on 4 KiB
pages the hardware prefetcher stops at each page's end and every page costs a TLB walk, so a
stream of small pages runs well under the bandwidth a long one reaches (SmolLM2-135M's
bfloat16 layers on this 2-core machine: 31 GB/s on 4 KiB pages, 35 on 2 MiB ones; its
bfloat16 generate 77 -> 91 tokens/s with only the larger tensors moved). Linux backs an
anonymous mapping with transparent huge pages where it is asked to (madvise(MADV_HUGEPAGE),
the default "madvise" setting of /sys/kernel/mm/transparent_hugepage/enabled), so
`place_on_huge_pages` gives a model's CPU parameters and buffers such pages: stretches of
memory of 8 MiB and more where they lie (madvise(MADV_COLLAPSE), Linux 6.1+), the others (and
those the kernel would not collapse: a file's mmap'd pages) copied into one such mapping,
2 MiB aligned, stretch by stretch (tensors overlapping in one storage, tied weights included,
keep sharing it; each stretch becomes its own storage, so safetensors sees no shared
tensors), each old one freed as it goes and the heap trimmed, so the peak stays near the weights' size (the GGUF-kept SmolLM2's
memory bound holds). Elsewhere (not Linux, THP "never", madvise refused) it does nothing.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import platform
from itertools import chain
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from cove.models.quantization import _libc
from cove.models.weight_only import release_freed_memory

log = logging.getLogger("cove.models")

_HUGE = 2 << 20
_MADV_HUGEPAGE = 14
_MADV_COLLAPSE = 25  # Linux 6.1+: back a range with huge pages now, in place
# Storages this large are collapsed where they lie (no copy: a copy would hold both for a
# moment); smaller ones are copied together into one mapping, the freed heap handed back
# every _TRIM bytes, so the peak stays near the weights' own size.
_IN_PLACE = 4 * _HUGE
_TRIM = 8 << 20
_ALIGN = 64  # each storage's start: a cache line
_THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def _thp_mode() -> str | None:
    """THP's setting ("always", "madvise" or "never"), None where there is none."""
    if platform.system() != "Linux":
        return None
    try:
        text = _THP.read_text()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else None


def _collapse(address: int, nbytes: int) -> bool:
    """Huge pages for the 2 MiB-aligned inside of [address, address + nbytes), in place."""
    lo, hi = -(-address // _HUGE) * _HUGE, (address + nbytes) // _HUGE * _HUGE
    return hi > lo and all(
        _libc().madvise(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), advice) == 0
        for advice in (_MADV_HUGEPAGE, _MADV_COLLAPSE))


class _Cluster(NamedTuple):
    """Tensors over one stretch of a storage, bytes lo..hi (overlapping ones together)."""
    storage: torch.UntypedStorage
    lo: int
    hi: int
    tensors: list[torch.Tensor]


def _clusters(tensors: list[torch.Tensor]) -> list[_Cluster]:
    """The stretches of memory `tensors` cover, by storage: a small tensor viewing a large
    storage (a norm's weight in a checkpoint's mmap) takes its own bytes, not the storage."""
    by_storage: dict[int, list[tuple[int, int, torch.Tensor]]] = {}
    for t in tensors:
        size = t.element_size()
        start = t.storage_offset() * size
        extent = 1 + sum((n - 1) * st for n, st in zip(t.shape, t.stride(), strict=True))
        by_storage.setdefault(t.untyped_storage().data_ptr(), []).append(
            (start, start + extent * size, t))
    out: list[_Cluster] = []
    for spans in by_storage.values():
        spans.sort(key=lambda s: s[0])
        storage = spans[0][2].untyped_storage()
        for start, end, t in spans:
            if out and out[-1].storage.data_ptr() == storage.data_ptr() and start < out[-1].hi:
                last = out.pop()
                out.append(last._replace(hi=max(last.hi, end), tensors=[*last.tensors, t]))
            else:  # from a cache line's start, so every tensor's offset stays a whole element
                out.append(_Cluster(storage, start // _ALIGN * _ALIGN, end, [t]))
    return out


def place_on_huge_pages(module: nn.Module) -> int:
    """Move `module`'s CPU parameters and buffers onto transparent huge pages (see the top);
    the tensors stay the same objects (layers and kernels holding them see the new memory).
    Returns the bytes placed (0: nothing to do, or huge pages unavailable)."""
    if _thp_mode() not in ("always", "madvise"):
        return 0
    tensors = [t for t in chain(module.parameters(), module.buffers())
               if t.device.type == "cpu" and t.numel() and not getattr(t, "_cove_huge_pages",
                                                                       False)]
    placed, copies = 0, []
    for c in _clusters(tensors):
        # large stretches in place; the rest (and those the kernel would not collapse: a
        # file's pages, a kernel before 6.1) copied together
        if c.hi - c.lo >= _IN_PLACE and _collapse(c.storage.data_ptr() + c.lo, c.hi - c.lo):
            placed += c.hi - c.lo
            for t in c.tensors:
                t._cove_huge_pages = True
        else:
            copies.append(c)
    del tensors
    if not copies:
        return placed
    offsets, total = [], 0
    for c in copies:
        offsets.append(total)
        total += -(-(c.hi - c.lo) // _ALIGN) * _ALIGN
    length = -(-total // _HUGE) * _HUGE
    arena = mmap.mmap(-1, length + _HUGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    address = ctypes.addressof(ctypes.c_char.from_buffer(arena))
    start = -address % _HUGE
    if _libc().madvise(ctypes.c_void_p(address + start), ctypes.c_size_t(length),
                    _MADV_HUGEPAGE) != 0:
        log.info("cove kernels: madvise(MADV_HUGEPAGE) refused (errno %d): weights stay on "
                 "small pages", ctypes.get_errno())
        return placed
    view = memoryview(arena)
    since_trim = 0
    with torch.no_grad():
        for i, offset in enumerate(offsets):
            c, copies[i] = copies[i], None  # the old memory goes with its last tensor
            at, n = start + offset, c.hi - c.lo
            new = torch.frombuffer(view[at:at + n], dtype=torch.uint8)
            new.copy_(torch.empty(0, dtype=torch.uint8).set_(c.storage, c.lo, (n,), (1,)))
            for t in c.tensors:
                t.data = torch.empty(0, dtype=t.dtype).set_(
                    new.untyped_storage(), t.storage_offset() - c.lo // t.element_size(),
                    t.size(), t.stride())
                t._cove_huge_pages = True
            since_trim += n
            del c
            if since_trim >= _TRIM:
                release_freed_memory()
                since_trim = 0
    release_freed_memory()
    return placed + total
