"""Concept-inversion attack (sepce/attack.py, eval-scripts/attack-inversion.py) on the tiny model: only v* learns,
v* at its init word reproduces the plain prompt exactly, save/load, generation pairing, one-line errors, the
table's ATK column."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, run_script, world_attack_argv, write_images
from PIL import Image

from sepce import attack
from sepce.classes import ConceptClass, load_class_map
from sepce.evaluation.results import read_metric, write_metric
from sepce.evaluation.table import ModelSpec, collect, to_csv, to_markdown
from sepce.generation import ImageSampler, SamplingSettings, case_noise
from sepce.prompt_csv import PromptRow
from sepce.training import ImageFolder

SCRIPT = "eval-scripts/attack-inversion.py"
FAST = attack.AttackPreset(steps=3, batch_size=2, lr=5e-2, seed=0, init_word="art")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> ImageFolder:
    return ImageFolder(write_images(tmp_path_factory.mktemp("data") / "Van Gogh"), 64)


def test_only_v_star_is_trained(tiny_model, images):
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    init = attack.LearnedWord.initial(tiny_model, "art")
    result = attack.train_word(tiny_model, images, attack.TEMPLATES["sd"], FAST)
    assert result.ok and result.iterations == 3 and len(result.word.losses) == 3
    after = tiny_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "a model tensor changed"
    assert not any(p.requires_grad for p in tiny_model.parameters())
    width = tiny_model.cond_stage_model.transformer.config.hidden_size
    assert result.word.vector.shape == init.vector.shape == (width,)
    assert not torch.equal(result.word.vector, init.vector)
    assert result.word.meta["preset"] == FAST.to_dict() and result.word.meta["loss"]["steps"] == 3


def test_v_star_at_init_is_the_plain_prompt(tiny_model):
    word = attack.LearnedWord.initial(tiny_model, "art")
    prompts = ["a painting by <v*>", "<v*>", "", "<v*> and <v*>, art"]
    plain = ["a painting by art", "art", "", "art and art, art"]
    with torch.no_grad():
        assert torch.equal(word.conditioning(tiny_model, prompts), tiny_model.get_learned_conditioning(plain))
        moved = attack.LearnedWord(
            word.vector + torch.randn(word.vector.shape, generator=torch.Generator().manual_seed(0)), "art"
        )
        a = moved.conditioning(tiny_model, ["a painting by <v*>"])
        b = tiny_model.get_learned_conditioning(["a painting by art"])
    # causal text attention: tokens before the slot (start, a, painting, by) do not see v*, the slot does
    assert torch.equal(a[:, :4], b[:, :4]) and not torch.allclose(a[:, 4], b[:, 4])


def test_loss_decreases_on_a_fixed_batch(tiny_model, images):
    torch.manual_seed(0)
    latents = attack.TrainingLatents(tiny_model, images)
    gen, dev = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    z = torch.cat([latents.draw(gen, dev) for _ in range(4)])
    t = torch.tensor([100, 300, 500, 700])
    noise = torch.randn(z.shape, generator=dev)
    word = attack.LearnedWord.initial(tiny_model, "art")
    vector = word.vector.clone().requires_grad_(True)
    learning = attack.LearnedWord(vector, "art")
    optimizer = torch.optim.Adam([vector], lr=2e-2)
    losses = []
    for _ in range(8):
        optimizer.zero_grad()
        cond = learning.conditioning(tiny_model, ["a painting by <v*>"] * 4)
        loss, _ = tiny_model.p_losses(z, cond, t, noise=noise)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] and all(b <= a + 1e-7 for a, b in zip(losses, losses[1:])), losses


def test_training_latents_encode_each_image_once(tiny_model, images, monkeypatch):
    latents = attack.TrainingLatents(tiny_model, images)
    calls = []
    original = tiny_model.encode_first_stage
    monkeypatch.setattr(tiny_model, "encode_first_stage", lambda x: calls.append(1) or original(x))
    gen, dev = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    draws = [latents.draw(gen, dev) for _ in range(20)]
    assert len(calls) == len(images) and draws[0].shape == (1, 4, 8, 8)
    assert not torch.equal(draws[0], draws[1])  # fresh posterior samples


def test_save_load_round_trip(tmp_path, tiny_model, images):
    result = attack.train_word(tiny_model, images, attack.TEMPLATES["sd"], FAST)
    path = attack.save_word(tmp_path / "e.safetensors", result.word)
    back = attack.load_word(path)
    assert torch.equal(back.vector, result.word.vector) and back.init_word == "art"
    assert back.losses == pytest.approx(result.word.losses) and back.meta == json.loads(json.dumps(result.word.meta))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        attack.load_word(tmp_path / "missing.safetensors")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(3)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a learned attack embedding"):
        attack.load_word(tmp_path / "other.safetensors")
    wide = attack.LearnedWord(torch.zeros(7), "art")
    with pytest.raises(ValueError, match="learned on another text encoder"):
        wide.conditioning(tiny_model, ["<v*>"])


def test_generation_at_init_equals_the_plain_prompt(tiny_model, images):
    settings = SamplingSettings("ddim", 4, 7.5, 64)
    cpu = torch.device("cpu")
    plain = ImageSampler(tiny_model, settings, cpu)
    noise = case_noise(1234, 2, plain.latent_shape)
    word = attack.LearnedWord.initial(tiny_model, "art")
    ours = attack.AttackSampler(tiny_model, settings, cpu, torch.float32, word)
    expected = plain(["a painting by art"] * 2, noise)
    assert np.array_equal(ours(["a painting by <v*>"] * 2, noise), expected)
    moved = attack.AttackSampler(tiny_model, settings, cpu, torch.float32, attack.LearnedWord(word.vector * 5, "art"))
    assert not np.array_equal(moved(["a painting by <v*>"] * 2, noise), expected)


def test_prompts_rows_and_domains():
    vg = ConceptClass(0, "Van Gogh", "Van Gogh")
    waves = ConceptClass(3, "waves", "in the style of waves")
    assert attack.replace_words("a painting by van  gogh", "Van Gogh") == "a painting by <v*>"
    assert attack.concept_words(waves) == "waves" and attack.concept_words(vg) == "Van Gogh"
    rows = [
        PromptRow(0, "in the style of waves", 5, 3, line=2),
        PromptRow(1, "in the style of dots", 6, 1, line=3),
        PromptRow(2, "a star in the style of waves", 7, 3, line=4),
    ]
    out = attack.attack_rows(rows, waves)
    assert [(r.case_number, r.prompt, r.evaluation_seed) for r in out] == [
        (0, "in the style of <v*>", 5),
        (2, "a star in the style of <v*>", 7),
    ]
    assert attack.domain_of(waves) == "world" and attack.domain_of(vg) == "sd"
    with pytest.raises(ValueError, match="no row of class 0"):
        attack.attack_rows(rows, vg)
    with pytest.raises(ValueError, match="line 3: prompt 'in the style of dots' does not contain"):
        attack.attack_rows([PromptRow(9, "in the style of dots", 1, 3, line=3)], waves)
    with pytest.raises(ValueError, match="empty prompt"):
        attack.attack_rows(rows, ConceptClass(9, "blank", ""))


def test_one_line_errors(tiny_model, tmp_path):
    tokenizer = tiny_model.cond_stage_model.tokenizer
    cases = [
        (ValueError, r"--init_word 'Van Gogh' is 2 CLIP tokens", attack.word_token, tokenizer, "Van Gogh"),
        (ValueError, "must stand as a separate word", attack.slot_prompts, tokenizer, ["paintings<v*>"], "art"),
        (ValueError, "falls beyond", attack.slot_prompts, tokenizer, ["word " * 80 + "<v*>"], "art"),
        (ValueError, "--attack_steps 0", replace(FAST, steps=0).validate),
        (ValueError, "--attack_lr nan", replace(FAST, lr=float("nan")).validate),
        (ValueError, "--attack_seed -1", replace(FAST, seed=-1).validate),
        (ValueError, "--init_word ''", replace(FAST, init_word="").validate),
        (FileNotFoundError, "image folder .* does not exist", ImageFolder, tmp_path / "nowhere", 64),
        (ValueError, "needs the placeholder", attack.train_word, tiny_model, None, ["a painting by art"], FAST),
    ]
    for error, pattern, fn, *args in cases:
        with pytest.raises(error, match=pattern) as caught:
            fn(*args)
        assert "\n" not in str(caught.value)


# ------------------------------------------------------------------------------------------------ the table
def test_table_shows_attack_column_only_when_present(tmp_path):
    classes = load_class_map()
    names = [c.name for c in classes]

    def write(folder: Path, metric: str, values: list) -> None:
        column = "accuracy_pct"
        rows = [{"class": i, "name": n, column: v} for i, (n, v) in enumerate(zip(names, values))]
        write_metric(folder, metric, rows, ["class", "name", column], {})

    write(tmp_path / "ori", "accuracy", [90.0] * len(names))
    write(tmp_path / "cie", "accuracy", [10.0] + [80.0] * (len(names) - 1))
    models = [ModelSpec("ORI", tmp_path / "ori", original=True), ModelSpec("CiE", tmp_path / "cie", ["Van Gogh"])]
    plain = collect(models, classes)
    assert plain.metrics == ["fid", "accuracy", "lpips"] and "ATK" not in to_markdown(plain) + to_csv(plain)

    write(tmp_path / "cie", "attack", [60.0] + [float("nan")] * (len(names) - 1))
    write(tmp_path / "ori", "attack", [95.0] + [float("nan")] * (len(names) - 1))
    assert read_metric(tmp_path / "cie", "attack")["Van Gogh"] == 60.0
    table = collect(models, classes)
    assert table.metrics == ["fid", "accuracy", "lpips", "attack"]
    markdown = to_markdown(table)
    assert "FID / ACC / LPIPS / ATK" in markdown and "**– / 10.0 / – / 60.0**" in markdown
    rows = {r["model"]: r for r in csv.DictReader(to_csv(table).splitlines())}
    assert float(rows["CiE"]["Van Gogh ATK"]) == 60.0 and float(rows["ORI"]["Van Gogh ATK"]) == 95.0
    assert float(rows["CiE"]["erased avg ATK"]) == 60.0 and rows["CiE"]["Picasso ATK"] == ""


# ------------------------------------------------------------------------------------------------ the script
@pytest.fixture
def inputs(tmp_path, tiny_ckpt):
    """A tiny model, training images, an evaluation CSV (two Van Gogh rows, one Picasso row), a random ResNet18
    classifier of the class map; returns the script's common flags."""
    import torchvision

    from sepce.evaluation.artist_classifier import classifier_checkpoint

    write_images(tmp_path / "data" / "Van Gogh", n=2)
    write_images(tmp_path / "data" / "Picasso", n=2, seed=1)
    (tmp_path / "eval.csv").write_text(
        "case_number,prompt,evaluation_seed,class\n0,Van Gogh,11,0\n1,Picasso,12,1\n2,a painting by Van Gogh,13,0\n"
    )
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None, num_classes=10)
    torch.save(classifier_checkpoint(net, load_class_map(), 64), tmp_path / "cls.pt")
    config = str(tiny_ckpt.parent / "config.yaml")
    return tmp_path, [
        "--model_name", "original", "--ckpt_path", str(tiny_ckpt), "--config_path", config,
        "--prompt", "van gogh", "--data_dir", str(tmp_path / "data"), "--prompts_path", str(tmp_path / "eval.csv"),
        "--save_path", str(tmp_path / "out"), "--output_name", "ori", "--num_samples", "1", "--sampler", "ddim",
        "--ddim_steps", "4", "--image_size", "64", "--batch_size", "2", "--device", "cpu", "--attack_steps", "2",
        "--attack_batch_size", "2", "--quiet",
    ]  # fmt: skip


def test_script_learns_generates_classifies_and_resumes(inputs, load_script):
    root, flags = inputs
    script = load_script(SCRIPT)
    summary = script.main(script.parse_args([*flags, "--classifier", str(root / "cls.pt")]))
    folder = root / "out" / "ori" / "attack"
    assert summary["trained"] and summary["written"] == 2
    assert sorted(p.name for p in folder.glob("*.png")) == ["0_0.png", "2_0.png"]  # the concept's rows only
    with Image.open(folder / "2_0.png") as im:
        assert im.text["prompt"] == "a painting by <v*>" and im.text["seed"] == "13"
    word = attack.load_word(folder / "embedding-VanGogh.safetensors")
    assert word.meta["preset"]["steps"] == 2 and word.meta["identity"]["domain"] == "sd" and len(word.losses) == 2
    assert len(word.meta["base_sha256"]) == 64 and word.meta["model_name"] == "original"
    stored = json.loads((root / "out" / "ori" / "results" / "attack.json").read_text())
    assert set(stored["predictions"]) == {"0_0.png", "2_0.png"} and stored["preset"]["steps"] == 2
    assert summary["accuracy"]["images"] == 2 and summary["accuracy"]["name"] == "Van Gogh"
    assert read_metric(root / "out" / "ori", "attack")["Van Gogh"] == summary["accuracy"]["accuracy_pct"]

    mtimes = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    again = script.main(script.parse_args([*flags, "--classifier", str(root / "cls.pt")]))
    assert not again["trained"] and again["skipped"] == 2 and "written" not in again
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == mtimes

    changed = script.parse_args([*flags, "--attack_steps", "3"])
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        script.main(changed)
    redone = script.main(script.parse_args([*flags, "--attack_steps", "3", "--overwrite"]))
    assert redone["trained"] and redone["written"] == 2
    assert attack.load_word(folder / "embedding-VanGogh.safetensors").meta["preset"]["steps"] == 3

    # a second concept on the same model: its own word, its rows' images, one result over both
    picasso = [*flags, "--attack_steps", "3", "--prompt", "Picasso", "--classifier", str(root / "cls.pt")]
    other = script.main(script.parse_args(picasso))
    assert other["trained"] and other["written"] == 1 and other["accuracy"]["images"] == 1
    assert sorted(p.name for p in folder.glob("embedding-*.safetensors")) == [
        "embedding-Picasso.safetensors",
        "embedding-VanGogh.safetensors",
    ]
    stored = json.loads((root / "out" / "ori" / "results" / "attack.json").read_text())
    assert {n: label for n, (label, _) in stored["predictions"].items()} == {"0_0.png": 0, "1_0.png": 1, "2_0.png": 0}
    assert stored["preset"]["steps"] == 3 and set(stored["embeddings"]) == {
        p.name for p in folder.glob("embedding-*.safetensors")
    }
    counts = {r["name"]: r["images"] for r in csv.DictReader((root / "out" / "ori" / "results" / "attack.csv").open())}
    assert counts["Van Gogh"] == "2" and counts["Picasso"] == "1" and counts["overall"] == "3"

    # images whose word is gone, or results of another classifier, are not replaced without --overwrite
    (folder / "embedding-Picasso.safetensors").unlink()
    with pytest.raises(FileExistsError, match="holds attack images of 'Picasso'"):
        script.main(script.parse_args(picasso))
    torch.save(torch.load(root / "cls.pt") | {"note": "retrained"}, root / "cls2.pt")
    with pytest.raises(FileExistsError, match="another classifier"):
        script.main(script.parse_args([*flags, "--attack_steps", "3", "--classifier", str(root / "cls2.pt")]))


def test_script_checks_inputs_before_loading(inputs, load_script, monkeypatch):
    root, flags = inputs
    script = load_script(SCRIPT)

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before the inputs were checked")

    monkeypatch.setattr(attack, "load_resolved", no_loading)

    def flag(name: str, value: str) -> list:
        out = list(flags)
        out[out.index(name) + 1] = value
        return out

    (root / "noclass.csv").write_text("case_number,prompt,evaluation_seed\n0,Van Gogh,1\n")
    (root / "nowords.csv").write_text("case_number,prompt,evaluation_seed,class\n0,a starry night,1,0\n")
    cases = [
        (flag("--data_dir", str(root / "nowhere")), FileNotFoundError, "image folder .*Van Gogh does not exist"),
        (flag("--prompt", "Monet"), ValueError, "--prompt: unknown concept 'Monet'"),
        (flag("--prompts_path", str(root / "noclass.csv")), ValueError, r"lacks column\(s\) \['class'\]"),
        (flag("--prompts_path", str(root / "nowords.csv")), ValueError, "line 2: prompt 'a starry night' does not"),
        (flag("--prompt", "blank"), ValueError, "empty prompt"),
        ([*flags, "--init_word", "Van Gogh"], ValueError, "is 2 CLIP tokens"),
        ([*flags, "--attack_lr", "-1"], ValueError, "--attack_lr -1.0"),
        ([*flags, "--classifier", str(root / "none.pt")], FileNotFoundError, "--classifier .* does not exist"),
        (flag("--model_name", "CiE-Nothing"), ValueError, "unknown model 'CiE-Nothing'"),
    ]
    for argv, error, pattern in cases:
        with pytest.raises(error, match=pattern):
            script.main(script.parse_args(argv))
    assert not (root / "out").exists()
    proc = run_script(SCRIPT, *flag("--prompt", "Monet"), check=False)
    assert_one_line_error(proc, "unknown concept 'Monet'")


def test_script_world_classifier_and_templates(tmp_path, tiny_ckpt, load_script):
    """The world domain (templates, preset) and the world classifier (64 px style head) on the tiny model."""
    script = load_script(SCRIPT)
    argv = world_attack_argv(tmp_path, tiny_ckpt, "--attack_steps", "1")
    summary = script.main(script.parse_args(argv))
    stored = json.loads((tmp_path / "out" / "original" / "results" / "attack.json").read_text())
    word = stored["embeddings"]["embedding-waves.safetensors"]
    assert stored["classifier"]["kind"] == "world" and word["domain"] == "world" and word["concept"] == "waves"
    assert word["templates"] == list(attack.TEMPLATES["world"]) and stored["preset"]["lr"] == attack.PRESETS["world"].lr
    assert sorted(stored["predictions"]) == ["0_0.png", "0_1.png"] and summary["accuracy"]["images"] == 2
    assert all(label == 3 and 0 <= pred < 8 for label, pred in stored["predictions"].values())
