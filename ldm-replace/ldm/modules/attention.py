"""Transformer blocks of the SD v1 UNet (CompVis ``ldm.modules.attention``), attention via
``torch.nn.functional.scaled_dot_product_attention``.

Concept-erasure hooks live on :class:`CrossAttention` and cost nothing when unused:

* ``kv_delta`` — a callable ``context -> (dk, dv)`` whose outputs are added to ``to_k(context)`` and
  ``to_v(context)``. SepCE's separable increments (ΔW_c = A_c (β S_c), paper Eq. 9–10) are applied through it, so
  the base weights are never modified in place.
* ``attention_hook`` — a callable ``(module, q, k, context)`` called with the per-head queries and keys
  (B, heads, N, d) before attention; Forget-Me-Not captures attention logits through it.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ldm.modules.diffusionmodules.util import checkpoint, zero_module
from ldm.util import default


class GEGLU(nn.Module):
    """Gated GELU projection (Shazeer 2020): x·GELU(gate)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)  # B N dim_out, B N dim_out
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, dim_out: Optional[int] = None, mult: int = 4, glu: bool = False, dropout=0.0):
        super().__init__()
        inner_dim = int(dim * mult)
        dim_out = default(dim_out, dim)
        project_in = GEGLU(dim, inner_dim) if glu else nn.Sequential(nn.Linear(dim, inner_dim), nn.GELU())
        self.net = nn.Sequential(project_in, nn.Dropout(dropout), nn.Linear(inner_dim, dim_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def Normalize(in_channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=in_channels, eps=1e-6, affine=True)


class CrossAttention(nn.Module):
    """Multi-head attention of queries from ``x`` over keys/values from ``context`` (self-attention when
    ``context`` is None). ``to_k``/``to_v`` of the cross-attention layers (``attn2``) are the weights that SepCE
    edits; see the module docstring for the ``kv_delta`` and ``attention_hook`` extension points."""

    def __init__(
        self,
        query_dim: int,
        context_dim: Optional[int] = None,
        heads: int = 8,
        dim_head: int = 64,
        dropout: float = 0.0,
    ):
        super().__init__()
        inner_dim = dim_head * heads
        context_dim = default(context_dim, query_dim)
        self.scale = dim_head**-0.5
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner_dim, bias=False)
        self.to_k = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_v = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner_dim, query_dim), nn.Dropout(dropout))
        self.kv_delta: Optional[Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]] = None
        self.attention_hook: Optional[Callable] = None

    def split_heads(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        return t.view(b, n, self.heads, -1).transpose(1, 2)  # B heads N d

    def forward(
        self, x: torch.Tensor, context: Optional[torch.Tensor] = None, mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        b, n, _ = x.shape
        context = default(context, x)
        q = self.to_q(x)  # B N inner
        k = self.to_k(context)  # B M inner
        v = self.to_v(context)  # B M inner
        if self.kv_delta is not None:
            dk, dv = self.kv_delta(context)
            k, v = k + dk, v + dv
        q, k, v = self.split_heads(q), self.split_heads(k), self.split_heads(v)  # B heads N|M d
        if self.attention_hook is not None:
            self.attention_hook(self, q, k, context)
        attn_mask = None
        if mask is not None:
            attn_mask = mask.reshape(b, 1, 1, -1).bool()  # B 1 1 M
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=self.scale)  # B heads N d
        out = out.transpose(1, 2).reshape(b, n, -1)  # B N inner
        return self.to_out(out)


class BasicTransformerBlock(nn.Module):
    """Self-attention (attn1), cross-attention on the text (attn2), gated feed-forward; pre-LayerNorm."""

    def __init__(
        self,
        dim: int,
        n_heads: int,
        d_head: int,
        dropout: float = 0.0,
        context_dim: Optional[int] = None,
        gated_ff: bool = True,
        checkpoint: bool = True,
    ):
        super().__init__()
        self.attn1 = CrossAttention(query_dim=dim, heads=n_heads, dim_head=d_head, dropout=dropout)
        self.ff = FeedForward(dim, dropout=dropout, glu=gated_ff)
        self.attn2 = CrossAttention(
            query_dim=dim, context_dim=context_dim, heads=n_heads, dim_head=d_head, dropout=dropout
        )
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.checkpoint = checkpoint

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        return checkpoint(self._forward, (x, context), self.checkpoint)

    def _forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = self.attn1(self.norm1(x)) + x  # B N dim
        x = self.attn2(self.norm2(x), context=context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    """Transformer over the pixels of a feature map: norm, 1×1 conv in, ``depth`` blocks, 1×1 conv out, residual."""

    def __init__(
        self,
        in_channels: int,
        n_heads: int,
        d_head: int,
        depth: int = 1,
        dropout: float = 0.0,
        context_dim: Optional[int] = None,
    ):
        super().__init__()
        self.in_channels = in_channels
        inner_dim = n_heads * d_head
        self.norm = Normalize(in_channels)
        self.proj_in = nn.Conv2d(in_channels, inner_dim, kernel_size=1, stride=1, padding=0)
        self.transformer_blocks = nn.ModuleList(
            [
                BasicTransformerBlock(inner_dim, n_heads, d_head, dropout=dropout, context_dim=context_dim)
                for _ in range(depth)
            ]
        )
        self.proj_out = zero_module(nn.Conv2d(inner_dim, in_channels, kernel_size=1, stride=1, padding=0))

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        b, c, h, w = x.shape
        x_in = x
        x = self.proj_in(self.norm(x))  # B inner H W
        x = x.flatten(2).transpose(1, 2)  # B HW inner
        for block in self.transformer_blocks:
            x = block(x, context=context)
        x = x.transpose(1, 2).reshape(b, -1, h, w)  # B inner H W
        return self.proj_out(x) + x_in
