"""Encoder/Decoder of the KL autoencoder (CompVis ``ldm.modules.diffusionmodules.model``)."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


def nonlinearity(x: torch.Tensor) -> torch.Tensor:
    return F.silu(x)


def Normalize(in_channels: int, num_groups: int = 32) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=num_groups, num_channels=in_channels, eps=1e-6, affine=True)


class Upsample(nn.Module):
    def __init__(self, in_channels: int, with_conv: bool):
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if self.with_conv else x


class Downsample(nn.Module):
    """Asymmetric (right/bottom) zero padding then a stride-2 3×3 convolution, or 2×2 average pooling."""

    def __init__(self, in_channels: int, with_conv: bool):
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.with_conv:
            return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0))
        return F.avg_pool2d(x, kernel_size=2, stride=2)


class ResnetBlock(nn.Module):
    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: Optional[int] = None,
        conv_shortcut: bool = False,
        dropout: float,
        temb_channels: int = 512,
    ):
        super().__init__()
        self.in_channels = in_channels
        out_channels = in_channels if out_channels is None else out_channels
        self.out_channels = out_channels
        self.use_conv_shortcut = conv_shortcut
        self.norm1 = Normalize(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        if temb_channels > 0:
            self.temb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = Normalize(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1)
        if in_channels != out_channels:
            if conv_shortcut:
                self.conv_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
            else:
                self.nin_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=1, padding=0)

    def forward(self, x: torch.Tensor, temb: Optional[torch.Tensor]) -> torch.Tensor:
        h = self.conv1(nonlinearity(self.norm1(x)))
        if temb is not None:
            h = h + self.temb_proj(nonlinearity(temb))[:, :, None, None]
        h = self.conv2(self.dropout(nonlinearity(self.norm2(h))))
        if self.in_channels != self.out_channels:
            x = self.conv_shortcut(x) if self.use_conv_shortcut else self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over pixels with 1×1 convolution projections."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.in_channels = in_channels
        self.norm = Normalize(in_channels)
        self.q = nn.Conv2d(in_channels, in_channels, kernel_size=1)
        self.k = nn.Conv2d(in_channels, in_channels, kernel_size=1)
        self.v = nn.Conv2d(in_channels, in_channels, kernel_size=1)
        self.proj_out = nn.Conv2d(in_channels, in_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        h_ = self.norm(x)
        q, k, v = (t.reshape(b, 1, c, h * w).transpose(2, 3) for t in (self.q(h_), self.k(h_), self.v(h_)))
        out = F.scaled_dot_product_attention(q, k, v)  # B 1 HW C
        out = out.transpose(2, 3).reshape(b, c, h, w)
        return x + self.proj_out(out)


def make_attn(in_channels: int, attn_type: str = "vanilla") -> nn.Module:
    if attn_type == "vanilla":
        return AttnBlock(in_channels)
    if attn_type == "none":
        return nn.Identity()
    raise ValueError(f"attn_type {attn_type!r} is not supported; expected 'vanilla' or 'none'")


class MidBlock(nn.Module):
    """The middle of the encoder and the decoder: ResNet block, attention, ResNet block (no timestep embedding)."""

    def __init__(self, channels: int, attn_type: str, dropout: float):
        super().__init__()
        self.block_1 = ResnetBlock(in_channels=channels, out_channels=channels, temb_channels=0, dropout=dropout)
        self.attn_1 = make_attn(channels, attn_type)
        self.block_2 = ResnetBlock(in_channels=channels, out_channels=channels, temb_channels=0, dropout=dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(h, None)), None)


class _Coder(nn.Module):
    """What :class:`Encoder` and :class:`Decoder` share: both are built from the first stage's whole ``ddconfig``
    (CompVis passes every key to both; each ignores the other's), keep the same resolution bookkeeping and have
    the same middle block (:class:`MidBlock`)."""

    def __init__(
        self,
        *,
        ch: int,
        out_ch: int,
        ch_mult: Sequence[int] = (1, 2, 4, 8),
        num_res_blocks: int,
        attn_resolutions: Sequence[int],
        dropout: float = 0.0,
        resamp_with_conv: bool = True,
        in_channels: int,
        resolution: int,
        z_channels: int,
        use_linear_attn: bool = False,
        attn_type: str = "vanilla",
        **ignore_kwargs,
    ):
        super().__init__()
        self.ch = ch
        self.out_ch = out_ch
        self.ch_mult = tuple(ch_mult)
        self.temb_ch = 0
        self.num_resolutions = len(ch_mult)
        self.num_res_blocks = num_res_blocks
        self.attn_resolutions = attn_resolutions
        self.dropout = dropout
        self.resamp_with_conv = resamp_with_conv
        self.resolution = resolution
        self.in_channels = in_channels
        self.z_channels = z_channels
        self.attn_type = "linear" if use_linear_attn else attn_type

    def res_blocks(self, block_in: int, block_out: int, count: int, curr_res: int) -> tuple[nn.Module, int]:
        """One resolution level: ``count`` ResNet blocks ``block_in`` → ``block_out`` channels, each followed by
        attention at the ``attn_resolutions``; returns the level (``block``, ``attn``) and its output channels."""
        level = nn.Module()
        level.block, level.attn = nn.ModuleList(), nn.ModuleList()
        for _ in range(count):
            level.block.append(
                ResnetBlock(
                    in_channels=block_in, out_channels=block_out, temb_channels=self.temb_ch, dropout=self.dropout
                )
            )
            block_in = block_out
            if curr_res in self.attn_resolutions:
                level.attn.append(make_attn(block_in, self.attn_type))
        return level, block_in


class Encoder(_Coder):
    """Image (B, in_channels, H, W) → moments (B, 2·z_channels, H/f, W/f), f = 2^(len(ch_mult)-1)."""

    def __init__(self, *, double_z: bool = True, **ddconfig):
        super().__init__(**ddconfig)
        ch = self.ch
        self.conv_in = nn.Conv2d(self.in_channels, ch, kernel_size=3, stride=1, padding=1)
        curr_res = self.resolution
        in_ch_mult = (1,) + self.ch_mult
        self.down = nn.ModuleList()
        block_in = ch
        for i_level in range(self.num_resolutions):
            down, block_in = self.res_blocks(
                ch * in_ch_mult[i_level], ch * self.ch_mult[i_level], self.num_res_blocks, curr_res
            )
            if i_level != self.num_resolutions - 1:
                down.downsample = Downsample(block_in, self.resamp_with_conv)
                curr_res = curr_res // 2
            self.down.append(down)
        self.mid = MidBlock(block_in, self.attn_type, self.dropout)
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(
            block_in, 2 * self.z_channels if double_z else self.z_channels, kernel_size=3, stride=1, padding=1
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for i_level, down in enumerate(self.down):
            for i_block in range(self.num_res_blocks):
                h = down.block[i_block](h, None)
                if len(down.attn) > 0:
                    h = down.attn[i_block](h)
            if i_level != self.num_resolutions - 1:
                h = down.downsample(h)
        h = self.mid(h)
        return self.conv_out(nonlinearity(self.norm_out(h)))


class Decoder(_Coder):
    """Latent (B, z_channels, h, w) → image (B, out_ch, h·f, w·f)."""

    def __init__(self, *, give_pre_end: bool = False, tanh_out: bool = False, **ddconfig):
        super().__init__(**ddconfig)
        self.give_pre_end = give_pre_end
        self.tanh_out = tanh_out
        block_in = self.ch * self.ch_mult[self.num_resolutions - 1]
        curr_res = self.resolution // 2 ** (self.num_resolutions - 1)
        self.z_shape = (1, self.z_channels, curr_res, curr_res)
        self.conv_in = nn.Conv2d(self.z_channels, block_in, kernel_size=3, stride=1, padding=1)
        self.mid = MidBlock(block_in, self.attn_type, self.dropout)
        self.up = nn.ModuleList()
        for i_level in reversed(range(self.num_resolutions)):
            up, block_in = self.res_blocks(block_in, self.ch * self.ch_mult[i_level], self.num_res_blocks + 1, curr_res)
            if i_level != 0:
                up.upsample = Upsample(block_in, self.resamp_with_conv)
                curr_res = curr_res * 2
            self.up.insert(0, up)
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, self.out_ch, kernel_size=3, stride=1, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        h = self.mid(h)
        for i_level in reversed(range(self.num_resolutions)):
            up = self.up[i_level]
            for i_block in range(self.num_res_blocks + 1):
                h = up.block[i_block](h, None)
                if len(up.attn) > 0:
                    h = up.attn[i_block](h)
            if i_level != 0:
                h = up.upsample(h)
        if self.give_pre_end:
            return h
        h = self.conv_out(nonlinearity(self.norm_out(h)))
        return torch.tanh(h) if self.tanh_out else h
