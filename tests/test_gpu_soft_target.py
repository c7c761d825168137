"""GPU checks of the soft-target (PSD) loss (run by benchmarks/gpu_suite.sh; skipped with a reason on CPU).

Low-precision results are judged against an fp32 reference and may err no more than PyTorch itself does
in that dtype (flash-attention's rule): err(kernel) <= 2 * err(naive computed in the input dtype) + atol.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests._ref import TOL_GPU, assert_close_all, assert_within_torch_error, features, run_loss
from vlkernels import contrastive_loss, soft_target_loss
from vlkernels.ops.soft_target_triton import TritonSoftTargetBackend, both_stats

pytestmark = pytest.mark.gpu


def _teacher(batch, t_dim, dtype):
    if t_dim is None:
        return {}
    t_img, t_txt = features(batch, t_dim, dtype, device="cuda", seed=batch + 7 * t_dim)
    return dict(teacher_image_features=t_img, teacher_text_features=t_txt, teacher_logit_scale=40.0)


def _naive_same_dtype(img, txt, scale, alpha, mask, eps, teacher):
    # PyTorch's own low-precision computation: logits in the input dtype, the soft CE in fp32.
    logits = ((scale.to(img.dtype) * img) @ txt.T).float()
    if teacher:
        t_img, t_txt = teacher["teacher_image_features"], teacher["teacher_text_features"]
        t_logits = ((teacher["teacher_logit_scale"] * t_img) @ t_txt.T).float()
    else:
        t_logits = logits.detach()
    batch = img.shape[0]
    a = torch.where(mask, alpha, 0.0)[:, None]
    hard = torch.full_like(logits, eps / batch)
    hard.diagonal().add_(1.0 - eps)
    q_i = (1 - a) * hard + a * t_logits.softmax(1)
    q_t = (1 - a) * hard + a * t_logits.T.softmax(1)
    return 0.5 * (F.cross_entropy(logits, q_i) + F.cross_entropy(logits.T, q_t))


@pytest.mark.parametrize(
    "dtype,workspace_mb",
    [(torch.float32, None), (torch.bfloat16, None), (torch.float16, None), (torch.bfloat16, "0")],
)
@pytest.mark.parametrize("batch,dim", [(1, 1), (257, 129), (4099, 512)])
@pytest.mark.parametrize("t_dim", [None, 384])
def test_triton_cuda_vs_fp32_reference(monkeypatch, dtype, batch, dim, t_dim, workspace_mb):
    # workspace 0: dL/dS in chunks of one block of rows, every text column from the column pass
    if workspace_mb is not None:
        monkeypatch.setenv("VLKERNELS_WORKSPACE_MB", workspace_mb)
    img, txt = features(batch, dim, torch.float32, device="cuda", seed=batch + dim)
    scale = torch.tensor(50.0, device="cuda")
    mask = torch.arange(batch, device="cuda") % 4 != 0
    kw = dict(soft_mask=mask, label_smoothing=0.1)
    ref_teacher, low_teacher = _teacher(batch, t_dim, torch.float32), _teacher(batch, t_dim, dtype)
    ref = run_loss(
        lambda i, t, s: soft_target_loss(i, t, s, 0.4, impl="naive", **kw, **ref_teacher),
        img,
        txt,
        scale,
        1.3,
    )
    low_i, low_t = img.to(dtype), txt.to(dtype)
    got = run_loss(
        lambda i, t, s: soft_target_loss(i, t, s, 0.4, impl="triton", **kw, **low_teacher),
        low_i,
        low_t,
        scale,
        1.3,
    )
    base = run_loss(
        lambda i, t, s: _naive_same_dtype(i, t, s, 0.4, mask, 0.1, low_teacher), low_i, low_t, scale, 1.3
    )
    assert_within_torch_error(got, base, ref, dtype)


def test_wide_tiles_fall_back_for_features_tma_cannot_read():
    """bf16 at D = 512 with the self teacher: contiguous features are read through TMA descriptors by the
    statistics and dL/dS kernels on sm_90; column-major image features (last stride not 1: TMA cannot read
    them; ``run_loss``'s clone keeps the strides) take the pointer-load configs (the statistics' 128 x 128
    in four parts, the narrow dL/dS tiles), within the same error bound."""
    batch, dim, dtype = 1029, 512, torch.bfloat16
    img, txt = features(batch, dim, torch.float32, device="cuda", seed=13)
    img = img.t().contiguous().t()
    assert img.stride(1) != 1
    scale = torch.tensor(30.0, device="cuda")
    mask = torch.arange(batch, device="cuda") % 3 != 0
    kw = dict(soft_mask=mask, label_smoothing=0.1)
    ref = run_loss(lambda i, t, s: soft_target_loss(i, t, s, 0.4, impl="naive", **kw), img, txt, scale, 0.7)
    low_i, low_t = img.to(dtype), txt.to(dtype)
    assert low_i.stride(1) != 1  # .to keeps the column-major strides
    got = run_loss(
        lambda i, t, s: soft_target_loss(i, t, s, 0.4, impl="triton", **kw), low_i, low_t, scale, 0.7
    )
    base = run_loss(lambda i, t, s: _naive_same_dtype(i, t, s, 0.4, mask, 0.1, {}), low_i, low_t, scale, 0.7)
    assert_within_torch_error(got, base, ref, dtype)


@pytest.mark.parametrize("impl", ["torch", "triton"])
@pytest.mark.parametrize("t_dim", [None, 200])
def test_cuda_fp32_tight(impl, t_dim):
    torch.backends.cuda.matmul.allow_tf32 = False
    img, txt = features(1000, 300, device="cuda")
    scale = torch.tensor(30.0, device="cuda")
    kw = dict(soft_mask=torch.arange(1000, device="cuda") % 3 != 0, **_teacher(1000, t_dim, torch.float32))
    want = run_loss(lambda i, t, s: soft_target_loss(i, t, s, 0.5, impl="naive", **kw), img, txt, scale, 0.7)
    got = run_loss(lambda i, t, s: soft_target_loss(i, t, s, 0.5, impl=impl, **kw), img, txt, scale, 0.7)
    assert_close_all(got, want, torch.float32, tol=TOL_GPU)


def test_alpha_zero_is_contrastive_on_cuda():
    img, txt = features(3001, 256, torch.bfloat16, device="cuda")
    scale = torch.tensor(30.0, device="cuda")
    want = run_loss(lambda i, t, s: contrastive_loss(i, t, s, impl="triton"), img, txt, scale)
    got = run_loss(lambda i, t, s: soft_target_loss(i, t, s, 0.0, impl="triton"), img, txt, scale)
    assert_close_all(got, want, torch.bfloat16, tol=TOL_GPU)


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
    lse, col_lse, t_lse, t_col_lse, wsum, _ = both_stats(q, k, scale, (q, k, scale))
    assert torch.isfinite(lse).all() and torch.isfinite(wsum).all() and torch.isfinite(col_lse).all()
    torch.testing.assert_close(col_lse, t_col_lse)
    torch.testing.assert_close(lse, t_lse)
    # fp32 reference of the first 8 rows over all of K, in chunks of rows of K: the LSE and the
    # softmax-weighted sum of <q_i, k_j> (unscaled; ~0.995 for the first three, whose matching rows in the
    # tail dominate: e^20 against ~2.5e6 from the others).
    s = torch.cat([scale * q[:8].float() @ c.float().T for c in k.split(1 << 18)], 1)
    ref_lse = torch.logsumexp(s, 1)
    ref_wsum = (torch.softmax(s, 1) * (s / scale)).sum(1)
    del s
    torch.testing.assert_close(lse[:8], ref_lse, rtol=0, atol=1e-4 * ref_lse.abs().max().item())
    torch.testing.assert_close(wsum[:8], ref_wsum, rtol=1e-4, atol=1e-5)
    assert (wsum[:3] > 0.9).all(), wsum[:3]
    zeros = torch.zeros(rows, device="cuda")
    ones = torch.ones(64, device="cuda")
    be = TritonSoftTargetBackend()
    # W = P (student rows) and W = P + P' with the same teacher (q = -1): the matching tail rows dominate
    # W @ K; the W.T @ Q output ([rows, D] fp32, 8.6 GB) is dropped at once.
    dq = be.accumulate(q, k, scale, lse, zeros, ones, zeros, 0 * ones, zeros)[0]
    dq_t = be.accumulate(q, k, scale, lse, zeros, ones, zeros, -ones, zeros, (q, k, scale), t_lse, zeros)[0]
    assert torch.isfinite(dq).all() and torch.isfinite(dq_t).all()
    cos = F.cosine_similarity(dq[:3], q[:3].float(), dim=1)
    assert (cos > 0.9).all(), cos
    torch.testing.assert_close(dq_t, 2 * dq, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("t_dim", [None, 768])
def test_memory_is_o_b(t_dim):
    batch, dim = 65536, 512
    img, txt = features(batch, dim, torch.bfloat16, device="cuda")
    kw = _teacher(batch, t_dim, torch.bfloat16)
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
