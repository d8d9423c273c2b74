"""Prompts in words for the concept world, their parser, caption sampling for training, and the class maps.

Prompt forms (``build_prompt``; :func:`parse_prompt` reads every one of them back):

====================  ======================================  =========================================
form                  example                                 meaning
====================  ======================================  =========================================
full                  ``a star in the style of stripes``      that object in that style
object only           ``a star`` / ``an arrow``               that object, style unspecified (any)
style only            ``in the style of stripes``             that style, object unspecified (any)
style only (suffix)   ``stripes style``                       same as above
blank                 ``""``                                  anything
====================  ======================================  =========================================

A prompt that leaves a concept out does NOT mean "plain": every image of the world has a style and an object,
and a caption that omits one simply under-describes the image (as real captions do), so ``"a star"`` is
trained on stars in all styles. :func:`sample_prompt` draws such captions for training.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from sepce.io import write_text
from sepce.paths import DATA_DIR
from sepce.world.render import OBJECTS, STYLES

STYLE_PROMPT = "in the style of {style}"  # the style-only prompt, also the prompt of each style class
STYLE_SUFFIX_PROMPT = "{style} style"
STYLE_FORMS = ("of", "suffix")

STYLE_CLASS_MAP = DATA_DIR / "world" / "classes.csv"
OBJECT_CLASS_MAP = DATA_DIR / "world" / "object-classes.csv"
CLASS_MAP_KINDS = ("style", "object")


def concepts() -> dict[str, tuple[str, ...]]:
    """The world's concepts by kind, ``{"style": STYLES, "object": OBJECTS}``, each in class-index order."""
    return {"style": STYLES, "object": OBJECTS}


def article(obj: str) -> str:
    """``"an"`` before a vowel (``an arrow``), else ``"a"``."""
    return "an" if obj[:1] in "aeiou" else "a"


def build_prompt(style: Optional[str] = None, obj: Optional[str] = None, style_form: str = "of") -> str:
    """The prompt for a style and/or object (``None`` leaves that concept out; both ``None`` gives ``""``).

    ``style_form`` picks the style-only wording: ``"of"`` -> ``in the style of <style>``, ``"suffix"`` ->
    ``<style> style``. The full prompt is always ``a <object> in the style of <style>``.
    """
    if style is not None and style not in STYLES:
        raise ValueError(f"unknown style {style!r}; expected one of {list(STYLES)}")
    if obj is not None and obj not in OBJECTS:
        raise ValueError(f"unknown object {obj!r}; expected one of {list(OBJECTS)}")
    if style_form not in STYLE_FORMS:
        raise ValueError(f"unknown style_form {style_form!r}; expected one of {list(STYLE_FORMS)}")
    if obj is not None and style is not None:
        return f"{article(obj)} {obj} {STYLE_PROMPT.format(style=style)}"
    if obj is not None:
        return f"{article(obj)} {obj}"
    if style is not None:
        return (STYLE_PROMPT if style_form == "of" else STYLE_SUFFIX_PROMPT).format(style=style)
    return ""


def _alternation(words: tuple[str, ...]) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


_STYLE = f"(?P<style>{_alternation(STYLES)})"
_OBJECT = f"(?P<object>{_alternation(OBJECTS)})"
_PATTERNS = [
    re.compile(rf"(?:an? )?{_OBJECT} in the style of {_STYLE}"),
    re.compile(rf"(?:an? )?{_OBJECT}"),
    re.compile(rf"(?:in the style of )?{_STYLE}"),
    re.compile(rf"{_STYLE} style"),
]


def parse_prompt(prompt: str) -> tuple[Optional[str], Optional[str]]:
    """Read a prompt back into ``(style, object)``; a concept the prompt leaves out comes back as ``None``.

    Accepts every form :func:`build_prompt` writes, plus the bare concept name (``"stripes"``, ``"star"``) and
    an optional article; case and repeated spaces are ignored. Anything else raises ``ValueError``.
    """
    text = " ".join(str(prompt).lower().split())
    if not text:
        return None, None
    for pattern in _PATTERNS:
        m = pattern.fullmatch(text)
        if m:
            groups = m.groupdict()
            return groups.get("style"), groups.get("object")
    raise ValueError(
        f"cannot parse prompt {prompt!r}; expected 'a <object> in the style of <style>', 'a <object>', "
        f"'in the style of <style>', '<style> style' or ''; styles {list(STYLES)}, objects {list(OBJECTS)}"
    )


@dataclass(frozen=True)
class PromptMix:
    """Probabilities of each caption form when :func:`sample_prompt` describes a training image.

    ``blank`` doubles as the classifier-free-guidance dropout rate (Ho & Salimans 2022, "Classifier-Free
    Diffusion Guidance"); ``object_only`` and ``style_only`` teach the single-concept prompts.
    """

    full: float = 0.6
    object_only: float = 0.15
    style_only: float = 0.15
    blank: float = 0.1

    def __post_init__(self) -> None:
        probs = self.probabilities()
        if min(probs) < 0 or abs(sum(probs) - 1) > 1e-6:
            raise ValueError(f"prompt mix {probs} must be non-negative and sum to 1")

    def probabilities(self) -> tuple[float, float, float, float]:
        return (self.full, self.object_only, self.style_only, self.blank)


def sample_prompt(style: str, obj: str, rng: np.random.Generator, mix: PromptMix = PromptMix()) -> str:
    """A random caption of an image showing ``obj`` in ``style`` (forms drawn by ``mix``; style-only wording
    50/50)."""
    form = rng.choice(4, p=mix.probabilities())
    if form == 0:
        return build_prompt(style, obj)
    if form == 1:
        return build_prompt(None, obj)
    if form == 2:
        return build_prompt(style, None, STYLE_FORMS[int(rng.integers(2))])
    return ""


def class_map_rows(kind: str = "style") -> list[tuple[int, str, str]]:
    """``(index, name, prompt)`` rows of the world's class map.

    ``"style"``: one class per style, prompt ``in the style of <style>``; ``"object"``: one class per object,
    prompt ``a <object>``. There is no blank class: in this world a blank prompt draws a random style and
    object, so it is not a visual class of its own (unlike Stable Diffusion's blank-prompt images in
    ``data/classes.csv``).
    """
    if kind == "style":
        return [(i, s, build_prompt(s, None)) for i, s in enumerate(STYLES)]
    if kind == "object":
        return [(i, o, build_prompt(None, o)) for i, o in enumerate(OBJECTS)]
    raise ValueError(f"unknown class map kind {kind!r}; expected one of {list(CLASS_MAP_KINDS)}")


def class_map_csv(kind: str = "style") -> str:
    """The class map as CSV text (columns ``index,name,prompt``, the format of ``data/classes.csv``)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["index", "name", "prompt"])
    writer.writerows(class_map_rows(kind))
    return buf.getvalue()


def write_class_map(path: str | Path, kind: str = "style", overwrite: bool = True) -> Path:
    """Atomically write :func:`class_map_csv` to ``path``."""
    return write_text(path, class_map_csv(kind), overwrite=overwrite)
