"""Exponential moving average of model weights (CompVis ``ldm.modules.ema.LitEma``).

Shadow weights are buffers named after the parameter with dots removed, as in released checkpoints
(``model_ema.diffusion_modeltime_embed0weight``).
"""

from __future__ import annotations

import torch
import torch.nn as nn


class LitEma(nn.Module):
    def __init__(self, model: nn.Module, decay: float = 0.9999, use_num_upates: bool = True):
        super().__init__()
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.m_name2s_name = {}
        self.register_buffer("decay", torch.tensor(decay, dtype=torch.float32))
        self.register_buffer("num_updates", torch.tensor(0 if use_num_upates else -1, dtype=torch.int))
        for name, p in model.named_parameters():
            if p.requires_grad:
                s_name = name.replace(".", "")
                self.m_name2s_name[name] = s_name
                self.register_buffer(s_name, p.clone().detach().data)
        self.collected_params: list[torch.Tensor] = []

    @torch.no_grad()
    def forward(self, model: nn.Module) -> None:
        decay = float(self.decay)
        if self.num_updates >= 0:
            self.num_updates += 1
            decay = min(decay, (1 + int(self.num_updates)) / (10 + int(self.num_updates)))
        shadow = dict(self.named_buffers())
        for name, p in model.named_parameters():
            if p.requires_grad:
                s = shadow[self.m_name2s_name[name]]
                s.sub_((1.0 - decay) * (s - p.to(s.dtype)))

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Write the EMA weights into ``model``'s parameters."""
        shadow = dict(self.named_buffers())
        for name, p in model.named_parameters():
            if name in self.m_name2s_name:
                p.copy_(shadow[self.m_name2s_name[name]])

    def store(self, parameters) -> None:
        self.collected_params = [p.clone() for p in parameters]

    def restore(self, parameters) -> None:
        for c, p in zip(self.collected_params, parameters):
            p.data.copy_(c.data)
