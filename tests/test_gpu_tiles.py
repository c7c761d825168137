"""The GPU's own tiles, run in the interpreter.

In Triton's interpreter the launchers take small tiles (16 x 16 and the like: ``triton_utils.small_tiles``),
the same code paths at a fraction of the time. The tiles a GPU launches (128 x 128 and 256 x 128 through
TMA descriptors, 64 x 32 IEEE fp32 tiles, the epilogues in four or eight column parts, the statistics'
partials per part, the merge's 256-column blocks) are compiled ahead of time (tests/test_aot_compile.py)
but never run here. The tests below run them: ``small_tiles`` patched off and ``HOST_ARCH`` set to sm_90
(the H100's tiles) or sm_80 (the A100's, which the RTX 30 / 40 / 50 GPUs share), on CPU tensors in the
interpreter. Each checks the loss and every gradient against float64 on the rule of the loss's own tests
(the checks tests/test_gpu_*.py run on a GPU, at smaller shapes), the diagonal checks' bitwise
equalities, the extremes (near one-hot rows, logits near 1e23), the one-tile launches in slabs, the
distributed modes on 2 gloo ranks against naive, and that no launch races (``tests/_races.py``).

The interpreter's numerics are not a GPU's (numpy dots; bf16 tiles upcast after loading): what this
shows is the tiles' indexing, masking, layouts and buffer sizes, not the tensor cores' rounding."""

from __future__ import annotations

from unittest import mock

import pytest
import torch

from tests import test_contrastive as contrastive_tests
from tests._races import assert_no_race, races
from tests._ref import run_loss
from tests._spawn import spawn
from tests.test_contrastive import _check as contrastive_check
from tests.test_contrastive import _check_huge_logits, check_diagonal_is_the_walks
from tests.test_launch_device import distributed_cases
from tests.test_sigmoid import check as sigmoid_check
from tests.test_soft_target import _check as soft_target_check
from tests.test_soft_target import check_distill_near_one_hot, check_stats_diagonal_is_the_walks
from vlkernels.ops import triton_utils as tu

pytestmark = pytest.mark.interpreter


@pytest.fixture
def gpu_tiles(request, monkeypatch):
    """The launchers take sm_``request.param``'s tiles in the interpreter (tests parametrize it
    indirectly); yields the launches' race records."""
    monkeypatch.setattr(tu, "small_tiles", lambda: False)
    monkeypatch.setattr(tu, "HOST_ARCH", request.param)
    with races() as launches:
        yield launches
    _assert_gpu_launches(launches)


def _assert_gpu_launches(launches, what: str = "") -> None:
    """Kernels were launched, every one on GPU tiles (no block below 64), none with a race."""
    assert_no_race(launches, what)
    small = [x for x in launches if min(x.blocks.get(k, 64) for k in ("BLOCK_M", "BLOCK")) < 64]
    assert not small, f"{what}: launches on the interpreter's small tiles: {small[:3]}"


# (dtype or fp32 dots, batch, dim, workspace MiB or None, architectures): bf16 at D a multiple of 16
# above 64 (sm_90: the wide tiles, 128 x 256 forward and 256 x 128 G through TMA descriptors, the soft
# target's 128 x 128 statistics in parts; sm_80: 128 x 128), fp16 at an unaligned D (pointer loads) with
# no workspace (G in slabs of one block), every fp32 kind. sm_80 only where its tiles differ from sm_90's
# at these shapes (the IEEE and TF32 launches take the same blocks on both).
CASES = [
    ("bf16", 200, 144, None, (90, 80)),
    ("fp16", 150, 65, "0", (90, 80)),
    ("ieee", 100, 72, None, (90,)),
    ("tf32", 150, 129, None, (90,)),
    ("bf16x6", 130, 96, None, (90, 80)),
]


def _params(cases) -> list:
    """pytest params (case, arch) for ``gpu_tiles`` (indirect), one per architecture of each case."""
    return [pytest.param(c[:-1], a, id=f"sm{a}-{c[0]}-{c[1]}x{c[2]}") for c in cases for a in c[-1]]


def _dtype(monkeypatch, matmul_precision, kind: str) -> torch.dtype:
    if kind in ("bf16", "fp16"):
        return {"bf16": torch.bfloat16, "fp16": torch.float16}[kind]
    matmul_precision("high" if kind == "tf32" else "highest")
    if kind not in ("ieee", "tf32"):
        monkeypatch.setenv("VLKERNELS_FP32_DOTS", kind)
    return torch.float32


def _assert_wide(launches, dtype, dim) -> None:
    """Where ``wide_score_tiles`` holds (sm_90, 16-bit, D a multiple of 16 above 64), the forward ran on
    128 x 256 tiles and the G kernel on 256 x 128; elsewhere neither did."""
    blocks = {(x.blocks.get("BLOCK_M"), x.blocks.get("BLOCK_N")) for x in launches}
    wide = tu.wide_score_tiles(dim, dtype, tu.HOST_ARCH)
    assert ({(128, 256), (256, 128)} <= blocks) == wide, (wide, sorted(blocks, key=str))


def _case(monkeypatch, matmul_precision, case):
    kind, batch, dim, workspace = case
    if workspace is not None:
        monkeypatch.setenv("VLKERNELS_WORKSPACE_MB", workspace)
    return _dtype(monkeypatch, matmul_precision, kind), batch, dim


@pytest.mark.parametrize("case,gpu_tiles", _params(CASES), indirect=["gpu_tiles"])
def test_contrastive(monkeypatch, matmul_precision, gpu_tiles, case):
    dtype, batch, dim = _case(monkeypatch, matmul_precision, case)
    contrastive_check("triton", batch, dim, dtype, scale=30.0, eps=0.1, grad_out=1.3)
    _assert_wide(gpu_tiles, dtype, dim)


@pytest.mark.parametrize("case,gpu_tiles", _params(CASES), indirect=["gpu_tiles"])
def test_sigmoid(monkeypatch, matmul_precision, gpu_tiles, case):
    dtype, batch, dim = _case(monkeypatch, matmul_precision, case)
    sigmoid_check("triton", batch, dim, dtype, grad_out=1.3)
    _assert_wide(gpu_tiles, dtype, dim)


@pytest.mark.parametrize("teacher", [None, 40], ids=["self", "teacher"])
@pytest.mark.parametrize("case,gpu_tiles", _params(CASES), indirect=["gpu_tiles"])
def test_soft_target(monkeypatch, matmul_precision, gpu_tiles, case, teacher):
    dtype, batch, dim = _case(monkeypatch, matmul_precision, case)
    t_dtype = torch.float32 if dtype == torch.float32 else dtype
    soft_target_check("triton", batch, dim, dtype, alpha=0.4, t_dim=teacher, mask=True, eps=0.1,
                      grad_out=1.3, scale=30.0, t_dtype=t_dtype, t_scale=20.0)  # fmt: skip


@pytest.mark.parametrize(
    "case,gpu_tiles",
    _params([("bf16", 200, 144, 0, (90, 80)), ("bf16", 130, 72, 37, (90, 80)), ("ieee", 150, 64, 0, (90,)),
             ("ieee", 130, 72, 37, (90,))]),
    indirect=["gpu_tiles"],
)  # fmt: skip
def test_diagonals_are_the_walks(monkeypatch, matmul_precision, gpu_tiles, case):
    """The contrastive forward's and the statistics kernel's diagonal scores, recomputed by
    ``_diagonal_kernel`` / ``_teacher_diagonal_kernel`` on their tile configs, are bitwise theirs."""
    kind, rows, dim, row0 = case
    dtype = _dtype(monkeypatch, matmul_precision, kind)
    check_diagonal_is_the_walks("triton", rows, dim, row0, dtype=dtype)
    for teacher in (False, True):
        check_stats_diagonal_is_the_walks("triton", rows, dim, row0, teacher, dtype=dtype)


@pytest.mark.parametrize("gpu_tiles", [90], indirect=True, ids=["sm90"])  # IEEE: sm_80's tiles alike
@pytest.mark.parametrize("check", ["confident rows", "distill near one-hot", "huge logits"])
def test_extremes(matmul_precision, gpu_tiles, check):
    """The CPU tests' extremes (tests/test_contrastive.py, tests/test_soft_target.py; IEEE fp32) that
    tests/test_gpu_*.py owe on a GPU, here on its tiles: near one-hot rows within 16 ulps of their own
    error scale (B = 257, s = 60); DistillClipLoss near one-hot (B = 130) with its two losses weighted apart;
    logits near 1e23 on the float64 rule (the G kernel recomputes the forward's scores bitwise)."""
    matmul_precision("highest")
    if check == "confident rows":
        contrastive_tests.test_confident_rows_at_s_60_keep_their_gradient("triton")  # (not collected here)
    elif check == "distill near one-hot":
        check_distill_near_one_hot("triton", 130, 64, 48)
    else:
        _check_huge_logits(1e22, 130, 72)


@pytest.mark.parametrize("gpu_tiles", [90], indirect=True, ids=["sm90"])  # IEEE: sm_80's tiles alike
@pytest.mark.parametrize("loss", ["contrastive", "sigmoid", "soft target"])
def test_one_tile_slabs(monkeypatch, matmul_precision, gpu_tiles, loss):
    """The one-tile G launches (IEEE fp32: 64 x 32 tiles; the soft target's separate teacher) with their
    column tiles in slabs of two along z (``triton_utils.GRID_YZ_MAX`` lowered from 65,535), on the
    float64 rule; the spare program of the last slab writes the last tile again, alike."""
    monkeypatch.setattr(tu, "GRID_YZ_MAX", 2)
    matmul_precision("highest")
    if loss == "contrastive":
        contrastive_check("triton", 150, 72, scale=30.0, eps=0.1, grad_out=1.3)
    elif loss == "sigmoid":
        sigmoid_check("triton", 150, 72, grad_out=1.3)
    else:
        soft_target_check("triton", 150, 72, alpha=0.4, t_dim=40, mask=True, eps=0.1, grad_out=1.3)
    assert any(x.same_writes for x in gpu_tiles), "no launch clamped a spare program onto a tile"


ROWS = 100  # a rank's: 200 gathered columns


def _check_distributed_on_gpu_tiles(rank, world, arch):
    """Each distributed loss and mode on sm_``arch``'s tiles: the Triton loss and gradients within 1e-4
    of naive's largest value (fp32, IEEE dots), and no race."""
    image, text, triton_runs = distributed_cases(rank, "triton", ROWS, 72)
    runs = {"triton": triton_runs, "naive": distributed_cases(rank, "naive", ROWS, 72)[2]}
    torch.set_float32_matmul_precision("highest")
    with mock.patch.object(tu, "small_tiles", lambda: False), mock.patch.object(tu, "HOST_ARCH", arch):
        for name in triton_runs:
            results = {}
            for impl in ("triton", "naive"):
                with races() as launches:
                    results[impl] = run_loss(runs[impl][name], image, text, torch.tensor(7.0), 1.3)
                if impl == "triton":
                    _assert_gpu_launches(launches, name)
            names = ("loss", "dI", "dT", "ds")
            for got, want, what in zip(results["triton"], results["naive"], names, strict=True):
                tol = 1e-4 * want.abs().max().item()
                torch.testing.assert_close(got, want, rtol=1e-4, atol=tol, msg=f"{name} {what}")


def test_distributed_losses():
    """The six distributed modes (the contrastive loss gathered and local, the sigmoid loss gathered and
    per rank, the soft target with and without a teacher) on 2 gloo ranks, 100 rows a rank."""
    spawn(__name__, 2, ("_check_distributed_on_gpu_tiles", 90))  # IEEE: sm_80's tiles alike
