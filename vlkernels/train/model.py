"""A tiny CLIP: ViT-style image tower, causal transformer text tower, projections to a shared space.

Same structure as open_clip's ``CLIP`` (pre-LN blocks, class token for images, the last real token for
texts, learnable ``logit_scale`` initialised to log(1/0.07) and clamped to log(100) after each step),
scaled down so that a few hundred steps run in a minute on a laptop CPU. The attention is written with
``F.scaled_dot_product_attention`` rather than ``nn.MultiheadAttention`` so that train and eval modes run
the same kernels (no "fast path" in eval), which keeps gradient caching's two forwards identical.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

LOGIT_SCALE_INIT = math.log(1 / 0.07)
LOGIT_SCALE_MAX = math.log(100)


@dataclass
class ClipConfig:
    image_size: int = 32
    patch_size: int = 8
    vision_width: int = 64
    vision_layers: int = 2
    vocab_size: int = 64
    context_length: int = 16
    text_width: int = 64
    text_layers: int = 1
    heads: int = 4
    embed_dim: int = 64

    def to_dict(self) -> dict:
        return asdict(self)


class Block(nn.Module):
    """Pre-LN transformer block (attention + 4x GELU MLP), optional causal mask."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln_1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        n, length, width = x.shape
        q, k, v = self.qkv(self.ln_1(x)).view(n, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        x = x + self.proj(attn.transpose(1, 2).reshape(n, length, width))
        return x + self.mlp(self.ln_2(x))


class TinyClip(nn.Module):
    """``encode_image(images [N, 3, H, W] float) -> [N, E]``, ``encode_text(tokens [N, L] int64, lengths
    [N]) -> [N, E]`` (both L2-normalised), ``forward -> (image, text, logit_scale.exp())`` as open_clip."""

    def __init__(self, cfg: ClipConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.image_size % cfg.patch_size or cfg.patch_size % 2:
            raise ValueError(
                f"patch_size {cfg.patch_size} must be even and divide image_size {cfg.image_size}"
            )
        grid = cfg.image_size // cfg.patch_size
        # Early-convolution stem (Xiao et al., 2021): one stride-2 3x3 conv before the patchify conv; at
        # this tiny scale it is what lets the ViT tell shapes apart within a few hundred steps.
        self.patch = nn.Sequential(
            nn.Conv2d(3, cfg.vision_width // 2, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(
                cfg.vision_width // 2, cfg.vision_width, cfg.patch_size // 2, stride=cfg.patch_size // 2
            ),
        )
        self.cls = nn.Parameter(torch.randn(cfg.vision_width) * cfg.vision_width**-0.5)
        self.vision_pos = nn.Parameter(torch.randn(grid * grid + 1, cfg.vision_width) * 0.02)
        self.vision_blocks = nn.ModuleList(
            Block(cfg.vision_width, cfg.heads) for _ in range(cfg.vision_layers)
        )
        self.vision_ln = nn.LayerNorm(cfg.vision_width)
        self.vision_proj = nn.Linear(cfg.vision_width, cfg.embed_dim, bias=False)

        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.text_width)
        self.text_pos = nn.Parameter(torch.randn(cfg.context_length, cfg.text_width) * 0.01)
        self.text_blocks = nn.ModuleList(Block(cfg.text_width, cfg.heads) for _ in range(cfg.text_layers))
        self.text_ln = nn.LayerNorm(cfg.text_width)
        self.text_proj = nn.Linear(cfg.text_width, cfg.embed_dim, bias=False)

        self.logit_scale = nn.Parameter(torch.tensor(LOGIT_SCALE_INIT))
        nn.init.normal_(self.token_embedding.weight, std=0.02)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch(images).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], 1, -1), x], dim=1) + self.vision_pos
        for block in self.vision_blocks:
            x = block(x)
        return F.normalize(self.vision_proj(self.vision_ln(x[:, 0])), dim=-1)

    def encode_text(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(tokens) + self.text_pos[: tokens.shape[1]]
        for block in self.text_blocks:
            x = block(x, causal=True)
        # Causal attention: the last real token (the end token) has seen the whole caption, the padding
        # after it never influences it.
        x = self.text_ln(x[torch.arange(x.shape[0], device=x.device), lengths - 1])
        return F.normalize(self.text_proj(x), dim=-1)

    def forward(self, images, tokens, lengths):
        return self.encode_image(images), self.encode_text(tokens, lengths), self.logit_scale.exp()

    @torch.no_grad()
    def clamp_logit_scale(self) -> None:
        """open_clip clamps after every optimiser step: logit_scale <= log(100)."""
        self.logit_scale.clamp_(0, LOGIT_SCALE_MAX)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only (not on biases, norms, embeddings of positions, logit_scale)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and "pos" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
