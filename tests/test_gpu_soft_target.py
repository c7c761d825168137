"""GPU checks of the soft-target (PSD) loss (run by benchmarks/gpu_suite.sh; skipped with a reason on CPU).

The same rule as tests/test_soft_target.py (its ``_check``, on "cuda"): the loss and every gradient err
from the float64 loss by at most twice what torch's naive loss in the features' dtype errs, plus 8 fp32
ulps of their error scale, plus, on the Triton path in a 16-bit dtype, what rounding dL/dS to it can add.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tests._ref import features
from tests.test_soft_target import (
    _check,
    _check_features,
    _teacher_kwargs,
    check_distill_near_one_hot,
    check_stats_diagonal_is_the_walks,
)
from vlkernels import soft_target_loss
from vlkernels.ops.soft_target_triton import TritonSoftTargetBackend, both_stats
from vlkernels.ops.torch_utils import pack_lse

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("teacher", [False, True])
@pytest.mark.parametrize("rows,dim,row0", [(257, 64, 0), (4099, 1024, 0), (1000, 256, 3001)])
def test_triton_cuda_stats_diagonal_is_the_walks(monkeypatch, dtype, teacher, rows, dim, row0):
    """tests/test_soft_target.py's ``check_stats_diagonal_is_the_walks`` on the GPU's real tiles (the self
    teacher's 128 x 128 TMA tiles at D = 1024 in bf16; a teacher's 64 x 64): ``_diagonal_kernel`` on the
    statistics kernel's tile config gives bitwise its scores."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    check_stats_diagonal_is_the_walks("triton", rows, dim, row0, teacher, device="cuda", dtype=dtype)


@pytest.mark.parametrize(
    "dtype,workspace_mb",
    [(torch.float32, None), (torch.bfloat16, None), (torch.float16, None), (torch.bfloat16, "0")],
)
@pytest.mark.parametrize("batch,dim", [(1, 1), (257, 129), (4099, 512)])
@pytest.mark.parametrize("t_dim", [None, 384])
def test_triton_cuda_matches_float64(monkeypatch, dtype, batch, dim, t_dim, workspace_mb):
    """A separate teacher in the student's dtype (its dots on tensor cores in 16 bits; scale 40), a soft
    mask, label smoothing. Workspace 0: dL/dS in chunks of one block of rows, every text column from the
    column pass."""
    if workspace_mb is not None:
        monkeypatch.setenv("VLKERNELS_WORKSPACE_MB", workspace_mb)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)  # torch's fp32 base: IEEE
    _check("triton", batch, dim, dtype, alpha=0.4, t_dim=t_dim, mask=True, eps=0.1, grad_out=1.3, scale=50.0,
           t_dtype=dtype, t_scale=40.0, device="cuda")  # fmt: skip


@pytest.mark.parametrize("batch", [5, 257])
def test_distill_near_one_hot_two_grad_outputs(monkeypatch, batch):
    """DistillClipLoss near one-hot with its two losses weighted apart, fp32 on the real tiles
    (tests/test_soft_target.py's check): no ulp of e + q left on the diagonal."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    check_distill_near_one_hot("triton", batch, 64, 48, device="cuda")


def test_wide_tiles_fall_back_for_features_tma_cannot_read():
    """bf16 at D = 512 with the self teacher: contiguous features are read through TMA descriptors by the
    statistics and dL/dS kernels on sm_90; column-major image features (last stride not 1: TMA cannot read
    them; ``run_loss``'s clone keeps the strides) take the pointer-load configs (the statistics' 128 x 128
    in four parts, the narrow dL/dS tiles), on the same rule."""
    batch, dim, dtype = 1029, 512, torch.bfloat16
    img, txt = features(batch, dim, dtype, device="cuda", seed=13)
    img = img.t().contiguous().t()
    assert img.stride(1) != 1
    kw = dict(soft_mask=torch.arange(batch, device="cuda") % 3 != 0, label_smoothing=0.1)
    _check_features("triton", img, txt, 30.0, 0.4, kw, 0.7)


@pytest.mark.parametrize("impl", ["torch", "triton"])
@pytest.mark.parametrize("t_dim", [None, 200])
def test_cuda_fp32_ieee(monkeypatch, impl, t_dim):
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    _check(impl, 1000, 300, alpha=0.5, t_dim=t_dim, mask=True, grad_out=0.7, scale=30.0, device="cuda")


def test_alpha_zero_on_cuda_is_the_contrastive_loss():
    """alpha = 0: the soft targets' weight vanishes; within the float64 rule of the soft-target loss at
    alpha = 0, the contrastive loss (tests/test_soft_target.py checks that the two agree)."""
    _check("triton", 3001, 256, torch.bfloat16, alpha=0.0, grad_out=1.0, scale=30.0, device="cuda")


def test_int64_offsets_beyond_2_to_31_elements():
    # K (and the teacher's K') have more than 2^31 elements: offsets must be computed in int64.
    dim = 1024
    rows = (2**31) // dim + 4099
    k = torch.empty(rows, dim, dtype=torch.bfloat16, device="cuda")
    k.normal_()
    k = F.normalize(k, dim=1)
    q = F.normalize(torch.randn(64, dim, device="cuda"), dim=1).bfloat16()
    k[-3:] = q[:3]  # the last rows matter: they sit past the 2^31 boundary
    scale = torch.tensor(20.0, device="cuda")
    # the statistics pass: rows online, every column of K as per-program partials (int64 stores)
    lse, col_lse, t_lse, t_col_lse, wsum, _, _, gap, col_gap, _, _ = both_stats(q, k, scale, (q, k, scale))
    assert torch.isfinite(lse).all() and torch.isfinite(wsum).all() and torch.isfinite(col_lse).all()
    assert (gap >= 0).all() and (col_gap >= 0).all()
    torch.testing.assert_close(col_lse, t_col_lse)
    torch.testing.assert_close(lse, t_lse)
    # fp32 reference of the first 8 rows over all of K, in chunks of rows of K: the LSE and the
    # softmax-weighted sum of <q_i, k_j> (unscaled; ~0.995 for the first three, whose matching rows in the
    # tail dominate: e^20 against ~2.5e6 from the others).
    s = torch.cat([scale * q[:8].float() @ c.float().T for c in k.split(1 << 18)], 1)
    ref_lse = torch.logsumexp(s, 1)
    ref_wsum = (torch.softmax(s, 1) * (s / scale)).sum(1)
    ref_gap = ref_lse - (torch.softmax(s, 1) * s).sum(1)  # the soft gap: LSE - softmax-weighted score
    del s
    lse_nat = lse[:8] * math.log(2.0)  # the Triton backend's LSEs are in base 2
    atol = 1e-4 * ref_lse.abs().max().item()
    torch.testing.assert_close(lse_nat, ref_lse, rtol=0, atol=atol)
    torch.testing.assert_close(wsum[:8], ref_wsum, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gap[:8] * math.log(2.0), ref_gap, rtol=0, atol=atol)
    assert (wsum[:3] > 0.9).all(), wsum[:3]
    zeros = torch.zeros(rows, device="cuda")
    ones = torch.ones(64, device="cuda")
    be = TritonSoftTargetBackend()
    # W = P (student rows) and W = P + P' with the same teacher (e = 2, q = -1: W = e P + q (P - P')): the
    # matching tail rows dominate W @ K; the W.T @ Q output ([rows, D] fp32, 8.6 GB) is dropped at once.
    dq = be.accumulate(q, k, scale, lse, zeros, ones, zeros, 0 * ones, zeros)[0]
    # the student as its own separate teacher, its LSEs packed as the Functions keep them
    same = ((q, k, scale), pack_lse(t_lse), pack_lse(zeros.double()))
    dq_t = be.accumulate(q, k, scale, lse, zeros, 2 * ones, zeros, -ones, zeros, *same)[0]
    assert torch.isfinite(dq).all() and torch.isfinite(dq_t).all()
    cos = F.cosine_similarity(dq[:3], q[:3].float(), dim=1)
    assert (cos > 0.9).all(), cos
    torch.testing.assert_close(dq_t, 2 * dq, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("t_dim", [None, 768])
def test_memory_is_o_b(t_dim):
    batch, dim = 65536, 512
    img, txt = features(batch, dim, torch.bfloat16, device="cuda")
    kw = _teacher_kwargs(batch, t_dim, torch.bfloat16, t_scale=40.0, device="cuda")
    img.requires_grad_()
    txt.requires_grad_()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    soft_target_loss(img, txt, torch.tensor(30.0, device="cuda"), 0.5, impl="triton", **kw).backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    # Far below one B x B fp32 matrix (16 GiB); fp32 gradient accumulators are 2 * B * D * 4 bytes.
    assert extra < 4 * batch * dim * 4 + (64 << 20), extra
