"""Erased UNets published in diffusers format (ESD's diffusers scripts, UCE, ...: ``diffusers-*.pt`` /
``.safetensors`` state dicts) used against the base checkpoint: generate-images.py --model_name <file> draws what
the run itself draws, and a file of another architecture fails with one line before any model loads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sepce.records import ErasureRecord, base_info, save_record

PROMPTS = "case_number,prompt,evaluation_seed\n0,a painting of Van Gogh,11\n1,a cat,12\n"


@pytest.fixture(scope="module")
def scripts(load_script):
    def call(script: str, *argv):
        module = load_script(script)
        return module.main(module.parse_args([str(a) for a in argv]))

    return call


@pytest.fixture(scope="module")
def erased_run(tiny_ckpt, tiny_model, tmp_path_factory) -> Path:
    """A CiE-style run folder (replaced attn2 to_k/to_v tensors) made on the tiny base."""
    models = tmp_path_factory.mktemp("models")
    params = dict(tiny_model.named_parameters())
    gen = torch.Generator().manual_seed(9)
    changed = {
        k: v.detach() + 0.5 * torch.randn(v.shape, generator=gen)
        for k, v in params.items()
        if k.endswith(("attn2.to_k.weight", "attn2.to_v.weight"))
    }
    record = ErasureRecord("CiE", ["Van Gogh"], base_info(tiny_ckpt, tiny_ckpt.parent / "config.yaml"), changed)
    save_record(models / "CiE-VanGogh" / "erasure.safetensors", record)
    return models / "CiE-VanGogh"


def _images(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.glob("*.png"))}


def test_generate_from_a_diffusers_unet_file_equals_the_run(tiny_ckpt, erased_run, tmp_path, scripts):
    config = tiny_ckpt.parent / "config.yaml"
    exported = {s: tmp_path / f"diffusers-CiE-VanGogh{s}" for s in (".safetensors", ".pt")}
    for path in exported.values():
        scripts(
            "train-scripts/convertModels.py", "--ckpt_path", tiny_ckpt, "--config_path", config, "--record",
            erased_run, "--output_path", path,
        )  # fmt: skip
    prompts = tmp_path / "prompts.csv"
    prompts.write_text(PROMPTS)
    common = [
        "--prompts_path", prompts, "--save_path", tmp_path / "out", "--ckpt_path", tiny_ckpt, "--config_path", config,
        "--image_size", 64, "--sampler", "ddim", "--ddim_steps", 4, "--num_samples", 1, "--device", "cpu", "--quiet",
    ]  # fmt: skip
    file = exported[".safetensors"]
    scripts("eval-scripts/generate-images.py", "--model_name", file, *common)
    scripts("eval-scripts/generate-images.py", "--model_name", erased_run, *common)
    scripts("eval-scripts/generate-images.py", "--model_name", "SD-v1-4", *common)
    from_file, from_run = _images(tmp_path / "out" / file.stem), _images(tmp_path / "out" / erased_run.name)
    original = _images(tmp_path / "out" / "SD-v1-4")
    assert sorted(from_file) == sorted(from_run) == ["0_0.png", "1_0.png"]
    assert all(np.array_equal(from_file[k], from_run[k]) for k in from_file)
    assert any(not np.array_equal(from_file[k], original[k]) for k in from_file)  # the erasure is in the images

    # the .pt file (torch.save of the state dict, as ESD's diffusers script writes) loads the same UNet
    from sepce.modeling import load_resolved, resolve_model

    unets = [
        load_resolved(
            resolve_model(str(exported[s]), tiny_ckpt, config, tmp_path), torch.device("cpu")
        ).model.diffusion_model.state_dict()
        for s in (".safetensors", ".pt")
    ]
    assert all(torch.equal(unets[0][k], unets[1][k]) for k in unets[0])


def test_resolution_names_the_kind_and_refuses_other_architectures(tiny_ckpt, tmp_path):
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file

    from sepce import convert
    from sepce.modeling import resolve_model

    config = tiny_ckpt.parent / "config.yaml"
    dcfg = {k: v for k, v in convert.unet_diffusers_config(config).items() if not k.startswith("_")}
    good = tmp_path / "diffusers-good.safetensors"
    save_file({k: v.contiguous() for k, v in UNet2DConditionModel(**dcfg).state_dict().items()}, str(good))
    resolved = resolve_model(str(good), tiny_ckpt, config, tmp_path)
    assert resolved.kind == "diffusers-unet" and resolved.ckpt_path == tiny_ckpt and resolved.folder_name == good.stem
    assert resolved.describe()["unet_file"] == str(good.resolve())
    with pytest.raises(ValueError, match="needs a SepCE erasure record"):
        resolve_model(str(good), tiny_ckpt, config, tmp_path, erase=["Van Gogh"])

    wide = tmp_path / "diffusers-sd2-like.safetensors"
    other = UNet2DConditionModel(**{**dcfg, "cross_attention_dim": 1024})
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(wide))
    with pytest.raises(ValueError) as info:
        resolve_model(str(wide), tiny_ckpt, config, tmp_path)
    assert str(info.value).startswith(str(wide)) and "SD 2.x UNet" in str(info.value)
    assert "\n" not in str(info.value)
