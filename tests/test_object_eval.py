"""Object erasure's evaluation (sepce/evaluation/imagenet.py, folder_accuracy.py, eval-scripts/classify-images.py):
the Imagenette CSV, and the ImageNet ResNet-50 judge on a random ResNet-50 state dict (no download)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import torchvision
from conftest import REPO, one_line_error

from sepce.classes import load_class_map
from sepce.cli import run as run_cli
from sepce.stats import wilson

IMAGENETTE = REPO / "data" / "imagenette"
TENCH, CHAIN_SAW = 0, 491


def run(module, *argv):
    return run_cli(module.parse_args, module.main, [str(a) for a in argv], prog=Path(module.__file__).name)


def biased_resnet50(path: Path, winner: int) -> Path:
    """A random ResNet-50 state dict whose top-1 is always ImageNet class ``winner`` (zero FC weights, a one-hot
    bias), so every prediction is known in advance."""
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None)
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.zero_()
        model.fc.bias[winner] = 1.0
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def chain_saw_net(tmp_path_factory) -> Path:
    return biased_resnet50(tmp_path_factory.mktemp("resnet") / "resnet50-random.pth", CHAIN_SAW)


def test_imagenette_csv_is_made_by_the_script_with_stated_seeds():
    """data/imagenette/evaluate.csv is what data/make_evaluate_csv.py gives for the stated arguments, and the class
    map names each class's ImageNet category as torchvision lists it."""
    spec = importlib.util.spec_from_file_location("make_evaluate_csv", REPO / "data" / "make_evaluate_csv.py")
    make = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make)
    classes = load_class_map(IMAGENETTE / "classes.csv")
    text = make.render_csv(make.build_rows(classes, 50, 2024, 100000, "Image of {prompt}"))
    assert (IMAGENETTE / "evaluate.csv").read_text() == text
    assert [c.name for c in classes][:2] == ["cassette player", "chain saw"] and len(classes) == 10
    from sepce.evaluation.imagenet import imagenet_indices

    categories = torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"]
    indices = imagenet_indices(IMAGENETTE / "classes.csv", classes)
    assert [categories[i] for i in indices] == [c.name for c in classes]


def test_classify_images_on_generated_images(tmp_path, tiny_ckpt, chain_saw_net, load_script, capsys):
    """End to end on the tiny model: draw two Imagenette classes, judge with the ResNet-50, read the table."""
    csv_path = tmp_path / "evaluate.csv"
    lines = (IMAGENETTE / "evaluate.csv").read_text().splitlines()
    keep = [lines[0]] + [line for line in lines[1:] if line.split(",")[-1] in ("1", "4")][::25]  # 2 + 2 rows
    csv_path.write_text("\n".join(keep) + "\n")
    generate = load_script("eval-scripts/generate-images.py")
    run(
        generate,
        *("--model_name", "SD-v1-4", "--prompts_path", csv_path, "--save_path", tmp_path / "eval"),
        *("--num_samples", 1, "--ckpt_path", tiny_ckpt, "--config_path", tiny_ckpt.parent / "config.yaml"),
        *("--image_size", 64, "--ddim_steps", 2, "--device", "cpu", "--quiet"),
    )
    folder = tmp_path / "eval" / "SD-v1-4"
    script = load_script("eval-scripts/classify-images.py")
    flags = [
        str(a)
        for a in (
            *("--classifier_kind", "imagenet", "--classifier", chain_saw_net, "--classes", IMAGENETTE / "classes.csv"),
            *("--prompts_path", csv_path, "--path", folder, "--device", "cpu"),
        )
    ]
    results = script.main(script.parse_args(flags))
    rows = {r["name"]: r for r in results[folder]}
    assert rows["chain saw"]["correct"] == rows["chain saw"]["images"] == 2  # every top-1 is ImageNet 491
    assert rows["tench"]["correct"] == 0 and rows["tench"]["images"] == 2
    expected = wilson(2, 2)
    assert rows["chain saw"]["ci_low_pct"] == pytest.approx(100 * expected.low)
    assert rows["overall"]["accuracy_pct"] == 50.0
    stored = json.loads((folder / "results" / "accuracy.json").read_text())
    info = stored["classifier"]
    assert info["kind"] == "imagenet" and info["version"] == f"torchvision {torchvision.__version__}"
    assert info["name"].startswith("torchvision ResNet-50") and len(info["sha256"]) == 64
    assert "chain saw = ImageNet 491" in info["classes"]
    assert sorted(v[1] for v in stored["predictions"].values()) == [1, 1, 1, 1]  # tench images predicted chain saw

    # the table reads it like style accuracy, with the Wilson interval
    from sepce.evaluation.results import read_counts

    assert read_counts(folder)["chain saw"] == (2, 2)

    # unchanged inputs reuse; another net's results are not replaced silently
    other = biased_resnet50(tmp_path / "tench.pth", TENCH)
    swapped = [str(other) if a == str(chain_saw_net) else a for a in flags]
    with one_line_error(capsys, "--overwrite"):
        run(script, *swapped)
    again = script.main(script.parse_args([*swapped, "--overwrite"]))
    assert {r["name"]: r["correct"] for r in again[folder]}["tench"] == 2


def test_bad_object_input_fails_in_one_line(tmp_path, monkeypatch, load_script, capsys):
    """Missing weights (an empty torch hub cache) and a class map without ImageNet indices fail before any
    network loads."""
    script = load_script("eval-scripts/classify-images.py")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-cache"))
    (tmp_path / "m").mkdir()
    monkeypatch.setattr(torchvision.models, "resnet50", lambda *a, **k: pytest.fail("a network was loaded"))
    base = ["--classes", IMAGENETTE / "classes.csv", "--prompts_path", IMAGENETTE / "evaluate.csv"]
    with one_line_error(capsys, "ResNet-50 ImageNet weights not found", "resnet50-0676ba61.pth"):
        run(script, "--classifier_kind", "imagenet", *base, "--path", tmp_path / "m")
    with one_line_error(capsys, "--classifier", "missing.pth", "does not exist"):
        run(
            script, "--classifier_kind", "imagenet", "--classifier", tmp_path / "missing.pth", *base, "--path", tmp_path
        )
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"not loaded")
    artists = ["--classes", REPO / "data" / "classes.csv", "--prompts_path", REPO / "data" / "evaluate.csv"]
    with one_line_error(capsys, "lacks the column 'imagenet_index'"):
        run(script, "--classifier_kind", "imagenet", "--classifier", weights, *artists, "--path", tmp_path / "m")
