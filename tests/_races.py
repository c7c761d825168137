"""A race check for Triton kernels run by the interpreter.

On a GPU the programs of one launch run at once, in no order. The interpreter runs them one after
another, in order. So a kernel whose programs depend on each other's memory passes every interpreter
test and can then race on a GPU, where nothing names it: compute-sanitizer's racecheck looks at shared
memory, not at global memory between blocks.

``races()`` records, for each launch, the bytes that each program reads and writes. Every load and store
of the interpreter goes through ``create_masked_load`` / ``create_masked_store``: pointer, block-pointer and
descriptor (TMA) accesses alike. Atomics are not recorded; the kernels have none. It reports:

- a byte that two programs write with different values (``write-write``; bytes, not elements: a byte that
  every writer gives the same value ends the same whichever store lands last);
- a byte that one program reads and another writes (``read-write``);
- a byte that a program reads after it wrote it (``read-after-own-write``). The program's threads are not
  ordered without a barrier. A read-modify-write (a load, then a store of what it computed) is ordered by
  its data and is not reported.

Bytes that two programs write with the same value are not a race: whichever store lands last, the bytes
are the same. They are counted as ``same_writes``. The one-tile launches' slabs clamp their spare
programs onto the last tile, which then has two writers of the same bytes (``triton_utils.walk_grid``).
"""

from __future__ import annotations

import contextlib
import dataclasses
from unittest import mock

import numpy as np

HAZARDS = ("write-write", "read-write", "read-after-own-write")


@dataclasses.dataclass
class Launch:
    """One kernel launch: its module and name (``contrastive_triton._forward_kernel``), the number of
    programs, its block sizes (the BLOCK* constants it was given), the bytes read and written (each
    byte once), the count of each hazard's bytes (``HAZARDS``), and of bytes that several programs
    wrote alike."""

    kernel: str
    programs: int
    blocks: dict
    read: int
    written: int
    hazards: dict
    same_writes: int

    @property
    def clean(self) -> bool:
        return not any(self.hazards.values())


def _bytes(addresses: np.ndarray, size: int) -> np.ndarray:
    """Every byte address of the elements of ``size`` bytes at ``addresses``."""
    return (addresses.reshape(-1, 1).astype(np.uint64) + np.arange(size, dtype=np.uint64)).reshape(-1)


def _program(builder) -> int:
    x, y, z = builder.grid_idx
    return (x * builder.grid_dim[1] + y) * builder.grid_dim[2] + z


@contextlib.contextmanager
def races():
    """Yields the list of ``Launch`` records of the interpreter's launches inside the block."""
    from triton.runtime import interpreter as ti

    builder = ti.InterpreterBuilder
    real_load, real_store = builder.create_masked_load, builder.create_masked_store
    real_call = ti.GridExecutor.__call__
    state = {"log": None}
    launches: list[Launch] = []

    def load(self, ptrs, mask, other, cache_policy, is_volatile):
        out = real_load(self, ptrs, mask, other, cache_policy, is_volatile)
        log = state["log"]
        if log is not None:
            on = np.broadcast_to(mask.data, ptrs.data.shape)
            size = np.dtype(ti._get_np_dtype(ptrs.get_element_ty())).itemsize
            log["step"] += 1
            log["reads"].append((_bytes(ptrs.data[on], size), _program(self), log["step"]))
        return out

    def store(self, ptrs, value, mask, cache_policy):
        log = state["log"]
        if log is not None:
            on = np.broadcast_to(mask.data, ptrs.data.shape)
            values = np.ascontiguousarray(np.broadcast_to(value.data, ptrs.data.shape)[on])
            log["step"] += 1
            where = _bytes(ptrs.data[on], values.dtype.itemsize)
            log["writes"].append((where, values.view(np.uint8).reshape(-1), _program(self), log["step"]))
        return real_store(self, ptrs, value, mask, cache_policy)

    def call(self, *args, **kwargs):
        outer, state["log"] = state["log"], {"reads": [], "writes": [], "step": 0}
        try:
            return real_call(self, *args, **kwargs)
        finally:
            log, state["log"] = state["log"], outer
            log["grid"] = int(np.prod(ti.interpreter_builder.grid_dim))
            log["blocks"] = {k: v for k, v in kwargs.items() if k.startswith("BLOCK")}
            launches.append(_check(f"{self.fn.__module__.rsplit('.', 1)[-1]}.{self.fn.__name__}", log))

    with (
        mock.patch.object(builder, "create_masked_load", load),
        mock.patch.object(builder, "create_masked_store", store),
        mock.patch.object(ti.GridExecutor, "__call__", call),
    ):
        yield launches


def _column(entries: list, k: int) -> np.ndarray:
    """Field ``k`` of the log's entries, one value per byte (scalars repeated)."""
    parts = [e[k] if isinstance(e[k], np.ndarray) else np.full(e[0].size, e[k], np.int64) for e in entries]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def _check(kernel: str, log: dict) -> Launch:
    hazards = dict.fromkeys(HAZARDS, 0)
    where, values = _column(log["writes"], 0).astype(np.uint64), _column(log["writes"], 1)
    writer, w_step = _column(log["writes"], 2), _column(log["writes"], 3)
    r_where = _column(log["reads"], 0).astype(np.uint64)
    reader, r_step = _column(log["reads"], 1), _column(log["reads"], 2)
    read = np.unique(r_where).size
    if not where.size:
        return Launch(kernel, log["grid"], log["blocks"], read, 0, hazards, 0)
    order = np.lexsort((w_step, writer, where))
    where, values, writer, w_step = where[order], values[order], writer[order], w_step[order]
    written, start = np.unique(where, return_index=True)
    lo_writer, hi_writer = np.minimum.reduceat(writer, start), np.maximum.reduceat(writer, start)
    lo_value, hi_value = np.minimum.reduceat(values, start), np.maximum.reduceat(values, start)
    first_write = np.minimum.reduceat(w_step, start)
    shared = lo_writer != hi_writer
    hazards["write-write"] = int((shared & (lo_value != hi_value)).sum())
    same_writes = int((shared & (lo_value == hi_value)).sum())
    if r_where.size:
        at = np.minimum(np.searchsorted(written, r_where), written.size - 1)
        hit = written[at] == r_where
        own = (lo_writer[at] == reader) & (hi_writer[at] == reader)
        hazards["read-write"] = int(np.unique(r_where[hit & ~own]).size)
        hazards["read-after-own-write"] = int(np.unique(r_where[hit & own & (r_step > first_write[at])]).size)
    return Launch(kernel, log["grid"], log["blocks"], read, written.size, hazards, same_writes)


def hazards_of(launches: list[Launch]) -> list[str]:
    """A line for each launch with a hazard."""
    return [
        f"{x.kernel} ({x.programs} programs): "
        + ", ".join(f"{n} {k} bytes" for k, n in x.hazards.items() if n)
        for x in launches
        if not x.clean
    ]


def assert_no_race(launches: list[Launch], what: str) -> None:
    """Kernels were launched, at least one with two programs (else nothing could race), none with a
    hazard."""
    assert launches, f"{what}: no kernel was launched"
    assert any(x.programs > 1 for x in launches), f"{what}: no launch had two programs"
    bad = hazards_of(launches)
    assert not bad, f"{what}: " + "; ".join(bad)
