"""The concept-world model (sepce/world/model.py, train-scripts/train-world-model.py, assets/world/)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from conftest import REPO, assert_one_line_error, run_script
from omegaconf import OmegaConf

import sepce.world.model as model_module
from sepce.world import STYLES, build_prompt
from sepce.world.model import (
    SHIPPED_CKPT,
    SHIPPED_CONFIG,
    WORLD_CONFIG,
    WorldTrainer,
    WorldTrainSettings,
    config_with_scale,
    export_model,
    latent_scale,
    load_world_model,
    lr_at,
    null_space_sizes,
    posterior_sample,
    sample_images,
    summary,
)

SD_CONFIG = REPO / "configs" / "stable-diffusion" / "v1-inference.yaml"


def targets(path: Path) -> dict:
    """Every ``target:`` string of a CompVis config, keyed by its position (``model.params.unet_config``...)."""
    found = {}

    def walk(node, where):
        if isinstance(node, dict):
            if "target" in node:
                found[where] = node["target"]
            for k, v in node.items():
                walk(v, f"{where}.{k}")

    walk(OmegaConf.to_container(OmegaConf.load(path)), "")
    return found


def tiny_config(tmp_path: Path) -> Path:
    """The world config shrunk for fast tests (same classes, f=4 autoencoder, context width 32)."""
    cfg = OmegaConf.load(WORLD_CONFIG)
    unet = cfg.model.params.unet_config.params
    unet.model_channels, unet.channel_mult, unet.attention_resolutions, unet.context_dim = 32, [1, 2], [1], 32
    text = cfg.model.params.cond_stage_config.params.text_config
    text.hidden_size, text.intermediate_size, text.num_hidden_layers = 32, 64, 1
    path = tmp_path / "tiny-world.yaml"
    path.write_text("# tiny world\n" + OmegaConf.to_yaml(cfg))
    return path


TINY_SETTINGS = dict(pool_images=32, vae_steps=3, vae_batch_size=2, steps=4, batch_size=2, warmup=1, checkpoint_every=2)


def test_config_uses_the_sd_v1_classes():
    sd = targets(SD_CONFIG)
    # the same classes at the same config paths; only SD's LR scheduler entry is absent (the world trainer has its
    # own schedule, sepce.world.model.lr_at)
    for path in (WORLD_CONFIG, SHIPPED_CONFIG):
        world = targets(path)
        assert world.items() <= sd.items(), world
        assert set(sd) - set(world) == {".model.params.scheduler_config"}
    shipped = OmegaConf.load(SHIPPED_CONFIG).model.params
    assert shipped.cond_stage_config.params.max_length == 16
    assert shipped.unet_config.params.context_dim == shipped.cond_stage_config.params.text_config.hidden_size
    assert len(shipped.first_stage_config.params.ddconfig.ch_mult) == 3  # f = 4


def test_shipped_model_loads_as_float32_and_is_small():
    assert SHIPPED_CKPT.stat().st_size < 40e6
    raw = torch.load(SHIPPED_CKPT, map_location="cpu", weights_only=True)["state_dict"]
    assert {v.dtype for v in raw.values() if v.is_floating_point()} == {torch.float16}
    model = load_world_model()
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model.num_downs == 2 and model.channels == 4
    context = model.get_learned_conditioning(["a star in the style of dots"])
    assert context.shape == (1, 16, 128)
    assert abs(model.scale_factor - OmegaConf.load(SHIPPED_CONFIG).model.params.scale_factor) < 1e-12


def test_sepce_null_spaces_are_comfortably_large():
    """SepCE's basis for a concept is the null space of "" and two other concepts' token embeddings."""
    model = load_world_model()
    prompts = [build_prompt(s, None) for s in STYLES[:3]]
    sizes = null_space_sizes(model, prompts)
    assert all(n >= 64 for n in sizes.values()), sizes
    stack = torch.cat([model.get_learned_conditioning([p])[0] for p in ["", *prompts[1:]]]).double()
    assert sizes[prompts[0]] == 128 - torch.linalg.matrix_rank(stack).item()


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    values = [lr_at(i, 100, 10, 0.1) for i in range(100)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(values[10:], values[11:]))
    assert values[-1] == pytest.approx(0.1, abs=1e-3)


def test_config_with_scale_replaces_only_the_scale(tmp_path):
    text = config_with_scale(WORLD_CONFIG, 0.123456789)
    original = WORLD_CONFIG.read_text().splitlines()
    changed = [(a, b) for a, b in zip(original, text.splitlines()) if a != b]
    assert len(changed) == 1 and re.fullmatch(r"\s*scale_factor: 0\.123457", changed[0][1])
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  target: x\n")
    with pytest.raises(ValueError, match="scale_factor"):
        config_with_scale(bad, 1.0)


def test_latent_scale_gives_unit_variance():
    gen = torch.Generator().manual_seed(0)
    moments = torch.cat([3.0 * torch.randn(64, 4, 8, 8, generator=gen), torch.full((64, 4, 8, 8), -8.0)], 1)
    scale = latent_scale(moments, torch.Generator().manual_seed(1))
    z = scale * posterior_sample(moments, torch.Generator().manual_seed(2))
    assert z.std().item() == pytest.approx(1.0, rel=0.02)


def test_training_resumes_exactly_and_exports_a_loadable_checkpoint(tmp_path):
    config = tiny_config(tmp_path)
    settings = WorldTrainSettings(**TINY_SETTINGS)
    straight = WorldTrainer(tmp_path / "straight", settings, config, progress=False)
    assert straight.run()
    first = WorldTrainer(tmp_path / "resumed", settings, config, progress=False)
    first.should_stop = lambda: first.state.phase == "unet" and first.state.step == 2  # "Ctrl-C" after step 2
    assert not first.run()
    second = WorldTrainer(tmp_path / "resumed", settings, config, progress=False)
    assert (second.state.phase, second.state.step) == ("unet", 2)
    assert second.run()
    for a, b in ((straight.state.vae, second.state.vae), (straight.state.unet, second.state.unet)):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["loss"] for r in straight.state.history] == [r["loss"] for r in second.state.history]
    assert (tmp_path / "resumed" / "losses.csv").read_text().count("\n") == 1 + 3 + 4

    ckpt, cfg = export_model(second.model, config, tmp_path / "export", global_step=7)
    loaded = load_world_model(ckpt, cfg)
    assert loaded.scale_factor == pytest.approx(second.model.scale_factor, rel=1e-5)
    for name, p in loaded.model.named_parameters():
        assert torch.allclose(p, dict(second.model.model.named_parameters())[name], rtol=1e-3, atol=1e-3)
    images = sample_images(loaded, ["a star in the style of dots"] * 2, [0, 1], steps=2)
    assert images.shape == (2, 64, 64, 3) and images.dtype.name == "uint8"
    assert not (images[0] == images[1]).all()
    assert math.isfinite(second.state.elapsed_s) and second.state.cpu_s > 0


def test_continuing_a_finished_run_keeps_its_autoencoder_and_counts_its_time(tmp_path):
    config = tiny_config(tmp_path)
    first = WorldTrainer(tmp_path / "first", WorldTrainSettings(**TINY_SETTINGS), config, progress=False)
    assert first.run()
    more = WorldTrainSettings(**{**TINY_SETTINGS, "steps": 2, "seed": 1, "init_from": str(tmp_path / "first")})
    second = WorldTrainer(tmp_path / "second", more, config, progress=False)
    assert second.state.phase == "unet" and second.state.init["path"] == str(tmp_path / "first")
    # the frozen text encoder the first stage drew (seed 0) is kept, whatever the new stage's seed
    first_text, second_text = first.model.cond_stage_model.state_dict(), second.model.cond_stage_model.state_dict()
    assert all(torch.equal(first_text[k], second_text[k]) for k in first_text)
    start = {k: v.clone() for k, v in second.state.unet.items()}
    assert second.run()
    assert all(torch.equal(second.state.vae[k], first.state.vae[k]) for k in first.state.vae)
    assert any(not torch.equal(second.state.unet[k], start[k]) for k in start)
    assert [r["phase"] for r in second.state.history] == ["unet", "unet"]
    assert second.state.init["wall_time_s"] == pytest.approx(first.state.elapsed_s)
    with pytest.raises(FileNotFoundError, match="init_from"):
        WorldTrainSettings(init_from=str(tmp_path / "nowhere")).validate()


def test_script_refuses_bad_input_and_changed_settings(tmp_path):
    bad = run_script("train-scripts/train-world-model.py", "--vae_crop", "30", "--output_dir", tmp_path, check=False)
    assert_one_line_error(bad, "--vae_crop 30")
    config = tiny_config(tmp_path)
    args = ["--config_path", config, "--output_dir", tmp_path / "run", "--no_progress", "--grid_steps", "2"]
    args += [f"--{k}={v}" for k, v in TINY_SETTINGS.items()] + ["--threads", "1"]
    done = run_script("train-scripts/train-world-model.py", *args)
    assert "trained in" in done.stdout
    assert {"model.ckpt", "config.yaml", "samples.png", "losses.csv", "summary.json", "state.pt"} <= {
        p.name for p in (tmp_path / "run").iterdir()
    }
    changed = run_script("train-scripts/train-world-model.py", *args, "--lr", "1e-3", check=False)
    assert changed.returncode != 0 and "other settings" in changed.stderr and "lr" in changed.stderr


def test_style_weights_and_finish_at_and_exported_init(tmp_path):
    """--style_weights draws weak styles more often; --finish_at ends the UNet phase early (schedule unchanged);
    --init_from also takes an exported model folder (model.ckpt + config.yaml, like assets/world)."""
    assert WorldTrainSettings(style_weights="checker=3, waves=1.5").style_weight_map() == {"checker": 3.0, "waves": 1.5}
    for bad in ("chequer=3", "checker=0", "checker", "checker=x"):
        with pytest.raises(ValueError, match="--style_weights"):
            WorldTrainSettings(style_weights=bad).validate()
    config = tiny_config(tmp_path)
    weighted = WorldTrainSettings(**{**TINY_SETTINGS, "steps": 6, "style_weights": "checker=1000"})
    cut = WorldTrainer(tmp_path / "cut", weighted, config, progress=False, finish_at=3)
    drawn = []
    original_prompt = model_module.sample_prompt
    model_module.sample_prompt = lambda style, obj, rng: drawn.append(style) or original_prompt(style, obj, rng)
    try:
        assert cut.run()
    finally:
        model_module.sample_prompt = original_prompt
    assert [r["phase"] for r in cut.state.history].count("unet") == 3 and cut.state.phase == "done"
    present = set(STYLES[k] for k in cut.pool.style.tolist())
    if "checker" in present:  # a 32-image pool holds every style with overwhelming probability
        assert drawn.count("checker") >= len(drawn) - 1
    assert summary(cut)["unet_steps_run"] == 3 and summary(cut)["finished_at"] == 3
    ckpt, cfg = export_model(cut.model, config, tmp_path / "export", global_step=3)
    more = WorldTrainSettings(**{**TINY_SETTINGS, "steps": 1, "init_from": str(tmp_path / "export")})
    again = WorldTrainer(tmp_path / "again", more, config, progress=False)
    assert again.state.phase == "unet" and again.state.scale_factor == pytest.approx(cut.model.scale_factor, rel=1e-5)
    exported_text = load_world_model(ckpt, cfg).cond_stage_model.state_dict()
    assert all(torch.allclose(exported_text[k], v) for k, v in again.model.cond_stage_model.state_dict().items())
    assert again.run()
