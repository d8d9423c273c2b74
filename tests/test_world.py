"""Tests of the procedural concept world (sepce.world) and train-scripts/make-world-data.py."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import one_line_error
from torch import nn

from sepce.classes import class_by_name, load_class_map
from sepce.cli import run
from sepce.world import (
    OBJECT_CLASS_MAP,
    OBJECTS,
    STYLE_CLASS_MAP,
    STYLES,
    PromptMix,
    Scene,
    build_prompt,
    class_map_csv,
    concepts,
    dataset_scene,
    image_seed,
    load_images,
    make_arrays,
    make_dataset,
    object_mask,
    parse_prompt,
    preview_grid,
    random_batch,
    read_metadata,
    render,
    render_pil,
    sample_prompt,
    scene_params,
    style_pattern,
)

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "train-scripts" / "make-world-data.py"


def load_script():
    spec = importlib.util.spec_from_file_location("make_world_data", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -------------------------------------------------------------------------------------------------- rendering


def test_concepts_are_single_lower_case_words_and_at_least_six_each():
    assert len(STYLES) >= 6 and len(OBJECTS) >= 6
    assert concepts() == {"style": STYLES, "object": OBJECTS}
    words = STYLES + OBJECTS
    assert len(set(words)) == len(words)  # no name is both a style and an object
    assert all(w.isalpha() and w.islower() for w in words)


@pytest.mark.parametrize("size", [32, 48, 64])
def test_render_is_deterministic_and_seeds_differ(size):
    a = render(Scene("stripes", "star", 11), size)
    assert a.shape == (size, size, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, render(Scene("stripes", "star", 11), size))
    b = render(Scene("stripes", "star", 12), size)
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 10
    assert render_pil(Scene("stripes", "star", 11), size).size == (size, size)


def test_seed_fixes_layout_and_colours_independently_of_the_concepts():
    masks = [object_mask(Scene(s, "heart", 5)) for s in STYLES]
    assert all(np.array_equal(masks[0], m) for m in masks[1:])
    patterns = [style_pattern(Scene("waves", o, 5)) for o in OBJECTS]
    assert all(np.array_equal(patterns[0], p) for p in patterns[1:])


# Mean coverage of each pattern from its geometry: half of every period for bands/checker/ramp, a disc of
# radius 0.32 periods per lattice cell for dots, 1 - 0.7^2 for crossing lines of width 0.3, p = 0.5 Bernoulli
# blocks.
EXPECTED_COVERAGE = {
    "stripes": 0.5,
    "dots": math.pi * 0.32**2,
    "checker": 0.5,
    "waves": 0.5,
    "grid": 1 - 0.7**2,
    "rings": 0.5,
    "noise": 0.5,
    "gradient": 0.5,
}


def test_every_style_has_its_expected_coverage_and_differs_from_the_others():
    assert set(EXPECTED_COVERAGE) == set(STYLES)
    for style in STYLES:
        coverage = np.mean([style_pattern(Scene(style, None, k)).mean() for k in range(24)])
        assert abs(coverage - EXPECTED_COVERAGE[style]) < 0.03, style
    patterns = {s: style_pattern(Scene(s, None, 3)) for s in STYLES}
    for i, s in enumerate(STYLES):
        assert patterns[s].min() < 0.05 and patterns[s].max() > 0.95, s
        for t in STYLES[i + 1 :]:
            assert np.abs(patterns[s] - patterns[t]).mean() > 0.2, (s, t)


def _star_area():  # 5-point star, outer radius 1, inner 0.45, scaled so its bounding box's longer side is 2
    area = 10 * 0.5 * 1.0 * 0.45 * math.sin(math.pi / 5)
    width, height = 2 * math.sin(2 * math.pi / 5), 1 + math.cos(math.pi / 5)
    return area * (2 / max(width, height)) ** 2


# Shape area / object_size^2 from geometry (each shape's bounding box has longer side object_size).
EXPECTED_AREA = {"circle": math.pi / 4, "square": 1.0, "triangle": math.sqrt(3) / 4, "star": _star_area() / 4}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_object_masks_match_geometry(seed):
    params = scene_params(seed)
    masks = {}
    for obj in OBJECTS:
        masks[obj] = object_mask(Scene(None, obj, seed), size=64, aa=8)
        area = masks[obj].mean() / params.object_size**2
        if obj in EXPECTED_AREA:
            assert area == pytest.approx(EXPECTED_AREA[obj], rel=0.03), obj
        assert 0.15 < area < 1.05, obj
    circle = masks["circle"]
    ys, xs = np.mgrid[0:64, 0:64]
    centroid = (
        (circle * (xs + 0.5)).sum() / circle.sum() / 64,
        (circle * (ys + 0.5)).sum() / circle.sum() / 64,
    )
    assert centroid == pytest.approx(params.object_centre, abs=0.01)
    for i, a in enumerate(OBJECTS):
        for b in OBJECTS[i + 1 :]:
            inter, union = np.minimum(masks[a], masks[b]).sum(), np.maximum(masks[a], masks[b]).sum()
            assert inter / union < 0.85, (a, b)


def test_render_composites_object_then_pattern():
    scene = Scene("checker", "square", 21)
    p = scene_params(21)
    img = render(scene).astype(float)
    mask, pattern = object_mask(scene), style_pattern(scene)
    bg = np.asarray(p.background) * 255
    inked_object = ((1 - p.depth) * np.asarray(p.colour) + p.depth * np.asarray(p.ink)) * 255
    clear_bg = (mask == 0) & (pattern == 0)
    inked_obj = (mask == 1) & (pattern == 1)
    assert clear_bg.sum() > 50 and inked_obj.sum() > 20
    assert np.abs(img[clear_bg] - bg).max() <= 0.51
    assert np.abs(img[inked_obj] - inked_object).max() <= 0.51
    assert np.linalg.norm(np.asarray(p.colour) - np.asarray(p.background)) >= 0.55
    plain = render(Scene(None, None, 21))
    assert np.all(plain == plain[0, 0]) and np.abs(plain[0, 0] - bg).max() <= 0.51


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"style": "plaid", "object": "star", "seed": 0}, "style"),
        ({"style": "dots", "object": "dog", "seed": 0}, "object"),
        ({"style": "dots", "object": "star", "seed": -1}, "seed"),
        ({"style": "dots", "object": "star", "seed": 1.5}, "seed"),
    ],
)
def test_scene_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Scene(**kwargs)


@pytest.mark.parametrize("size, aa", [(4, 4), (64, 0), (2048, 1), (32.0, 4)])
def test_render_rejects_bad_sizes(size, aa):
    with pytest.raises(ValueError, match="size|aa"):
        render(Scene("dots", "star", 0), size, aa)


def test_preview_grid_has_a_cell_per_style_and_object():
    sheet = preview_grid(seed=0, size=16, pad=1)
    assert sheet.size == (len(OBJECTS) * 17 + 1, len(STYLES) * 17 + 1)
    cell = np.asarray(sheet)[1 + 17 : 1 + 17 + 16, 1 + 2 * 17 : 1 + 2 * 17 + 16]  # row 1, column 2
    np.testing.assert_array_equal(cell, render(Scene(STYLES[1], OBJECTS[2], len(OBJECTS) + 2), 16))


# ---------------------------------------------------------------------------------------------------- prompts


def test_prompt_build_parse_round_trip():
    for style in STYLES:
        for obj in OBJECTS:
            full = build_prompt(style, obj)
            assert full == f"{'an' if obj == 'arrow' else 'a'} {obj} in the style of {style}"
            assert parse_prompt(full) == (style, obj)
        assert build_prompt(style) == f"in the style of {style}"
        assert build_prompt(style, style_form="suffix") == f"{style} style"
        assert parse_prompt(build_prompt(style)) == (style, None)
        assert parse_prompt(build_prompt(style, style_form="suffix")) == (style, None)
        assert parse_prompt(style) == (style, None)
    for obj in OBJECTS:
        assert parse_prompt(build_prompt(None, obj)) == (None, obj)
        assert parse_prompt(obj) == (None, obj)
    assert build_prompt() == "" and parse_prompt("") == (None, None)
    assert parse_prompt("  A  Star in the style   of STRIPES ") == ("stripes", "star")


@pytest.mark.parametrize("prompt", ["a dog", "a star in the style of plaid", "Van Gogh", "stars", "a star stripes"])
def test_parse_prompt_rejects_unknown_prompts(prompt):
    with pytest.raises(ValueError, match="cannot parse prompt"):
        parse_prompt(prompt)


def test_build_prompt_rejects_unknown_concepts():
    with pytest.raises(ValueError, match="plaid"):
        build_prompt("plaid", "star")
    with pytest.raises(ValueError, match="dog"):
        build_prompt("dots", "dog")
    with pytest.raises(ValueError, match="style_form"):
        build_prompt("dots", style_form="prefix")


def test_sample_prompt_follows_the_mix_and_describes_the_image():
    rng = np.random.default_rng(0)
    mix = PromptMix(full=0.5, object_only=0.2, style_only=0.2, blank=0.1)
    counts = {"full": 0, "object": 0, "style": 0, "blank": 0}
    n = 4000
    for _ in range(n):
        style, obj = parse_prompt(sample_prompt("rings", "moon", rng, mix))
        assert style in ("rings", None) and obj in ("moon", None)
        counts["full" if style and obj else "object" if obj else "style" if style else "blank"] += 1
    for key, p in zip(counts, mix.probabilities()):
        assert abs(counts[key] / n - p) < 4 * math.sqrt(p * (1 - p) / n), key
    with pytest.raises(ValueError, match="sum to 1"):
        PromptMix(full=0.9, object_only=0.2, style_only=0.0, blank=0.0)


def test_committed_class_maps_match_the_world():
    assert STYLE_CLASS_MAP.read_text() == class_map_csv("style")
    assert OBJECT_CLASS_MAP.read_text() == class_map_csv("object")
    styles = load_class_map(STYLE_CLASS_MAP)
    assert [c.name for c in styles] == list(STYLES)
    assert [parse_prompt(c.prompt) for c in styles] == [(s, None) for s in STYLES]
    objects = load_class_map(OBJECT_CLASS_MAP)
    assert [c.name for c in objects] == list(OBJECTS)
    assert [parse_prompt(c.prompt) for c in objects] == [(None, o) for o in OBJECTS]
    assert class_by_name(styles, "in the style of waves").index == STYLES.index("waves")
    with pytest.raises(ValueError, match="kind"):
        class_map_csv("colour")


# --------------------------------------------------------------------------------------------------- datasets


def test_make_arrays_is_balanced_seeded_and_matches_render():
    n = len(STYLES) * len(OBJECTS)
    data = make_arrays(n + 3, seed=4, size=32)
    assert data.images.shape == (n + 3, 32, 32, 3) and len(data) == n + 3
    counts = np.zeros((len(STYLES), len(OBJECTS)), int)
    np.add.at(counts, (data.style[:n], data.object[:n]), 1)
    assert np.all(counts == 1)
    for i in (0, 17, n + 2):
        scene = dataset_scene(i, 4)
        assert (STYLES[data.style[i]], OBJECTS[data.object[i]], data.seeds[i]) == (
            scene.style,
            scene.object,
            scene.seed,
        )
        np.testing.assert_array_equal(data.images[i], render(scene, 32))
    assert len(set(data.seeds.tolist())) == n + 3
    assert not set(data.seeds.tolist()) & {image_seed(5, i) for i in range(n + 3)}  # other dataset seed
    assert data.prompts()[1] == build_prompt(STYLES[0], OBJECTS[1])


def test_random_batch_is_reproducible_from_the_generator():
    a = random_batch(np.random.default_rng(9), 6, size=16)
    b = random_batch(np.random.default_rng(9), 6, size=16)
    np.testing.assert_array_equal(a.images, b.images)
    for img, scene in zip(a.images, a.scenes()):
        np.testing.assert_array_equal(img, render(scene, 16))
    with pytest.raises(ValueError, match="batch_size"):
        random_batch(np.random.default_rng(0), 0)


def test_make_dataset_writes_resumes_and_refuses_other_settings(tmp_path):
    out = tmp_path / "world"
    metadata = make_dataset(out, 10, seed=2, size=24, progress=False)
    assert metadata == out / "metadata.csv"
    rows = read_metadata(out)
    assert list(rows[0]) == ["file", "style", "object", "prompt", "seed"] and len(rows) == 10
    assert all(parse_prompt(r["prompt"]) == (r["style"], r["object"]) for r in rows)
    expected = make_arrays(10, seed=2, size=24)
    loaded = load_images(out)
    np.testing.assert_array_equal(loaded.images, expected.images)
    np.testing.assert_array_equal(loaded.seeds, expected.seeds)
    assert (out / "classes.csv").read_text() == class_map_csv("style")
    assert (out / "object-classes.csv").read_text() == class_map_csv("object")

    # Resume: a missing image is rendered again, the others are not rewritten.
    (out / rows[3]["file"]).unlink()
    kept = out / rows[0]["file"]
    before = kept.stat().st_mtime_ns
    make_dataset(out, 10, seed=2, size=24, progress=False)
    np.testing.assert_array_equal(load_images(out).images, expected.images)
    assert kept.stat().st_mtime_ns == before

    with pytest.raises(FileExistsError, match="other settings"):
        make_dataset(out, 5, seed=2, size=24, progress=False)
    make_dataset(out, 5, seed=3, size=24, overwrite=True, progress=False)
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"{i:06d}.png" for i in range(5)]
    np.testing.assert_array_equal(load_images(out).images, make_arrays(5, seed=3, size=24).images)

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="no world.json"):
        make_dataset(foreign, 2, progress=False)


def test_cli_writes_the_dataset(tmp_path):
    out = tmp_path / "data"
    result = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--out",
            str(out),
            "--num_images",
            "6",
            "--seed",
            "1",
            "--size",
            "32",
            "--preview",
            str(tmp_path / "grid.png"),
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert {p.name for p in out.iterdir()} == {
        "images",
        "metadata.csv",
        "world.json",
        "classes.csv",
        "object-classes.csv",
    }
    assert len(read_metadata(out)) == 6
    np.testing.assert_array_equal(load_images(out).images, make_arrays(6, seed=1, size=32).images)
    assert (tmp_path / "grid.png").is_file()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--num_images", "0"], "--num_images 0"),
        (["--size", "4"], "--size 4"),
        (["--seed", "-3"], "--seed -3"),
        (["--aa", "0"], "--aa 0"),
        (["--num_images", "ten"], "invalid int value: 'ten'"),
        (["--preview", "grid.jpg"], "grid.jpg"),
    ],
)
def test_cli_refuses_bad_arguments(tmp_path, capsys, argv, message):
    script = load_script()
    with pytest.raises(SystemExit) as exc:
        script.parse_args(["--out", str(tmp_path / "x"), *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_cli_refuses_a_file_as_out_and_changed_settings(tmp_path, capsys):
    script = load_script()
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(SystemExit):
        script.parse_args(["--out", str(a_file)])
    assert "is not a folder" in capsys.readouterr().err
    out = tmp_path / "d"
    assert script.main(script.parse_args(["--out", str(out), "--num_images", "2", "--size", "16"])).is_file()
    with one_line_error(capsys, "other settings"):  # through the runner, as `python make-world-data.py ...`
        run(script.parse_args, script.main, ["--out", str(out), "--num_images", "3", "--size", "16"])
    assert len(read_metadata(out)) == 2


# ---------------------------------------------------------------------------------- learnable but not trivial


def _tiny_cnn(classes: int) -> nn.Module:
    def block(i, o):
        return [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU()]

    return nn.Sequential(
        *block(3, 16), nn.MaxPool2d(2), *block(16, 32), nn.MaxPool2d(2), *block(32, 32),
        nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(32, classes),
    )  # fmt: skip


def _held_out_accuracy(train, test, labels: str, epochs: int = 6) -> float:
    torch.manual_seed(0)
    model = _tiny_cnn(8)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x = torch.tensor(train.images).permute(0, 3, 1, 2).float() / 127.5 - 1
    y = torch.tensor(getattr(train, labels))
    for _ in range(epochs):
        order = torch.randperm(len(x))
        for i in range(0, len(x), 32):
            idx = order[i : i + 32]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        xt = torch.tensor(test.images).permute(0, 3, 1, 2).float() / 127.5 - 1
        return float((model(xt).argmax(1).numpy() == getattr(test, labels)).mean())


def test_concepts_are_learnable_but_not_trivial():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train = make_arrays(1024, seed=1, size=32, aa=2)
        test = make_arrays(256, seed=2, size=32, aa=2)
        # Learnable: a 3-layer CNN trained for seconds on 1024 images at 32 px beats chance (1/8) by far
        # (about 0.95 for styles and 0.65-0.75 for objects; with more data and epochs both approach 1).
        assert _held_out_accuracy(train, test, "style") > 0.8
        assert _held_out_accuracy(train, test, "object") > 0.45
    finally:
        torch.set_num_threads(threads)
    # Not trivial: the mean colour of an image says next to nothing about either concept ...
    feats = train.images.reshape(len(train), -1, 3).mean(1)
    test_feats = test.images.reshape(len(test), -1, 3).mean(1)
    for labels in ("style", "object"):
        y, yt = getattr(train, labels), getattr(test, labels)
        centroids = np.stack([feats[y == k].mean(0) for k in range(8)])
        pred = ((test_feats[:, None] - centroids[None]) ** 2).sum(-1).argmin(1)
        assert (pred == yt).mean() < 0.3
    # ... and objects move and change size and colour.
    params = [scene_params(int(s)) for s in train.seeds[:200]]
    centres = np.array([p.object_centre for p in params])
    assert centres.std(axis=0).min() > 0.08
    assert np.ptp([p.object_size for p in params]) > 0.2
    assert np.array([p.colour for p in params]).std(axis=0).min() > 0.15
