"""Evaluation: sorting, classifier, LPIPS, FID and the results table (fast, CPU, random-init networks).

Scripts are loaded with conftest's ``load_script`` and run in-process through :func:`sepce.cli.run` (what their
``__main__`` does), so the one-line ``error:`` messages are tested as users see them.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from conftest import assert_one_line_error
from PIL import Image

from sepce.classes import load_class_map
from sepce.cli import run as run_cli
from sepce.evaluation.artist_classifier import build_resnet18, load_classifier, predict, split_per_class, triangular_lr
from sepce.evaluation.fid import (
    feature_statistics,
    fid_from_features,
    fid_per_class,
    frechet_distance,
    inception_extractor,
)
from sepce.evaluation.images import pair_images
from sepce.evaluation.lpips_metric import build_lpips
from sepce.evaluation.results import read_metric, write_metric
from sepce.evaluation.weights import MissingWeightsError

COLORS = [(210, 40, 40), (40, 200, 60), (40, 60, 210)]
NAMES = ["Red", "Green", "blank"]


MOVE = "train-scripts/move_image.py"
TRAIN = "train-scripts/artist-cls-train.py"
TEST = "train-scripts/artist-cls-test.py"
LPIPS_EVAL = "eval-scripts/lpips_eval.py"
TABLE = "eval-scripts/make-table.py"


@pytest.fixture
def run(load_script):
    """``run(script, *argv)``: the script in-process, as its ``__main__`` runs it; returns what ``main`` returns."""

    def run_script(script: str, *argv):
        module = load_script(script)
        return run_cli(module.parse_args, module.main, [str(a) for a in argv], prog=Path(script).name)

    return run_script


@pytest.fixture
def error_of(run):
    """``error_of(script, *argv)``: the ONE ``<script>: error: ...`` line the run ends with (exit status 1)."""

    def error(script: str, *argv) -> str:
        stderr = io.StringIO()
        with pytest.raises(SystemExit) as info, contextlib.redirect_stderr(stderr):
            run(script, *argv)
        return assert_one_line_error((info.value.code, stderr.getvalue()))

    return error


def image(class_index: int, noise: float, rng: np.random.Generator, size=(40, 48)) -> Image.Image:
    pixels = np.array(COLORS[class_index], float)[None, None, :] + rng.normal(0, noise, (*size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


@pytest.fixture
def world(tmp_path, monkeypatch):
    """A 3-class map, a prompt CSV (2 cases per class), class-folder training data and flat generated images."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # empty cache: nothing pretrained
    (tmp_path / "classes.csv").write_text("index,name,prompt\n0,Red,red\n1,Green,green\n2,blank,\n")
    lines = ["case_number,prompt,evaluation_seed,class"]
    lines += [f"{2 * c + j},{['red', 'green', ''][c]},{j},{c}" for c in range(3) for j in range(2)]
    (tmp_path / "prompts.csv").write_text("\n".join(lines) + "\n")
    rng = np.random.default_rng(0)
    for c in range(3):
        folder = tmp_path / "data" / "train" / str(c)
        folder.mkdir(parents=True)
        for j in range(5):
            image(c, 15, rng).save(folder / f"{j}.png")
    for model, noise in (("default", 10), ("eval", 60)):
        folder = tmp_path / "evaluation_folder" / model
        folder.mkdir(parents=True)
        for case in range(6):
            for k in range(2):
                image(case // 2, noise, rng).save(folder / f"{case}_{k}.png")
    return tmp_path


def files(folder: Path) -> list:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


# ------------------------------------------------------------------------------------------------ sorting


def test_move_image_sorts_by_class_and_is_idempotent(world, caplog, run):
    stray = world / "evaluation_folder" / "eval"
    Image.new("RGB", (8, 8)).save(stray / "99_0.png")
    Image.new("RGB", (8, 8)).save(stray / "grid.png")
    (world / "evaluation_folder" / "table").mkdir()  # e.g. make-table.py output: not a model folder
    Image.new("RGB", (8, 8)).save(world / "evaluation_folder" / "table" / "table.png")
    with caplog.at_level(logging.WARNING):
        reports = run(MOVE, "--prompts_path", "prompts.csv", "--classes", "classes.csv")
    assert [(r.folder.name, r.moved) for r in reports] == [("default", 12), ("eval", 12)]
    for model in ("default", "eval"):
        expected = [f"{c}/{case}_{k}.png" for c in range(3) for case in (2 * c, 2 * c + 1) for k in range(2)]
        extra = ["99_0.png", "grid.png"] if model == "eval" else []
        assert files(world / "evaluation_folder" / model) == sorted(expected + extra)
    assert "left 1 image in place, its case number is not in the prompt CSV ('99_0.png')" in caplog.text
    assert "left 1 image in place, not named <case_number>_<k>.png ('grid.png')" in caplog.text

    before = files(world / "evaluation_folder")
    again = run(MOVE, "--prompts_path", "prompts.csv", "--classes", "classes.csv")
    assert [(r.moved, r.already_sorted) for r in again] == [(0, 12), (0, 12)]
    assert files(world / "evaluation_folder") == before


def test_move_image_conflicts_and_bad_input(world, caplog, run, error_of):
    folder = world / "evaluation_folder" / "default"
    (folder / "0").mkdir()
    shutil.copy(folder / "0_0.png", folder / "0" / "0_0.png")
    with caplog.at_level(logging.WARNING):
        report = run(MOVE, "--path", folder, "--prompts_path", "prompts.csv", "--classes", "classes.csv")[0]
    assert report.conflicts == ["0_0.png"] and (folder / "0_0.png").exists()
    assert "already in its class folder (pass --overwrite to replace)" in caplog.text
    run(MOVE, "--path", folder, "--prompts_path", "prompts.csv", "--classes", "classes.csv", "--overwrite")
    assert not (folder / "0_0.png").exists()

    (world / "noclass.csv").write_text("case_number,prompt,evaluation_seed\n0,red,1\n")
    message = error_of(MOVE, "--prompts_path", "noclass.csv", "--classes", "classes.csv")
    assert message.startswith("move_image.py: error: prompt CSV noclass.csv lacks column(s) ['class']")
    message = error_of(MOVE, "--folders", "nope", "--prompts_path", "prompts.csv", "--classes", "classes.csv")
    assert "do not exist under evaluation_folder" in message


def test_pairs_are_the_same_flat_or_sorted(world, run):
    case_to_class = {2 * c + j: c for c in range(3) for j in range(2)}
    original, edited = world / "evaluation_folder" / "default", world / "evaluation_folder" / "eval"
    flat = pair_images(original, edited, case_to_class)
    run(MOVE, "--folders", "eval", "--prompts_path", "prompts.csv", "--classes", "classes.csv")
    mixed = pair_images(original, edited, case_to_class)
    names = lambda report: {c: [(a.name, b.name) for a, b in p] for c, p in report.pairs.items()}  # noqa: E731
    assert names(flat) == names(mixed) and flat.num_pairs == 12
    assert all(a.name == b.name for pairs in mixed.pairs.values() for a, b in pairs)
    assert {c: {a.name for a, _ in p} for c, p in mixed.pairs.items()} == {
        c: {f"{case}_{k}.png" for case in (2 * c, 2 * c + 1) for k in range(2)} for c in range(3)
    }


# --------------------------------------------------------------------------------------------- classifier


def test_triangular_lr_is_one_cycle():
    total = 100
    lrs = [triangular_lr(step, total, 0.01) for step in range(total)]
    assert all(0 < lr <= 0.01 for lr in lrs)
    assert lrs == pytest.approx(lrs[::-1])  # symmetric: up then down
    assert np.argmax(lrs) in (49, 50) and max(lrs) == pytest.approx(0.01, rel=0.02)
    assert lrs[0] < 2e-4 and all(np.diff(lrs[:50]) > 0)


def test_split_per_class_is_stratified_and_reproducible():
    items = [(Path(f"{c}/{i}.png"), c) for c in range(3) for i in range(10)] + [(Path("3/0.png"), 3)]
    train, held_out = split_per_class(items, 0.7, seed=1)
    assert sorted(train + held_out) == sorted(items) and not set(train) & set(held_out)
    assert [sum(lab == c for _, lab in train) for c in range(3)] == [7, 7, 7]
    assert split_per_class(items, 0.7, seed=1) == (train, held_out)
    assert split_per_class(items, 0.7, seed=2) != (train, held_out)


def test_classifier_train_and_test_end_to_end(world, capsys, run, error_of):
    capsys.readouterr()
    run(
        TRAIN, "--classes", "classes.csv", "--no_pretrained", "--epochs", "2", "--image_size", "32",
        "--batch_size", "4", "--device", "cpu", "--quiet",
    )  # fmt: skip
    assert "epochs" not in capsys.readouterr().err  # --quiet: no progress bars
    checkpoint = world / "models" / "artist-classifier" / "resnet18.pt"
    history = list(csv.DictReader((checkpoint.parent / "resnet18.history.csv").open()))
    assert [int(h["epoch"]) for h in history] == [1, 2]
    model, info = load_classifier(checkpoint, load_class_map(world / "classes.csv"))
    assert info["image_size"] == 32 and info["train_images"] == 12 and info["eval_images"] == 3
    assert info["best_eval_accuracy_pct"] == pytest.approx(max(float(h["eval_accuracy_pct"]) for h in history))
    message = error_of(TRAIN, "--classes", "classes.csv", "--no_pretrained", "--device", "cpu")
    assert "already exists; pass --overwrite" in message

    message = error_of(TEST, "--classes", "classes.csv", "--device", "cpu")
    assert "not sorted into class folders; run train-scripts/move_image.py first" in message
    run(MOVE, "--prompts_path", "prompts.csv", "--classes", "classes.csv")
    shutil.rmtree(world / "evaluation_folder" / "eval" / "2")  # a missing class folder: counted, left empty
    results = run(TEST, "--path", "./evaluation_folder/", "--classes", "classes.csv", "--device", "cpu")
    assert sorted(p.name for p in results) == ["default", "eval"]
    for folder in ("default", "eval"):
        path = world / "evaluation_folder" / folder
        rows = list(csv.DictReader((path / "results" / "accuracy.csv").open()))
        assert [r["name"] for r in rows] == NAMES + ["overall"]
        classes = load_class_map(world / "classes.csv")
        # independent check: classify each class folder again and count
        correct = []
        for c in range(3):
            images = sorted((path / str(c)).glob("*.png")) if (path / str(c)).is_dir() else []
            hits = int((predict(model, images, 32, 8, torch.device("cpu")) == c).sum()) if images else 0
            correct.append(hits)
            assert int(rows[c]["correct"]) == hits and int(rows[c]["images"]) == len(images)
            if images:
                assert float(rows[c]["accuracy_pct"]) == pytest.approx(100 * hits / len(images), abs=1e-3)
            else:
                assert rows[c]["accuracy_pct"] == ""
        total = sum(int(r["images"]) for r in rows[:3])
        assert float(rows[3]["accuracy_pct"]) == pytest.approx(100 * sum(correct) / total, abs=1e-3)
        assert read_metric(path, "accuracy")["all"] == pytest.approx(100 * sum(correct) / total, abs=1e-3)
        assert len(classes) == 3
    capsys.readouterr()
    run(TEST, "--path", "./evaluation_folder/", "--classes", "classes.csv", "--device", "cpu")
    assert capsys.readouterr().out.count("inputs unchanged, reusing") == 2
    image(0, 5, np.random.default_rng(9)).save(world / "evaluation_folder" / "eval" / "0" / "0_0.png")
    message = error_of(TEST, "--path", "./evaluation_folder/", "--classes", "classes.csv", "--device", "cpu")
    assert "made from other inputs" in message and "--overwrite" in message
    run(TEST, "--path", "./evaluation_folder/", "--classes", "classes.csv", "--device", "cpu", "--overwrite")


def test_classifier_missing_backbone_and_class_folders(world, error_of):
    message = error_of(TRAIN, "--classes", "classes.csv", "--epochs", "1", "--image_size", "32", "--device", "cpu")
    assert "ResNet18 ImageNet weights not found" in message
    assert str(world / "torch-home" / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in message
    assert "--backbone_weights PATH" in message
    assert not (world / "models").exists()
    message = error_of(TRAIN, "--classes", "classes.csv", "--backbone_weights", "nope.pth", "--device", "cpu")
    assert "--backbone_weights nope.pth does not exist" in message

    shutil.rmtree(world / "data" / "train" / "1")
    message = error_of(TRAIN, "--classes", "classes.csv", "--no_pretrained", "--device", "cpu")
    assert message.endswith(
        "data/train lacks class folder(s) [1]; expected folders 0..2 named by the class map's index column"
    )
    shutil.rmtree(world / "data" / "train")
    assert "neither data/train nor data/eval exists" in error_of(TRAIN, "--classes", "classes.csv", "--device", "cpu")


def test_backbone_weights_come_from_torchvision_cache(world):
    reference = torchvision.models.resnet18(weights=None)
    cache = world / "torch-home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(reference.state_dict(), cache / "resnet18-f37072fd.pth")
    model = build_resnet18(3)
    assert torch.equal(model.conv1.weight, reference.conv1.weight)
    assert torch.equal(model.layer4[1].bn2.running_var, reference.layer4[1].bn2.running_var)
    assert model.fc.out_features == 3


# ---------------------------------------------------------------------------------------------------- LPIPS


def test_lpips_identical_sets_give_zero_and_unpaired_files_are_counted(world, caplog, run):
    original = world / "evaluation_folder" / "default"
    same = world / "evaluation_folder" / "same"
    shutil.copytree(original, same)
    Image.new("RGB", (40, 48)).save(same / "5_7.png")
    with caplog.at_level(logging.WARNING):
        results = run(
            LPIPS_EVAL, "--original_path", original, "--edited_path", same, "--prompts_path", "prompts.csv",
            "--classes", "classes.csv", "--metrics", "lpips", "--no_pretrained", "--device", "cpu",
        )  # fmt: skip
    assert f"skipped 1 image in {same} without a same-named image in {original} ('5_7.png')" in caplog.text
    rows = results["lpips"]
    assert [r["pairs"] for r in rows] == [4, 4, 4, 12]
    assert all(r["lpips"] == pytest.approx(0.0, abs=1e-7) for r in rows)
    assert not (same / "results" / "fid.csv").exists()

    run(MOVE, "--folders", "eval", "--prompts_path", "prompts.csv", "--classes", "classes.csv")  # sorted side
    results = run(
        LPIPS_EVAL, "--original_path", original, "--edited_path", world / "evaluation_folder" / "eval",
        "--prompts_path", "prompts.csv", "--classes", "classes.csv", "--no_pretrained", "--device", "cpu",
        "--fid_size", "75",
    )  # fmt: skip
    assert all(r["lpips"] > 1e-4 for r in results["lpips"])
    assert read_metric(world / "evaluation_folder" / "eval", "lpips")["Red"] == pytest.approx(
        results["lpips"][0]["lpips"], rel=1e-5
    )
    fid_rows = list(csv.DictReader((world / "evaluation_folder" / "eval" / "results" / "fid.csv").open()))
    assert [(r["name"], r["original"], r["edited"]) for r in fid_rows] == [
        ("Red", "4", "4"), ("Green", "4", "4"), ("blank", "4", "4"), ("overall", "12", "12"),
    ]  # fmt: skip
    assert all(float(r["fid"]) > 0 for r in fid_rows)


def test_lpips_eval_bad_input_is_one_line(world, error_of):
    (world / "bad.csv").write_text("case_number,prompt,class\n0,red,0\n")
    message = error_of(LPIPS_EVAL, "--prompts_path", "bad.csv", "--classes", "classes.csv", "--device", "cpu")
    assert "lacks column(s) ['evaluation_seed']" in message
    message = error_of(LPIPS_EVAL, "--prompts_path", "prompts.csv", "--classes", "classes.csv", "--device", "cpu")
    assert "AlexNet ImageNet weights not found" in message and "alexnet-owt-7be5be79.pth" in message
    message = error_of(
        LPIPS_EVAL, "--prompts_path", "prompts.csv", "--classes", "classes.csv", "--device", "cpu",
        "--metrics", "fid",
    )  # fmt: skip
    assert "pytorch-fid FID Inception weights not found" in message and "--fid_weights PATH" in message
    message = error_of(
        LPIPS_EVAL, "--edited_path", "missing", "--prompts_path", "prompts.csv", "--classes", "classes.csv"
    )
    assert "image folder missing does not exist" in message


def test_lpips_trunk_loads_alexnet_weights_offline(world):
    features = torchvision.models.alexnet(weights=None).features
    cache = world / "torch-home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, cache / "alexnet-owt-7be5be79.pth")
    metric = build_lpips(pretrained=True)
    assert torch.equal(metric.net.slice1[0].weight, features[0].weight)
    assert torch.equal(getattr(metric.net.slice5, "10").bias, features[10].bias)
    a, b = torch.rand(2, 3, 64, 64) * 2 - 1, torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(metric(a, b), metric(b, a), atol=1e-6)  # LPIPS is symmetric


# ------------------------------------------------------------------------------------------------------ FID


def test_frechet_distance_identical_and_closed_forms():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8)) @ rng.normal(size=(8, 8))
    assert fid_from_features(x, x) == pytest.approx(0.0, abs=1e-8)
    # 1-D Gaussians: (m1 - m2)^2 + (s1 - s2)^2
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4.0 + 1.0)
    # diagonal covariances: |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2
    a, b = rng.uniform(0.1, 5, 6), rng.uniform(0.1, 5, 6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)
    # commuting covariances (shared eigenvectors): the same closed form in the rotated basis
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    got = frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T)
    assert got == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_matches_scipy_sqrtm_and_is_symmetric():
    from scipy.linalg import sqrtm

    rng = np.random.default_rng(1)
    m1, m2 = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    s1, s2 = m1 @ m1.T + 0.1 * np.eye(5), m2 @ m2.T
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    reference = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * sqrtm(s1 @ s2).real)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(reference, rel=1e-8)
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(reference, rel=1e-8)
    few = rng.normal(size=(4, 16))  # rank-deficient covariance, as with 250 images and 2048 features
    assert math.isfinite(fid_from_features(few, few + 1.0))
    assert fid_from_features(few, few + 1.0) == pytest.approx(16.0, rel=1e-6)  # pure mean shift by 1 in 16 dims
    wide1, wide2 = rng.normal(size=(7, 12)), rng.normal(size=(9, 12)) * 2 + 0.5  # N < D: sample-space route
    stats = frechet_distance(*feature_statistics(wide1), *feature_statistics(wide2))  # D x D route
    assert fid_from_features(wide1, wide2) == pytest.approx(stats, rel=1e-6)  # eigh route: sqrt(eps) round-off
    with pytest.raises(ValueError, match="at least 2 feature vectors"):
        fid_from_features(few[:1], few)


def test_fid_per_class_with_a_pluggable_extractor(world):
    def colour_stats(images: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, 6)
        return torch.cat([images.mean((2, 3)), images.std((2, 3))], 1)

    root = world / "evaluation_folder"
    by_class = lambda model: {
        c: sorted((root / model).glob(f"{2 * c}_*.png")) + sorted((root / model).glob(f"{2 * c + 1}_*.png"))
        for c in range(3)
    }  # noqa: E501, E731
    same = fid_per_class(by_class("default"), by_class("default"), colour_stats, torch.device("cpu"), 32, 5)
    assert all(entry["fid"] == pytest.approx(0.0, abs=1e-9) for entry in same.values())
    assert same[-1]["original"] == 12
    other = fid_per_class(by_class("default"), by_class("eval"), colour_stats, torch.device("cpu"), 32, 5)
    from sepce.evaluation.loading import load_images

    for c in range(3):
        direct = fid_from_features(
            colour_stats(load_images(by_class("default")[c], 32)), colour_stats(load_images(by_class("eval")[c], 32))
        )
        assert other[c]["fid"] == pytest.approx(direct, rel=1e-6) and direct > 0


def test_inception_features_and_missing_weights(world):
    net = inception_extractor(pretrained=False)
    with torch.no_grad():
        assert net(torch.rand(2, 3, 40, 40)).shape == (2, 2048)
    with pytest.raises(MissingWeightsError, match="pt_inception-2015-12-05-6726825d.pth"):
        inception_extractor()
    with pytest.raises(MissingWeightsError, match="--fid_weights nope.pth does not exist"):
        inception_extractor(weights="nope.pth")


# ---------------------------------------------------------------------------------------------------- table


def synthetic_results(root: Path, names, seed: int) -> dict:
    """Random per-class results for ORI (accuracy only) and two erased models; returns the values written."""
    rng = np.random.default_rng(seed)
    written = {}
    for model in ("ori", "cie", "sepce"):
        values = {"accuracy": rng.uniform(0, 100, len(names))}
        if model != "ori":
            values |= {"lpips": rng.uniform(0, 1, len(names)), "fid": rng.uniform(0, 300, len(names))}
        for metric, column in (("accuracy", "accuracy_pct"), ("lpips", "lpips"), ("fid", "fid")):
            if metric in values:
                rows = [{"class": i, "name": n, column: float(values[metric][i])} for i, n in enumerate(names)]
                write_metric(root / model, metric, rows, ["class", "name", column], {"original": str(root / "ori")})
        written[model] = values
    return written


def test_table_layout_averages_and_chart(tmp_path, monkeypatch, caplog, run, error_of):
    monkeypatch.chdir(tmp_path)
    classes = load_class_map()
    names = [c.name for c in classes]
    values = synthetic_results(tmp_path, names, seed=3)
    argv = [
        "--original", "ori", "--model", "CiE=cie", "--erased", "CiE=vangogh",
        "--model", "SepCE=sepce", "--erased", "SepCE=Van Gogh,Picasso", "--restored", "SepCE=Cezanne",
        "--output_dir", "table",
    ]  # fmt: skip
    run(TABLE, *argv)
    rows = {r["model"]: r for r in csv.DictReader((tmp_path / "table" / "table.csv").open())}
    assert list(rows) == ["ORI", "CiE", "SepCE"]
    assert rows["SepCE"]["erased"] == "Van Gogh;Picasso" and rows["SepCE"]["restored"] == "Cezanne"
    roles = {
        "ORI": ([], []),
        "CiE": (["Van Gogh"], []),
        "SepCE": (["Van Gogh", "Picasso"], ["Cezanne"]),
    }
    for model, key in (("ORI", "ori"), ("CiE", "cie"), ("SepCE", "sepce")):
        erased, restored = roles[model]
        groups = {
            "erased": [names.index(n) for n in erased],
            "restored": [names.index(n) for n in restored],
            "regular": [i for i, n in enumerate(names) if n not in erased + restored],
        }
        for metric, label in (("accuracy", "ACC"), ("lpips", "LPIPS"), ("fid", "FID")):
            for i, name in enumerate(names):
                cell = rows[model][f"{name} {label}"]
                if metric in values[key]:
                    assert float(cell) == pytest.approx(values[key][metric][i], rel=1e-5)
                else:
                    assert cell == ""
            for role, indices in groups.items():
                cell = rows[model][f"{role} avg {label}"]
                if indices and metric in values[key]:
                    assert float(cell) == pytest.approx(np.mean(values[key][metric][indices]), rel=1e-5)
                else:
                    assert cell == ""
    markdown = (tmp_path / "table" / "table.md").read_text()
    table_lines = [line for line in markdown.splitlines() if line.startswith("|")]
    assert len(table_lines) == 2 + 3 and table_lines[0].count("|") == 1 + len(names) + 4
    v = values["cie"]
    vg = f"**{v['fid'][0]:.2f} / {v['accuracy'][0]:.1f} / {v['lpips'][0]:.3f}**"
    assert vg in table_lines[3]
    assert f"_{values['sepce']['fid'][2]:.2f} / " in table_lines[4]
    assert f"– / {values['ori']['accuracy'][1]:.1f} / –" in table_lines[2]
    png = (tmp_path / "table" / "table.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000

    spec = {
        "original": {"name": "ORI", "path": "ori"},
        "models": [
            {"name": "CiE", "path": "cie", "erased": ["vangogh"]},
            {"name": "SepCE", "path": "sepce", "erased": ["Van Gogh", "Picasso"], "restored": ["Cezanne"]},
        ],
    }
    (tmp_path / "spec.json").write_text(__import__("json").dumps(spec))
    run(TABLE, "--spec", "spec.json", "--output_dir", "table2")
    assert (tmp_path / "table2" / "table.csv").read_text() == (tmp_path / "table" / "table.csv").read_text()

    run(TABLE, *argv)  # unchanged inputs: nothing to overwrite
    synthetic_results(tmp_path, names, seed=4)
    assert "pass --overwrite" in error_of(TABLE, *argv)
    run(TABLE, *argv, "--overwrite")

    assert "unknown concept 'Monet'" in error_of(TABLE, "--original", "ori", "--model", "A=cie", "--erased", "A=Monet")
    assert "no erased model named 'B'" in error_of(TABLE, "--model", "A=cie", "--erased", "B=Picasso")
    assert "folder nowhere does not exist" in error_of(TABLE, "--model", "A=nowhere")
    (tmp_path / "bare").mkdir()
    with caplog.at_level(logging.WARNING):
        run(TABLE, "--model", "A=bare", "--erased", "A=Picasso", "--output_dir", "table3", "--concepts", "Picasso")
    assert "model 'A' has no bare/results/accuracy.csv" in caplog.text
    assert "| A | **– / – / –** | – / – / – | – / – / – | – / – / – |" in (tmp_path / "table3" / "table.md").read_text()


def test_table_spec_written_is_the_spec_read(tmp_path):
    """sepce.evaluation.table.spec_of (what reproduce.py writes) is the format load_spec (make-table.py) reads:
    paths relative to the spec file, the original without erased/restored lists."""
    from sepce.evaluation.table import ModelSpec, load_spec, spec_of

    spec_path = tmp_path / "table" / "spec.json"
    models = [
        ModelSpec("ORI", tmp_path / "eval" / "default", original=True),
        ModelSpec("SepCE (restore Picasso)", tmp_path / "eval" / "sepce-restore-picasso", ["Van Gogh"], ["Picasso"]),
    ]
    spec = spec_of(models, spec_path)
    assert spec["original"] == {"name": "ORI", "path": "../eval/default"}
    assert spec["models"][0]["path"] == "../eval/sepce-restore-picasso"
    spec_path.parent.mkdir()
    spec_path.write_text(json.dumps(spec))
    loaded, concepts = load_spec(spec_path)
    assert concepts is None
    assert [(m.name, m.path.resolve(), m.erased, m.restored, m.original) for m in loaded] == [
        (m.name, m.path.resolve(), m.erased, m.restored, m.original) for m in models
    ]
