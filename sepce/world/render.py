"""Procedural renderer of the concept world: one object (a shape) under one style (a texture over it all).

A scene is fully determined by ``Scene(style, object, seed)``. The seed fixes every random choice (object
position, size, rotation, colours, pattern angle/scale/phase, ...) and these choices do NOT depend on the
style or object, so ``Scene("stripes", "star", 7)`` and ``Scene("dots", "heart", 7)`` share layout and colours
and differ only in the concepts. Rendering is pure numpy + PIL: the scene is drawn at ``aa`` times the output
resolution and box-filtered down, so edges are anti-aliased and every pattern scales with ``size`` (periods
are fractions of the image width).
"""

from __future__ import annotations

import colorsys
import functools
import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw

# ------------------------------------------------------------------------------------------------------------
# Random parameters of a scene (shared by every style and object)
# ------------------------------------------------------------------------------------------------------------

OBJECT_SIZE_RANGE = (0.42, 0.68)  # longer side of the object's bounding box, as a fraction of the image width
OBJECT_MAX_ROTATION = 20.0  # degrees either way; small enough that a square never turns into a diamond
MIN_COLOUR_DISTANCE = 0.55  # RGB distance (channels in [0, 1]) between background and object colours


@dataclass(frozen=True)
class Scene:
    """What to draw: a style name (or ``None`` for no texture), an object name (or ``None``) and a seed."""

    style: Optional[str]
    object: Optional[str]
    seed: int

    def __post_init__(self) -> None:
        if self.style is not None and self.style not in STYLES:
            raise ValueError(f"unknown style {self.style!r}; expected one of {list(STYLES)} or None")
        if self.object is not None and self.object not in OBJECTS:
            raise ValueError(f"unknown object {self.object!r}; expected one of {list(OBJECTS)} or None")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or not 0 <= self.seed < 2**63:
            raise ValueError(f"scene seed {self.seed!r} must be an integer in [0, 2**63)")


@dataclass(frozen=True)
class SceneParams:
    """Every random choice of a scene, drawn from its seed by :func:`scene_params`.

    Coordinates are in image units ([0, 1] across the image, y pointing down); ``pattern_scale``, ``wave_*``
    and ``pattern_centre`` are unit draws in [0, 1] that each style maps onto its own range.
    """

    object_size: float
    object_angle: float  # degrees, counter-clockwise
    object_centre: tuple[float, float]
    background: tuple[float, float, float]  # RGB in [0, 1]
    colour: tuple[float, float, float]  # object RGB in [0, 1]
    ink: tuple[float, float, float]  # dark RGB the pattern is painted with
    depth: float  # pattern strength: pixel = (1 - depth * P) * base + depth * P * ink
    pattern_angle: float  # radians
    pattern_scale: float
    pattern_phase: tuple[float, float]
    pattern_centre: tuple[float, float]
    wave_length: float
    wave_amplitude: float
    noise_seed: int


def _hsv(rng: np.random.Generator, s_range: tuple[float, float], v_range: tuple[float, float]) -> np.ndarray:
    h, s, v = rng.random(), rng.uniform(*s_range), rng.uniform(*v_range)
    return np.array(colorsys.hsv_to_rgb(h, s, v))


def scene_params(seed: int) -> SceneParams:
    """Draw a scene's random parameters from ``seed`` (deterministic; independent of style and object)."""
    rng = np.random.default_rng(seed)
    size = rng.uniform(*OBJECT_SIZE_RANGE)
    angle = rng.uniform(-OBJECT_MAX_ROTATION, OBJECT_MAX_ROTATION)
    # A rotated shape spans at most size * sqrt(2); keep its centre far enough in to stay (almost) whole.
    margin = 0.5 * size * 1.1
    centre = tuple(float(c) for c in rng.uniform(margin, 1 - margin, size=2))
    background = _hsv(rng, (0.1, 0.6), (0.75, 1.0))
    colour = _hsv(rng, (0.45, 1.0), (0.45, 1.0))
    for _ in range(1000):  # rejection sampling keeps the object visible against the background
        if np.linalg.norm(colour - background) >= MIN_COLOUR_DISTANCE:
            break
        colour = _hsv(rng, (0.45, 1.0), (0.45, 1.0))
    ink = _hsv(rng, (0.3, 0.9), (0.0, 0.25))
    return SceneParams(
        object_size=float(size),
        object_angle=float(angle),
        object_centre=centre,
        background=tuple(float(c) for c in background),
        colour=tuple(float(c) for c in colour),
        ink=tuple(float(c) for c in ink),
        depth=float(rng.uniform(0.5, 0.65)),
        pattern_angle=float(rng.uniform(0, math.pi)),
        pattern_scale=float(rng.random()),
        pattern_phase=(float(rng.random()), float(rng.random())),
        pattern_centre=(float(rng.random()), float(rng.random())),
        wave_length=float(rng.random()),
        wave_amplitude=float(rng.random()),
        noise_seed=int(rng.integers(2**31)),
    )


# ------------------------------------------------------------------------------------------------------------
# Styles: a pattern P(x, y) in [0, 1] painted over background and object alike
# ------------------------------------------------------------------------------------------------------------


def _lerp(lo: float, hi: float, t: float) -> float:
    return lo + (hi - lo) * t


def _rotated(x: np.ndarray, y: np.ndarray, p: SceneParams) -> tuple[np.ndarray, np.ndarray]:
    """Image coordinates rotated by the pattern angle about the image centre."""
    c, s = math.cos(p.pattern_angle), math.sin(p.pattern_angle)
    x, y = x - 0.5, y - 0.5
    return x * c + y * s, -x * s + y * c


def _bands(t: np.ndarray, duty: float = 0.5) -> np.ndarray:
    """Square wave of period 1: 1 on the first ``duty`` of each period, else 0."""
    return (np.mod(t, 1.0) < duty).astype(np.float32)


def _stripes(x: np.ndarray, y: np.ndarray, p: SceneParams) -> np.ndarray:
    u, _ = _rotated(x, y, p)
    return _bands(u / _lerp(0.16, 0.25, p.pattern_scale) + p.pattern_phase[0])


def _waves(x: np.ndarray, y: np.ndarray, p: SceneParams) -> np.ndarray:
    u, v = _rotated(x, y, p)
    period = _lerp(0.17, 0.25, p.pattern_scale)
    wave_length = _lerp(0.4, 0.6, p.wave_length)
    amplitude = _lerp(0.08, 0.12, p.wave_amplitude)
    offset = amplitude * np.sin(2 * math.pi * (u / wave_length + p.pattern_phase[1]))
    return _bands((v + offset) / period + p.pattern_phase[0])


def _checker(x: np.ndarray, y: np.ndarray, p: SceneParams) -> np.ndarray:
    u, v = _rotated(x, y, p)
    cell = _lerp(0.11, 0.17, p.pattern_scale)
    parity = np.floor(u / cell + p.pattern_phase[0]) + np.floor(v / cell + p.pattern_phase[1])
    return np.mod(parity, 2).astype(np.float32)


def _grid(x: np.ndarray, y: np.ndarray, p: SceneParams) -> np.ndarray:
    u, v = _rotated(x, y, p)
    period = _lerp(0.18, 0.27, p.pattern_scale)
    return np.maximum(_bands(u / period + p.pattern_phase[0], 0.3), _bands(v / period + p.pattern_phase[1], 0.3))


def _dots(x: np.ndarray, y: np.ndarray, p: SceneParams) -> np.ndarray:
    u, v = _rotated(x, y, p)
    period = _lerp(0.18, 0.26, p.pattern_scale)
    fu = np.mod(u / period + p.pattern_phase[0], 1.0) - 0.5
    fv = np.mod(v / period + p.pattern_phase[1], 1.0) - 0.5
    return (fu * fu + fv * fv < 0.32**2).astype(np.float32)  # disc radius 0.32 periods


def _rings(x: np.ndarray, y: np.ndarray, p: SceneParams) -> np.ndarray:
    cx, cy = (_lerp(0.15, 0.85, c) for c in p.pattern_centre)
    r = np.sqrt((x - cx) ** 2 + (y - cy) ** 2)
    return _bands(r / _lerp(0.13, 0.2, p.pattern_scale) + p.pattern_phase[0])


def _noise(x: np.ndarray, y: np.ndarray, p: SceneParams) -> np.ndarray:
    n = int(round(_lerp(8, 11, p.pattern_scale)))  # blocks across the image
    cells = (np.random.default_rng(p.noise_seed).random((n, n)) < 0.5).astype(np.float32)
    ix = np.minimum((x * n).astype(np.int64), n - 1)
    iy = np.minimum((y * n).astype(np.int64), n - 1)
    return cells[iy, ix]


def _gradient(x: np.ndarray, y: np.ndarray, p: SceneParams) -> np.ndarray:
    u, _ = _rotated(x, y, p)
    half = 0.5 * (abs(math.cos(p.pattern_angle)) + abs(math.sin(p.pattern_angle)))  # half the projected width
    return np.clip((u + half) / (2 * half), 0.0, 1.0).astype(np.float32)


_PATTERNS: dict[str, Callable[[np.ndarray, np.ndarray, SceneParams], np.ndarray]] = {
    "stripes": _stripes,
    "dots": _dots,
    "checker": _checker,
    "waves": _waves,
    "grid": _grid,
    "rings": _rings,
    "noise": _noise,
    "gradient": _gradient,
}

#: Style names, in class-index order.
STYLES: tuple[str, ...] = tuple(_PATTERNS)

# ------------------------------------------------------------------------------------------------------------
# Objects: polygons in unit coordinates (x right, y up), normalised so the bounding box is centred with side 2
# ------------------------------------------------------------------------------------------------------------


def _circle_points(n: int, radius: float = 1.0, start: float = 0.0, stop: float = 2 * math.pi) -> np.ndarray:
    t = np.linspace(start, stop, n, endpoint=False)
    return radius * np.stack([np.cos(t), np.sin(t)], axis=1)


def _star_points() -> np.ndarray:
    t = math.pi / 2 + np.arange(10) * math.pi / 5
    r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


def _cross_points() -> np.ndarray:
    """A plus sign with arms 0.6 wide: the outline of its top-right quarter, turned clockwise four times."""
    quarter = np.array([(0.3, 1.0), (0.3, 0.3), (1.0, 0.3)])
    clockwise = np.array([[0.0, 1.0], [-1.0, 0.0]])  # (x, y) -> (y, -x)
    return np.concatenate([quarter @ np.linalg.matrix_power(clockwise, k).T for k in range(4)])


def _heart_points() -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, 96, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
    return np.stack([x, y], axis=1)


def _moon_points() -> np.ndarray:
    """A crescent opening to the right: the unit disc minus a disc of radius 0.85 centred at (0.5, 0)."""
    d, r = 0.5, 0.85
    xi = (1 + d * d - r * r) / (2 * d)  # the two circles meet at (xi, +-yi)
    yi = math.sqrt(1 - xi * xi)
    outer_start = math.atan2(yi, xi)
    inner_start = math.atan2(yi, xi - d)
    outer = _circle_points(64, 1.0, outer_start, 2 * math.pi - outer_start)
    t = np.linspace(2 * math.pi - inner_start, inner_start, 48)  # back along the inner circle's left side
    inner = np.stack([d + r * np.cos(t), r * np.sin(t)], axis=1)
    return np.concatenate([outer, inner])


def _normalise(points: np.ndarray) -> np.ndarray:
    lo, hi = points.min(axis=0), points.max(axis=0)
    return (points - (lo + hi) / 2) * (2 / (hi - lo).max())


_SHAPES: dict[str, np.ndarray] = {
    name: _normalise(np.asarray(points, dtype=np.float64))
    for name, points in {
        "circle": _circle_points(96),
        "square": [(-1, -1), (1, -1), (1, 1), (-1, 1)],
        "triangle": [(0, 1), (-math.sqrt(3) / 2, -0.5), (math.sqrt(3) / 2, -0.5)],
        "star": _star_points(),
        "cross": _cross_points(),
        "heart": _heart_points(),
        "moon": _moon_points(),
        "arrow": [(-1, 0.25), (0.15, 0.25), (0.15, 0.65), (1, 0), (0.15, -0.65), (0.15, -0.25), (-1, -0.25)],
    }.items()
}

#: Object names, in class-index order.
OBJECTS: tuple[str, ...] = tuple(_SHAPES)

# ------------------------------------------------------------------------------------------------------------
# Rendering
# ------------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _pixel_grid(resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in image units, shape (resolution, resolution) each; read-only, cached."""
    c = (np.arange(resolution, dtype=np.float32) + 0.5) / resolution
    x, y = np.meshgrid(c, c)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def object_polygon(obj: str, params: SceneParams) -> np.ndarray:
    """The object's outline in image units (x right, y down), shape (n, 2)."""
    a = math.radians(params.object_angle)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    pts = _SHAPES[obj] @ rot.T * (params.object_size / 2)
    pts[:, 1] = -pts[:, 1]  # y up (shape definitions) -> y down (images)
    return pts + np.asarray(params.object_centre)


def object_mask(scene: Scene, size: int = 64, aa: int = 4) -> np.ndarray:
    """Anti-aliased coverage of the object, float32 (size, size) in [0, 1]; zeros when ``object`` is None."""
    check_size(size, aa)
    return _box_down(_object_mask_hr(scene, scene_params(scene.seed), size * aa), aa)


def _object_mask_hr(scene: Scene, params: SceneParams, resolution: int) -> np.ndarray:
    canvas = Image.new("L", (resolution, resolution), 0)
    if scene.object is not None:
        pts = object_polygon(scene.object, params) * resolution
        ImageDraw.Draw(canvas).polygon([tuple(p) for p in pts], fill=255)
    return np.asarray(canvas, dtype=np.float32) / 255.0


def _box_down(a: np.ndarray, aa: int) -> np.ndarray:
    if aa == 1:
        return a
    h, w = a.shape[:2]
    return a.reshape(h // aa, aa, w // aa, aa, *a.shape[2:]).mean(axis=(1, 3))


def check_size(size: int, aa: int) -> None:
    """Raise ``ValueError`` unless ``size`` is an integer in [8, 1024] and ``aa`` one in [1, 16]."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 8 <= size <= 1024:
        raise ValueError(f"image size {size!r} must be an integer in [8, 1024]")
    if isinstance(aa, bool) or not isinstance(aa, (int, np.integer)) or not 1 <= aa <= 16:
        raise ValueError(f"supersampling factor aa={aa!r} must be an integer in [1, 16]")


def style_pattern(scene: Scene, size: int = 64, aa: int = 4) -> np.ndarray:
    """The style's coverage P(x, y) box-filtered to ``size``, float32 (size, size) in [0, 1], or zeros."""
    check_size(size, aa)
    x, y = _pixel_grid(size * aa)
    if scene.style is None:
        return np.zeros((size, size), dtype=np.float32)
    return _box_down(_PATTERNS[scene.style](x, y, scene_params(scene.seed)), aa)


def render(scene: Scene, size: int = 64, aa: int = 4) -> np.ndarray:
    """Draw ``scene`` as an RGB uint8 array (size, size, 3); the same scene always gives the same pixels.

    The object (colour ``params.colour``) is composited over a plain background, then the style's pattern P is
    painted over everything: ``pixel = (1 - depth * P) * base + depth * P * ink``. The object stays visible
    because its colour differs from the background by at least ``MIN_COLOUR_DISTANCE``; the style is visible
    everywhere.
    """
    check_size(size, aa)
    params = scene_params(scene.seed)
    resolution = size * aa
    mask = _object_mask_hr(scene, params, resolution)[..., None]  # (R, R, 1)
    background, colour = np.asarray(params.background, np.float32), np.asarray(params.colour, np.float32)
    base = (1 - mask) * background + mask * colour  # (R, R, 3)
    if scene.style is not None:
        x, y = _pixel_grid(resolution)
        cover = params.depth * _PATTERNS[scene.style](x, y, params)[..., None]  # (R, R, 1)
        base = (1 - cover) * base + cover * np.asarray(params.ink, np.float32)
    return np.clip(np.rint(_box_down(base, aa) * 255), 0, 255).astype(np.uint8)  # (size, size, 3)


def render_pil(scene: Scene, size: int = 64, aa: int = 4) -> Image.Image:
    """:func:`render` as a PIL RGB image."""
    return Image.fromarray(render(scene, size, aa), mode="RGB")


def image_grid(images: np.ndarray, columns: int, pad: int = 2) -> Image.Image:
    """Contact sheet of uint8 images (N, H, W, 3), ``columns`` per row, white padding."""
    n, h, w, _ = images.shape
    rows = math.ceil(n / columns)
    sheet = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, 3), 255, np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, columns)
        sheet[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = im
    return Image.fromarray(sheet)


def preview_grid(
    seed: int = 0,
    size: int = 64,
    styles: Sequence[Optional[str]] = STYLES,
    objects: Sequence[Optional[str]] = OBJECTS,
    pad: int = 2,
) -> Image.Image:
    """Contact sheet: a row per style, a column per object; cell ``k`` (row-major) has seed ``seed + k``."""
    cells = [
        render(Scene(s, o, seed + r * len(objects) + c), size)
        for r, s in enumerate(styles)
        for c, o in enumerate(objects)
    ]
    return image_grid(np.stack(cells), len(objects), pad)
