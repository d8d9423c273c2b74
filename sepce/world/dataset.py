"""Seeded datasets of the concept world: PNG folders with ``metadata.csv``, or in-memory numpy arrays.

Image ``i`` of a dataset with seed ``s`` shows combination ``i mod (styles x objects)`` (styles vary slowest),
so every prefix of ``len(STYLES) * len(OBJECTS)`` images is balanced, and is drawn with the scene seed
:func:`image_seed` ``(s, i)``. The folder written by :func:`make_dataset` and the arrays of
:func:`make_arrays` hold the same pixels for the same ``(num_images, seed, size, aa)``.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from sepce.io import save_image, write_json, write_text
from sepce.world.prompts import build_prompt, write_class_map
from sepce.world.render import OBJECTS, STYLES, Scene, check_size, render, render_pil

WORLD_VERSION = 1  # bump when rendering changes, so stale folders are recognised
METADATA_COLUMNS = ("file", "style", "object", "prompt", "seed")
MAX_IMAGES = 10_000_000


def to_unit_images(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) → float32 (N, 3, H, W) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0


def to_model_images(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) → float32 (N, 3, H, W) in [-1, 1] (the autoencoder's range)."""
    return to_unit_images(images) * 2 - 1


def image_seed(seed: int, index: int) -> int:
    """The scene seed of image ``index`` of the dataset with seed ``seed`` (independent across seeds)."""
    hi, lo = np.random.SeedSequence([seed, index]).generate_state(2, dtype=np.uint32)
    return ((int(hi) << 32) | int(lo)) & (2**63 - 1)


def dataset_scene(index: int, seed: int) -> Scene:
    """Scene ``index`` of the dataset with seed ``seed`` (combinations cycle, styles varying slowest)."""
    combo = index % (len(STYLES) * len(OBJECTS))
    return Scene(STYLES[combo // len(OBJECTS)], OBJECTS[combo % len(OBJECTS)], image_seed(seed, index))


def _check_count(num_images: int, seed: int) -> None:
    if isinstance(num_images, bool) or not isinstance(num_images, (int, np.integer)):
        raise ValueError(f"num_images {num_images!r} must be an integer")
    if not 1 <= num_images <= MAX_IMAGES:
        raise ValueError(f"num_images {num_images} must be in [1, {MAX_IMAGES}]")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**63:
        raise ValueError(f"seed {seed!r} must be an integer in [0, 2**63)")


@dataclass
class WorldArrays:
    """A batch of rendered scenes with labels.

    ``images`` (N, size, size, 3) uint8; ``style`` and ``object`` (N,) class indices into ``STYLES`` and
    ``OBJECTS``; ``seeds`` (N,) the scene seeds.
    """

    images: np.ndarray
    style: np.ndarray
    object: np.ndarray
    seeds: np.ndarray

    def __len__(self) -> int:
        return len(self.images)

    def scenes(self) -> list[Scene]:
        return [Scene(STYLES[s], OBJECTS[o], int(k)) for s, o, k in zip(self.style, self.object, self.seeds)]

    def prompts(self) -> list[str]:
        """The full prompt of every image (``a <object> in the style of <style>``)."""
        return [build_prompt(STYLES[s], OBJECTS[o]) for s, o in zip(self.style, self.object)]


def render_scenes(scenes: list[Scene], size: int = 64, aa: int = 4, progress: bool = False) -> WorldArrays:
    """Render scenes (each with a style and an object) into :class:`WorldArrays` (tqdm if ``progress``)."""
    check_size(size, aa)
    if any(s.style is None or s.object is None for s in scenes):
        raise ValueError("render_scenes needs a style and an object in every scene (labels are class indices)")
    images = np.empty((len(scenes), size, size, 3), dtype=np.uint8)
    for i, scene in enumerate(tqdm(scenes, desc="render", unit="img", disable=not progress)):
        images[i] = render(scene, size, aa)
    return WorldArrays(
        images=images,
        style=np.array([STYLES.index(s.style) for s in scenes], dtype=np.int64),
        object=np.array([OBJECTS.index(s.object) for s in scenes], dtype=np.int64),
        seeds=np.array([s.seed for s in scenes], dtype=np.int64),
    )


def make_arrays(num_images: int, seed: int = 0, size: int = 64, aa: int = 4, progress: bool = False) -> WorldArrays:
    """The dataset of :func:`make_dataset` in memory, without touching the disk."""
    _check_count(num_images, seed)
    return render_scenes([dataset_scene(i, seed) for i in range(num_images)], size, aa, progress)


def random_batch(rng: np.random.Generator, batch_size: int, size: int = 64, aa: int = 4) -> WorldArrays:
    """``batch_size`` fresh scenes (style, object and seed drawn from ``rng``) for endless training data."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size {batch_size!r} must be a positive integer")
    styles = rng.integers(len(STYLES), size=batch_size)
    objects = rng.integers(len(OBJECTS), size=batch_size)
    seeds = rng.integers(2**63 - 1, size=batch_size, dtype=np.int64)
    scenes = [Scene(STYLES[s], OBJECTS[o], int(k)) for s, o, k in zip(styles, objects, seeds)]
    return render_scenes(scenes, size, aa)


def _settings(num_images: int, seed: int, size: int, aa: int) -> dict:
    return {
        "world_version": WORLD_VERSION,
        "num_images": int(num_images),
        "seed": int(seed),
        "size": int(size),
        "aa": int(aa),
        "styles": list(STYLES),
        "objects": list(OBJECTS),
    }


def _image_name(index: int, num_images: int) -> str:
    return f"images/{index:0{max(6, len(str(num_images - 1)))}d}.png"


_IMAGE_FILE = re.compile(r"\d{6,}\.png")


def _remove_images(out: Path) -> None:
    folder = out / "images"
    if folder.is_dir():
        for f in folder.iterdir():
            if f.is_file() and _IMAGE_FILE.fullmatch(f.name):
                f.unlink()


def make_dataset(
    out_dir: str | Path,
    num_images: int,
    seed: int = 0,
    size: int = 64,
    aa: int = 4,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write ``num_images`` PNGs under ``out_dir/images/`` plus ``metadata.csv`` and return the metadata path.

    Also written: ``world.json`` (the settings, first, so an interrupted run can be recognised),
    ``classes.csv`` and ``object-classes.csv`` (the class maps). Every file is written atomically. Re-running
    with the same settings resumes: existing images are kept (they are complete, and deterministic) and only
    missing ones are rendered. A folder made with other settings, or a non-empty folder without
    ``world.json``, raises ``FileExistsError`` unless ``overwrite``, which then first deletes the old numbered
    images (other files in the folder are left alone).
    """
    _check_count(num_images, seed)
    check_size(size, aa)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"output {out} exists and is not a directory")
    settings = _settings(num_images, seed, size, aa)
    config = out / "world.json"
    if config.is_file():
        old = json.loads(config.read_text())
        if old != settings:
            changed = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
            if not overwrite:
                raise FileExistsError(
                    f"{out} holds a world dataset made with other settings (old, new: {changed}); "
                    "choose another output folder or pass --overwrite"
                )
            _remove_images(out)
    elif out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} is not empty and holds no world.json; refusing to write into it")
        _remove_images(out)
    write_json(config, settings)

    rows = []
    for i in tqdm(range(num_images), desc="world images", unit="img", disable=not progress):
        scene = dataset_scene(i, seed)
        name = _image_name(i, num_images)
        if not (out / name).is_file():
            save_image(out / name, render_pil(scene, size, aa))
        rows.append((name, scene.style, scene.object, build_prompt(scene.style, scene.object), scene.seed))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(METADATA_COLUMNS)
    writer.writerows(rows)
    metadata = write_text(out / "metadata.csv", buf.getvalue())
    write_class_map(out / "classes.csv", "style")
    write_class_map(out / "object-classes.csv", "object")
    return metadata


def read_metadata(path: str | Path) -> list[dict[str, str]]:
    """Rows of a ``metadata.csv`` (or of ``folder/metadata.csv``), checked for the expected columns."""
    path = Path(path)
    if path.is_dir():
        path = path / "metadata.csv"
    if not path.is_file():
        raise FileNotFoundError(f"world metadata {path} does not exist (make it with train-scripts/make-world-data.py)")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = set(METADATA_COLUMNS) - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"world metadata {path} lacks column(s) {sorted(missing)}; expected {METADATA_COLUMNS}")
        return list(reader)


def load_images(path: str | Path, rows: Optional[list[dict[str, str]]] = None) -> WorldArrays:
    """Load a folder written by :func:`make_dataset` back into a :class:`WorldArrays`."""
    folder = Path(path)
    rows = read_metadata(folder) if rows is None else rows
    images = np.stack([np.asarray(Image.open(folder / r["file"]).convert("RGB")) for r in rows])
    return WorldArrays(
        images=images,
        style=np.array([STYLES.index(r["style"]) for r in rows], dtype=np.int64),
        object=np.array([OBJECTS.index(r["object"]) for r in rows], dtype=np.int64),
        seeds=np.array([int(r["seed"]) for r in rows], dtype=np.int64),
    )
