"""Conditioning encoders named by SD v1 configs (CompVis ``ldm.modules.encoders.modules``)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn as nn

from ldm.modules.encoders.clip import CLIPTextConfig, CLIPTextTransformer, CLIPTokenizer

#: Hub ids whose text tower is CLIP ViT-L/14 — served by the built-in config and tokenizer, with no network.
BUILTIN_VIT_L14 = ("openai/clip-vit-large-patch14", "clip-vit-large-patch14", "ViT-L/14")


class AbstractEncoder(nn.Module):
    def encode(self, *args, **kwargs):
        raise NotImplementedError


def resolve_text_encoder(
    version: Optional[str], max_length: int = 77, text_config: Optional[dict] = None
) -> tuple[CLIPTextConfig, CLIPTokenizer, Optional[Path]]:
    """Architecture, tokenizer and (optional) weight file for ``version``.

    ``version`` is one of: None or a ViT-L/14 hub id (built-in, offline); a local folder holding a CLIP text
    ``config.json`` and optionally ``vocab.json``/``merges.txt`` and ``model.safetensors``; or another hub id, fetched
    through ``huggingface_hub`` (its cache is used, ``HF_HUB_OFFLINE=1`` is honoured). ``text_config`` overrides the
    architecture. Weights normally come from the SD checkpoint, not from here.
    """
    if text_config is not None:
        return CLIPTextConfig.from_dict(dict(text_config)), CLIPTokenizer.from_open_clip(max_length), None
    if version is None or version in BUILTIN_VIT_L14:
        return CLIPTextConfig(), CLIPTokenizer.from_open_clip(max_length), None
    folder = Path(os.path.expanduser(version))
    if not folder.is_dir():
        folder = _hub_snapshot(version)
    cfg_file = folder / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"text encoder folder {folder} has no config.json (expected a CLIP text config)")
    raw = json.loads(cfg_file.read_text())
    cfg = CLIPTextConfig.from_dict(raw.get("text_config", raw))
    if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        tokenizer = CLIPTokenizer.from_folder(folder, max_length)
    else:
        tokenizer = CLIPTokenizer.from_open_clip(max_length)
    weights = next((folder / n for n in ("model.safetensors", "pytorch_model.bin") if (folder / n).is_file()), None)
    return cfg, tokenizer, weights


def _hub_snapshot(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, allow_patterns=["config.json", "vocab.json", "merges.txt"]))
    except Exception as e:  # noqa: BLE001 - any hub failure becomes one clear message
        raise FileNotFoundError(
            f"text encoder {repo_id!r} is neither a local folder nor a reachable hub id ({type(e).__name__}); "
            f"use a folder with config.json, or {BUILTIN_VIT_L14[0]!r} for the built-in CLIP ViT-L/14"
        ) from None


class FrozenCLIPEmbedder(AbstractEncoder):
    """CLIP text encoder for SD v1 (Rombach et al. 2022 §3.3): prompt → last hidden state (B, 77, 768).

    Zero network: the ViT-L/14 architecture and tokenizer are built in; weights come from the SD checkpoint
    (``cond_stage_model.transformer.*``). ``device`` is accepted for CompVis compatibility; tokens follow the
    module's own device.
    """

    def __init__(
        self,
        version: Optional[str] = BUILTIN_VIT_L14[0],
        device: Optional[str] = None,
        max_length: int = 77,
        text_config: Optional[dict] = None,
    ):
        super().__init__()
        cfg, self.tokenizer, weights = resolve_text_encoder(version, max_length, text_config)
        self.transformer = CLIPTextTransformer(cfg)
        self.max_length = max_length
        if weights is not None:
            self.transformer.load_state_dict(_load_text_weights(weights), strict=True)
        self.freeze()

    def freeze(self) -> None:
        self.transformer.eval()
        for p in self.parameters():
            p.requires_grad = False

    def train(self, mode: bool = True) -> FrozenCLIPEmbedder:
        """The text encoder stays in eval mode (it has no dropout, but CompVis freezes it the same way)."""
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return self.transformer.embeddings.token_embedding.weight.device

    def forward(self, text: str | Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(text).to(self.device)  # B 77
        return self.transformer(tokens)  # B 77 D

    def encode(self, text: str | Sequence[str]) -> torch.Tensor:
        return self(text)


def _load_text_weights(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(path))
    else:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    sd = {k.removeprefix("text_model."): v for k, v in sd.items()}
    return {k: v for k, v in sd.items() if not k.startswith(("text_projection", "embeddings.position_ids"))}
