"""The weights kernels' tile walk (``triton_utils.walk_grid``): each program takes one block of rows and
walks a share of its column tiles, as one loop Triton pipelines across tiles on a GPU. The grouping
(``walk_groups``) changes which program computes a tile, never what it computes: the G tiles and their
row sums must be bitwise equal under every grouping, and equal to one program per tile (the layout IEEE
fp32 keeps). Under the interpreter the launchers assume three SMs, so the loss tests walk too."""

from __future__ import annotations

import math

import pytest
import torch

from tests._ref import features
from vlkernels.ops import triton_utils as tu

pytestmark = pytest.mark.interpreter


def test_walk_groups_picks_the_shortest_span():
    for rb, cb, sms in [(8, 512, 132), (64, 32, 132), (200, 32, 132), (3, 10, 3), (1, 1, 132), (2, 64, 132)]:
        g = tu.walk_groups(rb, cb, sms)
        assert 1 <= g <= cb

        spans = {
            other: math.ceil(rb * other / sms) * (math.ceil(cb / other) + tu.WALK_RESTART)
            for other in range(1, cb + 1)
            if rb * other <= 16 * sms or other == cb
        }
        assert spans[g] == min(spans.values()), (rb, cb, sms, g)
        assert 0 < tu.walk_filled(rb, cb, sms) <= 1
    # one wave holds every tile: one tile per program; many tiles: long walks filling the SMs
    assert tu.walk_groups(2, 64, 132) == 64
    assert tu.walk_groups(8, 512, 132) == 16 and tu.walk_filled(8, 512, 132) == pytest.approx(4096 / 4224)


def _grids(monkeypatch, launch, n_blocks, walks=True):
    """Outputs of ``launch()`` with every program walking 1, 3 or all column tiles (3: uneven shares);
    ``walks``: whether the launcher must ask for a grouping (IEEE fp32 keeps one program per tile)."""
    outs, asked = {}, []

    def groups_of(per):
        def walk_groups(rb, cb, sms):
            asked.append((rb, cb))
            return math.ceil(n_blocks / per)

        return walk_groups

    for per in (n_blocks, 3, 1):
        monkeypatch.setattr(tu, "walk_groups", groups_of(per))
        outs[per] = launch()
    assert bool(asked) == walks and all(cb == n_blocks for _, cb in asked), asked
    return outs


def _same(outs):
    ref = outs[1]
    for per, out in outs.items():
        for a, b in zip(out, ref, strict=True):
            assert torch.equal(a, b), per
    assert all(torch.isfinite(x).all() for x in ref)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_contrastive_weights_walk_is_exact(monkeypatch, dtype):
    from vlkernels.ops import contrastive_triton as ct

    m, n, dim = 37, 150, 24  # 3 row blocks x 10 column blocks of 16 in the interpreter
    q, k = features(m, dim, dtype, seed=1)[0], features(n, dim, dtype, seed=2)[0]
    scale = torch.tensor(7.0)
    lse_q, lse_k = torch.randn(m) + 3, torch.randn(n) + 3
    blocks = math.ceil(n / 16)

    def launch():
        g = torch.full((m * n,), float("nan"), dtype=dtype)
        ds = torch.full((m * blocks,), float("nan"))
        ct.weights(q, k, scale, lse_q, lse_k, g, ds, 5, 0.1, n)
        return g, ds

    _same(_grids(monkeypatch, launch, blocks, walks=dtype != torch.float32))
    g, _ = launch()
    s = scale.double() * q.double() @ k.double().T
    want = (s - lse_q.double()[:, None]).exp() + (s - lse_k.double()[None, :]).exp()
    want -= 2 * 0.1 / n + 2 * 0.9 * (torch.arange(m)[:, None] + 5 == torch.arange(n)[None, :])
    torch.testing.assert_close(g.view(m, n).double(), want, rtol=2e-2, atol=2e-2 * want.abs().max().item())


def test_sigmoid_weights_walk_is_exact(monkeypatch):
    from vlkernels.ops import sigmoid_triton as st

    m, n, dim = 37, 150, 24
    q, k = features(m, dim, torch.bfloat16, seed=3)[0], features(n, dim, torch.bfloat16, seed=4)[0]
    scale, bias = torch.tensor(5.0), torch.tensor(-2.0)
    blocks = math.ceil(n / 16)

    def launch():
        g = torch.full((m * n,), float("nan"), dtype=torch.bfloat16)
        part = torch.full((2 * m * blocks,), float("nan"))
        st.weights(q, k, scale, bias, g, part, 3)
        return g, part

    _same(_grids(monkeypatch, launch, blocks))


def test_soft_target_weights_walk_is_exact(monkeypatch):
    from vlkernels.ops import soft_target_triton as sst

    m, n, dim = 37, 150, 24
    q, k = features(m, dim, torch.float16, seed=5)[0], features(n, dim, torch.float16, seed=6)[0]
    scale = torch.tensor(6.0)
    lse_q, lse_k = torch.randn(m) + 3, torch.randn(n) + 3
    pair_q = (torch.rand(m), torch.rand(m))
    pair_k = (torch.rand(n), torch.rand(n))
    cf = torch.tensor([0.7, 0.2, 0.05])
    blocks = math.ceil(n / 16)

    def launch():
        g = torch.full((m * n,), float("nan"), dtype=torch.float16)
        ds = torch.full((m * blocks,), float("nan"))
        sst.weights(q, k, scale, lse_q, lse_k, pair_q, pair_k, cf, None, None, None, g, hard=(4, 0.1, n, ds))
        return g, ds

    _same(_grids(monkeypatch, launch, blocks))
