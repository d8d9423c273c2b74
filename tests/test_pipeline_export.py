"""Pipeline export (convertModels.py --pipeline): diffusers' StableDiffusionPipeline loads the folder offline and,
from the same initial latents with DDIM and guidance, draws the image our sampler draws — for tiny CompVis configs
that differ in transformer depth, heads (num_heads / num_head_channels, legacy), levels, res-blocks, attention
resolutions, context width and scale-shift norm; and for an erased run and a SepCE subset."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import yaml
from ldm.checkpoint import load_model_from_config
from ldm.models.diffusion.sampling import cfg, ddim_sample

from sepce.records import ErasureRecord, apply_record, base_info, save_record
from sepce.tiny import TINY_CONFIG, write_tiny_checkpoint

STEPS, GUIDANCE, PROMPT = 4, 7.5, "a painting of Van Gogh, café at night"
TEMPLATE = yaml.safe_load(TINY_CONFIG.read_text())


def _variant(unet: dict, text_width: int = 32, text_heads: int = 2) -> dict:
    raw = copy.deepcopy(TEMPLATE)
    raw["model"]["params"]["unet_config"]["params"].update(unet, context_dim=text_width)
    raw["model"]["params"]["cond_stage_config"]["params"]["text_config"].update(
        hidden_size=text_width, intermediate_size=2 * text_width, num_attention_heads=text_heads
    )
    return raw


VARIANTS = {
    "template": _variant({}),
    "depth2-head-channels": _variant(
        {"transformer_depth": 2, "num_heads": -1, "num_head_channels": 8, "attention_resolutions": [2]}
    ),
    "three-levels-scale-shift": _variant(
        {
            "channel_mult": [1, 2, 2],
            "attention_resolutions": [1, 4],
            "num_heads": 4,
            "num_res_blocks": 2,
            "use_scale_shift_norm": True,
        }
    ),
    "legacy-heads-wide-context": _variant(
        {
            "channel_mult": [1, 1, 2],
            "attention_resolutions": [4],
            "num_heads": -1,
            "num_head_channels": 16,
            "legacy": True,
            "transformer_depth": 3,
        },
        text_width=48,
        text_heads=3,
    ),
}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def converter(load_script):
    script = load_script("train-scripts/convertModels.py")
    return lambda *argv: script.main(script.parse_args([str(a) for a in argv]))


def _checkpoint(folder: Path, raw: dict) -> Path:
    config = folder / "source.yaml"
    config.write_text(yaml.safe_dump(raw))
    return write_tiny_checkpoint(folder / "tiny", config)


def _ours(model, latents: torch.Tensor) -> torch.Tensor:
    """Our DDIM (CompVis arithmetic) + decode, as [0, 1] float pixels."""
    with torch.no_grad():
        cond = model.get_learned_conditioning([PROMPT])
        guided = cfg(lambda x, t, c: model.apply_model(x, t, c), model.get_learned_conditioning([""]), GUIDANCE)
        z = ddim_sample(guided, latents.clone(), cond, model.alphas_cumprod, STEPS)
        return ((model.decode_first_stage(z) + 1) / 2).clamp(0, 1)


def _theirs(folder: Path, latents: torch.Tensor) -> torch.Tensor:
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)
    assert pipe.safety_checker is None and pipe.feature_extractor is None
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)  # CompVis DDIM: leading + offset 1, no clip
    pipe.set_progress_bar_config(disable=True)
    size = latents.shape[-1] * pipe.vae_scale_factor
    out = pipe(
        PROMPT,
        num_inference_steps=STEPS,
        guidance_scale=GUIDANCE,
        latents=latents.clone(),
        height=size,
        width=size,
        output_type="pt",
    )
    return out.images


@pytest.mark.parametrize("name", list(VARIANTS))
def test_diffusers_pipeline_draws_our_image(name, tmp_path, converter):
    ckpt = _checkpoint(tmp_path, VARIANTS[name])
    folder = tmp_path / "pipeline"
    converter("--ckpt_path", ckpt, "--config_path", ckpt.parent / "config.yaml", "--output_path", folder, "--pipeline")
    unet_cfg = json.loads((folder / "unet" / "config.json").read_text())
    depth = VARIANTS[name]["model"]["params"]["unet_config"]["params"].get("transformer_depth", 1)
    assert unet_cfg["transformer_layers_per_block"] == depth
    model = load_model_from_config(ckpt.parent / "config.yaml", ckpt)
    latents = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(1))
    ours, theirs = _ours(model, latents), _theirs(folder, latents)
    assert ours.shape == theirs.shape == (1, 3, 64, 64)
    assert (ours - theirs).abs().max() < 1e-3
    assert ours.std() > 0.01  # a real image, not a constant that would match anything


def test_exported_tokenizer_and_scheduler_are_sd_v14s(tmp_path, converter):
    from transformers import CLIPTokenizer

    ckpt = _checkpoint(tmp_path, VARIANTS["template"])
    folder = tmp_path / "pipeline"
    converter("--ckpt_path", ckpt, "--config_path", ckpt.parent / "config.yaml", "--output_path", folder, "--pipeline")
    theirs = CLIPTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
    ours = load_model_from_config(ckpt.parent / "config.yaml", ckpt).cond_stage_model.tokenizer
    long = "an oil painting, " * 40
    for text in ("a photo of a cat", "Van Gogh", "", "Crème brûlée — 3 cats!?", long):
        ids = theirs(text, padding="max_length", max_length=77, truncation=True).input_ids
        assert ids == ours(text)[0].tolist(), text
    scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert {k: scheduler[k] for k in ("_class_name", "beta_schedule", "num_train_timesteps")} == {
        "_class_name": "PNDMScheduler",
        "beta_schedule": "scaled_linear",
        "num_train_timesteps": 1000,
    }
    assert (scheduler["beta_start"], scheduler["beta_end"]) == (0.00085, 0.012)
    assert scheduler["skip_prk_steps"] and scheduler["steps_offset"] == 1 and not scheduler["set_alpha_to_one"]
    assert json.loads((folder / "model_index.json").read_text())["requires_safety_checker"] is False
    again = pytest.raises(FileExistsError, match="already exists")
    with again:
        converter(
            "--ckpt_path", ckpt, "--config_path", ckpt.parent / "config.yaml", "--output_path", folder, "--pipeline"
        )


def test_sepce_subset_pipeline_draws_the_erased_image(tmp_path, converter):
    ckpt = _checkpoint(tmp_path, VARIANTS["template"])
    config = ckpt.parent / "config.yaml"
    model = load_model_from_config(config, ckpt)
    params = dict(model.named_parameters())
    layers = [k for k in params if k.endswith(("attn2.to_k.weight", "attn2.to_v.weight"))]
    gen = torch.Generator().manual_seed(2)
    record = ErasureRecord(
        method="SepCE",
        concepts=["Van Gogh", "Picasso"],
        base=base_info(ckpt, config),
        bases={c: torch.randn(2, 32, generator=gen) for c in ("Van Gogh", "Picasso")},
        coefs={
            c: {k: torch.randn(params[k].shape[0], 2, generator=gen) for k in layers} for c in ("Van Gogh", "Picasso")
        },
        beta=3.0,
    )
    run = tmp_path / "SepCE-VanGogh+Picasso"
    save_record(run / "erasure.safetensors", record)
    folder = tmp_path / "pipeline"
    converter(
        "--ckpt_path", ckpt, "--config_path", config, "--output_path", folder, "--pipeline", "--record", run,
        "--erase", "vangogh",
    )  # fmt: skip
    apply_record(model, record, erase=["Van Gogh"])
    latents = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(4))
    ours, theirs = _ours(model, latents), _theirs(folder, latents)
    assert (ours - theirs).abs().max() < 1e-3
    original = load_model_from_config(config, ckpt)
    assert (_ours(original, latents) - theirs).abs().max() > 1e-2  # the erasure changed the image
