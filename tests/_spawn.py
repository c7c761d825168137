"""Process plumbing of the distributed tests: run check functions of a test module in ``world`` gloo
processes (one spawn per test: start-up dominates), failing on any error or a hang."""

from __future__ import annotations

import datetime
import gc
import importlib
import os
import sys
import tempfile
import time
import traceback
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _worker(rank: int, world: int, init_file: str, module: str, calls: tuple):
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        torch.set_num_threads(1)  # several processes share a few cores: oversubscription is slow
        torch.manual_seed(0)
        warnings.simplefilter("ignore", FutureWarning)  # open_clip's autograd all_gather is deprecated
        checks = importlib.import_module(module)
        for name, *args in calls:
            getattr(checks, name)(rank, world, *args)
        # Every rank's transfers complete before any rank tears its group down: a rank that exits while a
        # peer still receives from it closes the connection under gloo's transport thread, which then
        # aborts the peer ("terminate called without an active exception", seen once in CI under load).
        dist.barrier()
    except BaseException:
        # Name the rank: the parent re-raises this process's traceback.
        raise RuntimeError(f"rank {rank} of {world} failed:\n{traceback.format_exc()}") from None
    finally:
        # Free any DDP reducer first: destroying a gloo group under a live one can abort at exit.
        gc.collect()
        dist.destroy_process_group()
    # A rank that passed leaves at once: with torch 2.13 and gloo a finished rank (transfers done, group
    # destroyed) can still abort in the interpreter's teardown ("terminate called without an active
    # exception", SIGABRT: seen in CI's ring tests despite the barrier above), and nothing is left to run
    # here. The trainer's cli.run leaves its torchrun ranks the same way. (A rank that failed raised above:
    # the parent gets its traceback.)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def spawn(module: str, world: int, *calls, timeout_s: float = 240):
    """Run each ``(check, *args)`` of ``calls`` as ``module.check(rank, world, *args)`` in ``world``
    processes."""
    with tempfile.TemporaryDirectory() as tmp:
        ctx = mp.start_processes(
            _worker,
            args=(world, os.path.join(tmp, "init"), module, calls),
            nprocs=world,
            join=False,
            start_method="spawn",
        )
        deadline = time.monotonic() + timeout_s
        while not ctx.join(timeout=5):
            if time.monotonic() > deadline:
                for p in ctx.processes:
                    if p.is_alive():
                        p.kill()
                pytest.fail(f"{[c[0] for c in calls]} with {world} processes hung for {timeout_s}s")
