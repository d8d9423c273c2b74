"""Paper-comparable FID: the toolkit's FID against the ``pytorch-fid`` package itself (no downloads).

The same random, seeded FID Inception weights are written to the torch hub cache, where pytorch-fid's own
``InceptionV3`` finds them (so it loads them instead of downloading), and passed to the toolkit with
``--fid_weights``. Same files → same tensors → same statistics → same per-class FID.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import pytorch_fid.inception as pytorch_fid_inception
import torch
import torchvision
from PIL import Image
from pytorch_fid.fid_score import ImagePathDataset, calculate_activation_statistics
from pytorch_fid.inception import InceptionV3
from torchvision import transforms

from sepce import cli
from sepce.classes import load_class_map
from sepce.evaluation.compare import CompareSettings, compare_folders
from sepce.evaluation.fid import (
    FID_INCEPTION_NETWORK,
    FID_WORLD_CLASSIFIER_NETWORK,
    feature_statistics,
    fid_from_features,
    frechet_distance,
    image_batches,
    inception_extractor,
    load_stored_image,
    random_fid_inception_state,
)
from sepce.evaluation.weights import FID_INCEPTION, MissingWeightsError, cache_path, resolve_weights

CPU = torch.device("cpu")
NAMES = ["Warm", "Cool"]


@pytest.fixture
def no_download(tmp_path, monkeypatch):
    """An empty torch hub cache under ``tmp_path`` and a torch.hub that fails on any download attempt."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))

    def refuse(url, *args, **kwargs):
        raise AssertionError(f"attempted download of {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    return tmp_path


def picture(rng: np.random.Generator, hue: int, noise: float, size=(72, 56)) -> Image.Image:
    """A smooth colour gradient with a random blob and noise: images of one class differ, classes differ more."""
    h, w = size[1], size[0]
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    cy, cx = rng.uniform(0.2, 0.8, 2)
    blob = np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / 0.02)[..., None]
    base = np.stack([x, y, 1 - x], -1)[..., np.roll(np.arange(3), hue)] * 200 + blob * rng.uniform(20, 80, 3)
    return Image.fromarray(np.clip(base + rng.normal(0, noise, base.shape), 0, 255).astype(np.uint8))


def write_evaluation(root: Path, cases_per_class: int = 2, samples: int = 2) -> None:
    """A 2-class map, a prompt CSV and same-named images of an original and an edited model."""
    (root / "classes.csv").write_text("index,name,prompt\n0,Warm,warm\n1,Cool,cool\n")
    lines = ["case_number,prompt,evaluation_seed,class"]
    lines += [f"{cases_per_class * c + j},{NAMES[c].lower()},{j},{c}" for c in range(2) for j in range(cases_per_class)]
    (root / "prompts.csv").write_text("\n".join(lines) + "\n")
    rng = np.random.default_rng(0)
    for model, noise in (("default", 8), ("eval", 40)):
        folder = root / "evaluation_folder" / model
        folder.mkdir(parents=True)
        for case in range(2 * cases_per_class):
            for k in range(samples):
                picture(rng, case // cases_per_class, noise).save(folder / f"{case}_{k}.png")


def class_files(folder: Path, class_index: int, cases_per_class: int = 2, samples: int = 2) -> list:
    """The files of one class in the order the toolkit pairs them (by case number, then sample)."""
    cases = range(class_index * cases_per_class, (class_index + 1) * cases_per_class)
    return [folder / f"{case}_{k}.png" for case in cases for k in range(samples)]


def pooled_statistics(groups: list) -> tuple:
    """Mean and unbiased covariance of the union of groups given as ``(n, mean, covariance)`` (exact)."""
    n = sum(count for count, _, _ in groups)
    mu = sum(count * mean for count, mean, _ in groups) / n
    scatter = sum((count - 1) * cov + count * np.outer(mean - mu, mean - mu) for count, mean, cov in groups)
    return mu, scatter / (n - 1)


# ------------------------------------------------------------------------------------- pytorch-fid oracle


def test_per_class_fid_equals_pytorch_fid_statistics(no_download, load_script, monkeypatch):
    root = no_download
    monkeypatch.chdir(root)
    write_evaluation(root, cases_per_class=3, samples=1)
    state = random_fid_inception_state(seed=3)
    cache = cache_path(FID_INCEPTION)
    cache.parent.mkdir(parents=True)
    torch.save(state, cache)  # where pytorch-fid's own InceptionV3 looks before downloading
    explicit = root / "weights" / "fid-inception.pth"
    explicit.parent.mkdir()
    torch.save(state, explicit)

    script = load_script("eval-scripts/lpips_eval.py")
    features = []  # the toolkit's features, in order: class 0 original, class 0 edited, class 1 original, ...

    def recording_extractor(*args, **kwargs):
        net = inception_extractor(*args, **kwargs)
        net.register_forward_hook(lambda module, inputs, output: features.append(output.double()))
        return net

    monkeypatch.setattr(script, "inception_extractor", recording_extractor)
    args = script.parse_args(
        ["--prompts_path", "prompts.csv", "--classes", "classes.csv", "--metrics", "fid", "--device", "cpu"]
        + ["--batch_size", "4", "--fid_weights", str(explicit)]
    )
    rows = {row["name"]: row for row in script.main(args)["fid"]}
    assert len(features) == 4 and all(f.shape == (3, 2048) for f in features)  # one batch per class and side

    reference = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()  # pytorch-fid, unpatched, from the cache
    assert torch.equal(reference.blocks[3][1].branch_pool.conv.weight, state["Mixed_7b.branch_pool.conv.weight"])
    default, edited = root / "evaluation_folder" / "default", root / "evaluation_folder" / "eval"
    per_class = {"default": [], "eval": []}
    for class_index, name in enumerate(NAMES):
        stats = {}
        for side, (model, folder) in enumerate((("default", default), ("eval", edited))):
            files = class_files(folder, class_index, cases_per_class=3, samples=1)
            stats[model] = calculate_activation_statistics(files, reference, 4, 2048, "cpu", num_workers=0)
            per_class[model].append((len(files), *stats[model]))
            ours = feature_statistics(features[2 * class_index + side])
            np.testing.assert_allclose(ours[0], stats[model][0], rtol=1e-6, atol=1e-9)
            np.testing.assert_allclose(ours[1], stats[model][1], rtol=1e-6, atol=1e-9 * np.abs(ours[1]).max())
        expected = frechet_distance(*stats["default"], *stats["eval"])
        assert rows[name]["fid"] == pytest.approx(expected, rel=1e-4) and expected > 0
        assert (rows[name]["original"], rows[name]["edited"]) == (3, 3)
    expected = frechet_distance(*pooled_statistics(per_class["default"]), *pooled_statistics(per_class["eval"]))
    assert rows["overall"]["fid"] == pytest.approx(expected, rel=1e-4)

    meta = json.loads((edited / "results" / "fid.json").read_text())
    assert meta["network"] == FID_INCEPTION_NETWORK == "FID (pytorch-fid Inception)"
    assert (meta["fid_size"], meta["image_size"], meta["pretrained"]) == (299, None, True)
    assert meta["fid_network"][0] == str(explicit.resolve())


def test_stored_image_loading_equals_pytorch_fid(tmp_path):
    rng = np.random.default_rng(1)
    rgb = picture(rng, 0, 20)
    variants = {
        "rgb.png": rgb,
        "rgba.png": rgb.convert("RGBA"),
        "grey.png": rgb.convert("L"),
        "palette.png": rgb.convert("P"),
        "photo.jpg": rgb,
        "small.png": picture(rng, 1, 20, size=(40, 30)),
    }
    for name, image in variants.items():
        image.save(tmp_path / name)
    files = [tmp_path / name for name in variants]
    theirs = ImagePathDataset(files, transforms=transforms.ToTensor())
    for i, path in enumerate(files):
        assert torch.equal(load_stored_image(path), theirs[i])
    batches = list(image_batches(files, None, 4))  # split where the size changes, order kept
    assert [tuple(b.shape) for b in batches] == [(4, 3, 56, 72), (1, 3, 56, 72), (1, 3, 30, 40)]
    assert torch.equal(torch.cat(batches[:2]), torch.stack([theirs[i] for i in range(5)]))


def test_small_test_size_is_pytorch_fid_without_its_resize(no_download):
    net = inception_extractor(pretrained=False, size=75)
    state = random_fid_inception_state()
    cache_path(FID_INCEPTION).parent.mkdir(parents=True)
    torch.save(state, cache_path(FID_INCEPTION))
    reference = InceptionV3([3], resize_input=False)  # pytorch-fid's own network with the same random weights
    assert net.net.state_dict().keys() == reference.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(net.net.state_dict().values(), reference.state_dict().values()))
    assert torch.equal(net.net.blocks[0][0].conv.weight, state["Conv2d_1a_3x3.conv.weight"])
    images = torch.rand(2, 3, 40, 52)
    with torch.no_grad():
        ours = net(images)
        resized = torch.nn.functional.interpolate(images, size=(75, 75), mode="bilinear", align_corners=False)
        theirs = reference.eval()(resized)[0].flatten(1)
    assert ours.shape == (2, 2048) and torch.isfinite(ours).all()
    assert 1e-3 < ours.abs().mean() < 1e3  # He-normal random weights keep the features of order 1
    assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    assert torch.equal(random_fid_inception_state()["fc.weight"], state["fc.weight"])  # seeded
    assert not torch.equal(random_fid_inception_state(seed=1)["fc.weight"], state["fc.weight"])
    with pytest.raises(ValueError, match="at least 75 px, not 64"):
        inception_extractor(pretrained=False, size=64)


# ---------------------------------------------------------------------------------------------- weights


def test_fid_weights_come_from_a_file_or_the_cache_never_a_download(no_download):
    root = no_download
    original_loader = pytorch_fid_inception.load_state_dict_from_url
    with pytest.raises(MissingWeightsError) as info:
        inception_extractor()
    message = str(info.value)
    assert "\n" not in message and "pytorch-fid FID Inception weights not found" in message
    assert str(root / "torch-home" / "hub" / "checkpoints" / "pt_inception-2015-12-05-6726825d.pth") in message
    assert pytorch_fid_inception.FID_WEIGHTS_URL in message and "fid_inception_v3()" in message
    with pytest.raises(MissingWeightsError, match="--fid_weights nope.pth does not exist"):
        inception_extractor(weights="nope.pth")

    checkpoints = root / "torch-home" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    renamed = checkpoints / "pt_inception-2015-12-05-0123abcd.pth"  # another hash suffix: accepted when alone
    torch.save(random_fid_inception_state(seed=2), renamed)
    assert resolve_weights(FID_INCEPTION, None, "--fid_weights") == renamed
    net = inception_extractor()
    assert torch.equal(
        net.net.blocks[0][0].conv.weight, random_fid_inception_state(seed=2)["Conv2d_1a_3x3.conv.weight"]
    )
    assert pytorch_fid_inception.load_state_dict_from_url is original_loader  # pytorch-fid left as it was
    (checkpoints / "pt_inception-2015-12-05-ffffffff.pth").write_bytes(renamed.read_bytes())
    with pytest.raises(MissingWeightsError, match="several pytorch-fid FID Inception weights files"):
        resolve_weights(FID_INCEPTION, None, "--fid_weights")
    (checkpoints / FID_INCEPTION.filename).write_bytes(renamed.read_bytes())
    assert resolve_weights(FID_INCEPTION, None, "--fid_weights") == checkpoints / FID_INCEPTION.filename

    wrong = root / "torchvision-inception.pth"  # torchvision's ImageNet Inception is not the FID Inception
    torch.save(torchvision.models.inception_v3(weights=None, init_weights=False).state_dict(), wrong)
    with pytest.raises(ValueError, match="is not pytorch-fid's FID Inception state dict") as info:
        inception_extractor(weights=wrong)
    assert "\n" not in str(info.value) and str(wrong) in str(info.value)
    assert pytorch_fid_inception.load_state_dict_from_url is original_loader


# ---------------------------------------------------------------------------------- results and labels


class MeanDistance(torch.nn.Module):
    """A cheap LPIPS stand-in: mean absolute difference per pair."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a - b).abs().mean((1, 2, 3))


def colour_stats(images: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, 6)
    return torch.cat([images.mean((2, 3)), images.std((2, 3))], 1)


def test_compare_folders_records_the_fid_network_and_keeps_metric_fingerprints_apart(tmp_path):
    write_evaluation(tmp_path, cases_per_class=2, samples=3)
    classes = load_class_map(tmp_path / "classes.csv")
    case_to_class = {case: case // 2 for case in range(4)}
    default, edited = tmp_path / "evaluation_folder" / "default", tmp_path / "evaluation_folder" / "eval"
    common = dict(lpips_factory=MeanDistance, fid_factory=lambda: colour_stats)
    lpips_only = compare_folders(
        default, edited, case_to_class, classes, CPU, CompareSettings(metrics=["lpips"],
        info={"pretrained": False, "lpips_is": "mean difference"}, **common),
    )  # fmt: skip
    both = compare_folders(
        default, edited, case_to_class, classes, CPU, CompareSettings(fid_network=FID_WORLD_CLASSIFIER_NETWORK,
        fid_image_size=32, info={"pretrained": False, "fid_size": 32, "lpips_is": "mean difference"}, **common),
    )  # fmt: skip
    # fid_* settings belong to FID only: adding FID reused the stored LPIPS result instead of refusing it
    assert both["lpips"] == json.loads(json.dumps(lpips_only["lpips"]))
    fid_meta = json.loads((edited / "results" / "fid.json").read_text())
    lpips_meta = json.loads((edited / "results" / "lpips.json").read_text())
    assert fid_meta["network"] == "FID (world classifier features)" and fid_meta["fid_size"] == 32
    assert "lpips_is" not in fid_meta and "network" not in lpips_meta and "fid_size" not in lpips_meta
    from sepce.evaluation.loading import load_images

    for c in range(2):
        direct = fid_from_features(
            colour_stats(load_images(class_files(default, c, 2, 3), 32)),
            colour_stats(load_images(class_files(edited, c, 2, 3), 32)),
        )
        assert both["fid"][c]["fid"] == pytest.approx(direct, rel=1e-9) and direct > 0
    assert not math.isnan(both["fid"][-1]["fid"])

    with pytest.raises(FileExistsError, match="pass --overwrite"):  # another FID network: not silently reused
        compare_folders(
            default, edited, case_to_class, classes, CPU, CompareSettings(metrics=["fid"],
            fid_network=FID_INCEPTION_NETWORK, fid_image_size=32, info={"pretrained": False, "fid_size": 32}, **common),
        )  # fmt: skip
    with pytest.raises(ValueError, match="needs fid_network"):
        compare_folders(default, edited, case_to_class, classes, CPU, CompareSettings(metrics=["fid"], **common))
    with pytest.raises(ValueError, match="may not set 'network'"):
        compare_folders(
            default, edited, case_to_class, classes, CPU,
            CompareSettings(metrics=["lpips"], info={"network": "x"}, **common),
        )  # fmt: skip


def test_progress_bars_follow_the_flag(tmp_path, capsys, load_script, monkeypatch):
    """compare_folders draws its LPIPS and FID bars only with ``progress``; lpips_eval.py passes
    ``sepce.cli.show_progress(--quiet)``."""
    write_evaluation(tmp_path)
    classes = load_class_map(tmp_path / "classes.csv")
    default, edited = tmp_path / "evaluation_folder" / "default", tmp_path / "evaluation_folder" / "eval"
    common = dict(
        lpips_factory=MeanDistance, fid_factory=lambda: colour_stats, fid_network=FID_WORLD_CLASSIFIER_NETWORK,
        fid_image_size=32,
    )  # fmt: skip
    for progress in (False, True):
        shutil.rmtree(edited / "results", ignore_errors=True)  # computed again, not reused
        capsys.readouterr()
        compare_folders(
            default, edited, {case: case // 2 for case in range(4)}, classes, CPU,
            CompareSettings(progress=progress, **common),
        )  # fmt: skip
        err = capsys.readouterr().err
        assert ("LPIPS" in err and "FID 0 a" in err and "FID 1 b" in err) is progress, err

    script = load_script("eval-scripts/lpips_eval.py")
    seen = []
    monkeypatch.setattr(cli, "show_progress", lambda quiet: seen.append(quiet) or False)
    monkeypatch.setattr(script, "compare_folders", lambda *a, **k: seen.append(a[5].progress) or {})
    for quiet in ([], ["--quiet"]):
        argv = ["--original_path", default, "--edited_path", edited, "--prompts_path", tmp_path / "prompts.csv"]
        argv += ["--classes", tmp_path / "classes.csv", "--no_pretrained", "--device", "cpu", *quiet]
        script.main(script.parse_args([str(a) for a in argv]))
    assert seen == [False, False, True, False]
