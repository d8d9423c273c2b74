"""A concept world that fits on a CPU: procedural 64x64 images of objects painted in styles.

The world stands in for Stable Diffusion's artist styles when there is no GPU and no pretrained weights: a
small latent diffusion model is trained on it in minutes, and the erasure methods are checked on it with
numbers (erase the style "stripes": images prompted with it should no longer be classified as stripes, while
other styles and objects are still drawn correctly).

Concepts
--------
Every image shows one **object** painted in one **style** (8 x 8 = 64 combinations)::

    styles  (STYLES):  stripes  dots  checker  waves  grid  rings  noise  gradient
    objects (OBJECTS): circle  square  triangle  star  cross  heart  moon  arrow

A style is a pattern P(x, y) painted over the whole scene, background and object alike, in a dark "ink":
``pixel = (1 - depth * P) * base + depth * P * ink``. Stripes are straight bands, waves are sinusoidally bent
bands, checker alternates squares, grid is thin crossing lines, dots are a lattice of discs, rings are
concentric circles, noise is random square blocks, gradient is a smooth ramp. An object is a filled shape of
one colour. Random per image (all drawn from the scene seed, none from the concepts): object position, size
(42-68 % of the image), rotation (+-20 degrees) and colour; background colour (at least 0.55 RGB-distance
from the object's); ink colour and depth; pattern angle, period, phase and centre. Pattern periods are
fractions of the image width (13-27 %; checker cells 11-17 %, noise blocks 9-12 %), so every concept is
still recognisable at 32x32 (``render(scene, size=32)``). The same seed with other concepts keeps layout and
colours, which makes side-by-side comparisons easy.

Rendering
---------
``render(Scene(style, object, seed), size=64)`` returns an RGB uint8 array (size, size, 3), identical for
identical arguments. ``render_pil`` gives a PIL image, ``preview_grid`` a contact sheet (row per style,
column per object), ``object_mask`` / ``style_pattern`` the ground-truth coverage maps.
``Scene(None, object, seed)`` draws no texture and ``Scene(style, None, seed)`` no object (the datasets never
do either).

Prompts
-------
``build_prompt(style, object)`` / ``parse_prompt(text)``:

- ``a star in the style of stripes`` -- the full prompt (``an arrow ...`` before a vowel);
- ``a star`` -- object only; ``in the style of stripes`` or ``stripes style`` -- style only;
- ``""`` -- the blank prompt.

Leaving a concept out means "unspecified", not "plain": every image has a style and an object, and a caption
that omits one just under-describes it. ``sample_prompt(style, object, rng)`` draws a caption per training
step (by default 60 % full, 15 % object only, 15 % style only, 10 % blank = the classifier-free guidance
dropout).

Class maps (format of ``data/classes.csv``: ``index,name,prompt``)
-----------------------------------------------------------------
- ``data/world/classes.csv`` -- one class per style, index = position in ``STYLES``, prompt
  ``in the style of <style>`` (the prompt to erase a style with and to generate its evaluation images).
- ``data/world/object-classes.csv`` -- one class per object, prompt ``a <object>``.

Neither has a blank class: a blank prompt yields a random style and object here, so it is not a visual class.
``class_map_rows`` / ``write_class_map`` produce both files; ``make_dataset`` copies them into each dataset.

Datasets
--------
``python train-scripts/make-world-data.py --out data/world/train --num_images 6400 --seed 0 --size 64``
writes ``images/000000.png ...``, ``metadata.csv`` (``file,style,object,prompt,seed``; the full prompt),
``world.json`` (the settings) and both class maps. Image ``i`` shows combination ``i mod 64`` (styles varying
slowest), so any multiple of 64 images is balanced; its scene seed is ``image_seed(seed, i)``, and
``render(Scene(style, object, seed), size)`` re-creates it from its metadata row. Re-running with the same
arguments resumes an interrupted run; other arguments on an existing folder need ``--overwrite``.
``make_arrays(n, seed, size)`` builds the same data in memory and ``random_batch(rng, n, size)`` fresh random
scenes for endless training data (about 5 ms per 64 px image and 1.5 ms per 32 px image on one core).
"""

from sepce.world.dataset import (
    METADATA_COLUMNS,
    WORLD_VERSION,
    WorldArrays,
    dataset_scene,
    image_seed,
    load_images,
    make_arrays,
    make_dataset,
    random_batch,
    read_metadata,
    render_scenes,
)
from sepce.world.prompts import (
    OBJECT_CLASS_MAP,
    STYLE_CLASS_MAP,
    PromptMix,
    build_prompt,
    class_map_csv,
    class_map_rows,
    concepts,
    parse_prompt,
    sample_prompt,
    write_class_map,
)
from sepce.world.render import (
    OBJECTS,
    STYLES,
    Scene,
    SceneParams,
    object_mask,
    preview_grid,
    render,
    render_pil,
    scene_params,
    style_pattern,
)

__all__ = [
    "METADATA_COLUMNS",
    "OBJECTS",
    "OBJECT_CLASS_MAP",
    "STYLES",
    "STYLE_CLASS_MAP",
    "WORLD_VERSION",
    "PromptMix",
    "Scene",
    "SceneParams",
    "WorldArrays",
    "build_prompt",
    "class_map_csv",
    "class_map_rows",
    "concepts",
    "dataset_scene",
    "image_seed",
    "load_images",
    "make_arrays",
    "make_dataset",
    "object_mask",
    "parse_prompt",
    "preview_grid",
    "random_batch",
    "read_metadata",
    "render",
    "render_pil",
    "render_scenes",
    "sample_prompt",
    "scene_params",
    "style_pattern",
    "write_class_map",
]
