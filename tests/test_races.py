"""No Triton launch races: within one launch, no program reads or writes (with other values) a byte that
another program writes, and no program reads back what it wrote (``tests/_races.py``). On a GPU the
programs run at once; the interpreter runs them in order, so the parity tests cannot see a race.

The check runs every single-process loss (forward and backward), in bf16 and fp32 (IEEE and TF32 dots),
with no workspace, a partial one and the default, on unnormalised features at s = 100 (the exact-LSE
fallback), with the one-tile launches in slabs, and every distributed loss on 2 gloo ranks. Its own
test runs kernels written to race, one per hazard."""

from __future__ import annotations

import importlib
import pkgutil

import pytest
import torch
import triton
import triton.language as tl

import vlkernels.ops
from tests._races import assert_no_race, races
from tests._ref import features, run_loss
from tests._spawn import spawn
from tests.test_contrastive import _partial_workspace, _unnormalised
from tests.test_launch_device import distributed_cases, loss_cases
from vlkernels.ops import triton_utils as tu

LOSSES = ["contrastive", "sigmoid", "soft_target", "soft_target_self", "distill"]


@triton.jit
def _toy_kernel(x_ptr, BLOCK: tl.constexpr, MODE: tl.constexpr):
    """Each program owns x[pid * BLOCK:][:BLOCK] (x has one spare block at the end)."""
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    if MODE == 0:  # read the next program's block: read-write
        tl.store(x_ptr + offs, tl.load(x_ptr + offs + BLOCK) + 1.0)
    elif MODE == 1:  # every program writes its own value into block 0: write-write
        tl.store(x_ptr + tl.arange(0, BLOCK), tl.zeros([BLOCK], tl.float32) + 1.1 * (pid + 1))
    elif MODE == 2:  # every program writes the same values into block 0: alike, no race
        tl.store(x_ptr + tl.arange(0, BLOCK), tl.zeros([BLOCK], tl.float32) + 3.0)
    elif MODE == 3:  # store, then load the same bytes back: read-after-own-write
        tl.store(x_ptr + offs, tl.zeros([BLOCK], tl.float32) + 2.0)
        tl.store(x_ptr + offs, tl.load(x_ptr + offs) * 2.0)
    elif MODE == 4:  # a read-modify-write of its own block: ordered by its data, no race
        tl.store(x_ptr + offs, tl.load(x_ptr + offs) * 2.0)
    else:  # the next program's block, all lanes masked off: nothing read
        none = tl.arange(0, BLOCK) < 0
        tl.store(x_ptr + offs, tl.load(x_ptr + offs + BLOCK, mask=none, other=1.0))


@pytest.mark.interpreter
@pytest.mark.parametrize(
    "mode,hazard,same",
    [(0, "read-write", 0), (1, "write-write", 0), (2, None, 64), (3, "read-after-own-write", 0), (4, None, 0),
     (5, None, 0)],
)  # fmt: skip
def test_the_check_finds_each_hazard(mode, hazard, same):
    programs, block = 4, 16
    x = torch.rand((programs + 1) * block, generator=torch.Generator().manual_seed(mode)) + 1.0
    with races() as launches:
        _toy_kernel[(programs,)](x, BLOCK=block, MODE=mode)
    (launch,) = launches
    assert launch.kernel == "test_races._toy_kernel" and launch.programs == programs
    assert launch.written == (block if mode in (1, 2) else programs * block) * 4
    found = [k for k, n in launch.hazards.items() if n]
    assert found == ([hazard] if hazard else []), launch
    if hazard == "read-write":
        assert launch.hazards[hazard] == (programs - 1) * block * 4  # the last block is nobody's
    if hazard == "write-write":
        assert launch.hazards[hazard] == block * 4  # 1.1, 2.2, 3.3, 4.4: every byte differs
    assert launch.same_writes == same  # block 0's 64 bytes, written alike by all four programs


def _run(loss, image, text, scale: float) -> None:
    """Forward and backward (grad_output 1.3) of ``loss``, every input reached."""
    grads = run_loss(loss, image, text, torch.tensor(scale), 1.3)[1:]
    assert len(grads) == 3 and all(g is not None for g in grads)


# (dtype, torch.get_float32_matmul_precision, workspace, features): bf16 with a workspace that covers
# some columns (both backward passes), fp32 IEEE dots (one tile per program) with none, TF32 dots with the
# default, fp32 unnormalised features at s = 100 (the exact-LSE fallback's launches)
SETTINGS = {
    "bf16 partial": (torch.bfloat16, "highest", "partial", "normalised"),
    "fp32 ieee none": (torch.float32, "highest", "0", "normalised"),
    "fp32 tf32": (torch.float32, "high", None, "normalised"),
    "fp32 unnormalised": (torch.float32, "highest", None, "unnormalised"),
}


@pytest.mark.interpreter
@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("loss", LOSSES)
def test_losses_do_not_race(monkeypatch, matmul_precision, loss, setting):
    dtype, precision, workspace, kind = SETTINGS[setting]
    batch, dim = 37, 19
    if workspace == "partial":
        workspace = str(_partial_workspace(batch, dim, dtype) / 2**20)
    if workspace is not None:
        monkeypatch.setenv("VLKERNELS_WORKSPACE_MB", workspace)
    matmul_precision(precision)
    if kind == "unnormalised":
        image, text, scale = *_unnormalised(batch, dim, 5), 100.0
    else:
        image, text, scale = *features(batch, dim, dtype, seed=3), 30.0
    with races() as launches:
        _run(loss_cases(batch, dim, seed=3)[loss], image, text, scale)
    assert_no_race(launches, f"{loss} {setting}")


def _package_kernels() -> set[str]:
    """``module._name_kernel`` of every Triton kernel in vlkernels.ops (the launches' ``Launch.kernel``)."""
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    found = set()
    for info in pkgutil.iter_modules(vlkernels.ops.__path__):
        module = importlib.import_module(f"vlkernels.ops.{info.name}")
        for name, obj in vars(module).items():
            if isinstance(obj, JITFunction | InterpretedFunction) and name.endswith("_kernel"):
                found.add(f"{info.name}.{name}")
    return found


@pytest.mark.interpreter
def test_every_kernel_is_checked(matmul_precision):
    """The losses above launch every Triton kernel of the package (here at one setting, TF32 dots)."""
    launched = set()
    matmul_precision("high")
    for loss in LOSSES:
        with races() as launches:
            _run(loss_cases(37, 19, seed=3)[loss], *features(37, 19, seed=3), 30.0)
        launched |= {x.kernel for x in launches}
    kernels = _package_kernels()
    assert len(kernels) >= 11, sorted(kernels)
    assert kernels <= launched, f"never launched: {sorted(kernels - launched)}"


@pytest.mark.interpreter
@pytest.mark.parametrize("loss", ["contrastive", "sigmoid", "soft_target"])
def test_one_tile_slabs_write_alike_without_a_race(monkeypatch, matmul_precision, loss):
    """The one-tile weights launches (IEEE fp32 dots; a separate teacher) in slabs of two column tiles
    along z: with three tiles, the last slab's spare program is clamped onto the last tile and writes its
    bytes again, alike (``same_writes``); nothing else is shared."""
    monkeypatch.setattr(tu, "GRID_YZ_MAX", 2)
    matmul_precision("highest")
    with races() as launches:
        _run(loss_cases(37, 19, seed=3)[loss], *features(37, 19, seed=3), 30.0)
    assert_no_race(launches, loss)
    assert any(x.same_writes for x in launches), "no launch clamped a spare program onto a tile"


def _check_distributed_races(rank, world):
    image, text, runs = distributed_cases(rank, "triton", 37, 19)  # 37 rows a rank: several programs
    for name, run in runs.items():
        with races() as launches:
            _run(run, image, text, 7.0)
        assert_no_race(launches, f"rank {rank} {name}")


@pytest.mark.interpreter
def test_distributed_losses_do_not_race():
    spawn(__name__, 2, ("_check_distributed_races",))
