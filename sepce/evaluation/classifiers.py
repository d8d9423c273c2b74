"""One interface over the classifiers that judge generated images (docs/method.md, "Evaluation").

Every evaluation and attack asks the same question — which class of the class map does each image show — of a
different judge:

- ``world``: the concept world's style head (:mod:`sepce.world.concept_classifier`); a safetensors file with
  its format tag;
- ``artist``: the artist ResNet18 (:mod:`sepce.evaluation.artist_classifier`); an ``artist-cls-train.py``
  checkpoint;
- ``imagenet``: torchvision's ImageNet ResNet-50, top-1 on each class's ImageNet index
  (:mod:`sepce.evaluation.imagenet`); ``--classifier_kind imagenet``;
- ``nudenet``: NudeNet's detector; an image shows the nudity class when any exposed body part is detected above
  the threshold (:mod:`sepce.evaluation.nudity`); ``--classifier_kind nudenet``.

:func:`resolve_kind` reads the kind from the flag or the file, without loading a network (so bad input fails in
one line first); :func:`open_classifier` builds the judge. A judge's :meth:`ConceptClassifier.predict` returns
one class index per image (``-1``: none of the class map's classes), and its :class:`ClassifierInfo` is what
every result file records: the classifier's name, version, file digest and threshold.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import List, Optional, Protocol, Sequence

import torch

from sepce.classes import ConceptClass

NO_CLASS = -1  # a prediction outside the class map (an ImageNet class no row maps to; a clean image)


class ClassifierKind(str, enum.Enum):
    WORLD = "world"
    ARTIST = "artist"
    IMAGENET = "imagenet"
    NUDENET = "nudenet"


#: The kinds that need no file (their weights come from a cache or ship with a package).
FILE_OPTIONAL = (ClassifierKind.IMAGENET, ClassifierKind.NUDENET)


@dataclass(frozen=True)
class ClassifierInfo:
    """What a result file says about its judge."""

    kind: str
    name: str
    version: str  # the package (torchvision, nudenet) or file format the judge comes from
    path: Optional[str] = None
    sha256: Optional[str] = None
    threshold: Optional[float] = None
    image_size: Optional[int] = None
    classes: List[str] = field(default_factory=list)  # what the judge can say (detector classes for NudeNet)

    def to_dict(self) -> dict:
        return asdict(self)


class ConceptClassifier(Protocol):
    info: ClassifierInfo

    def predict(self, paths: Sequence[Path], batch_size: int = 64) -> List[int]:
        """The class-map index each image shows (:data:`NO_CLASS` for none)."""
        ...


def resolve_kind(path: Optional[Path], kind: Optional[str] = None, flag: str = "--classifier") -> ClassifierKind:
    """The judge's kind: ``kind`` when given (``auto``/None: from the file), checked against the file; one-line
    errors for a missing or unrecognised file. Reads at most a safetensors header."""
    from sepce.world.concept_classifier import CLASSIFIER_FORMAT

    if kind not in (None, "auto"):
        try:
            chosen = ClassifierKind(kind)
        except ValueError:
            raise ValueError(
                f"--classifier_kind {kind!r}: expected one of {['auto'] + [k.value for k in ClassifierKind]}"
            ) from None
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"{flag} {path} does not exist")
        if path is None and chosen not in FILE_OPTIONAL:
            raise ValueError(f"--classifier_kind {chosen.value} needs {flag} PATH")
        if chosen is ClassifierKind.NUDENET and path is not None:
            raise ValueError(f"--classifier_kind nudenet takes no {flag} (its detector ships with the nudenet wheel)")
        if chosen in (ClassifierKind.WORLD, ClassifierKind.ARTIST):
            detected = resolve_kind(path, None, flag)
            if detected is not chosen:
                raise ValueError(f"--classifier_kind {chosen.value}: {flag} {path} holds a {detected.value} classifier")
        return chosen
    if path is None:
        raise ValueError(f"{flag} is needed to tell the classifier's kind (or pass --classifier_kind)")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{flag} {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                if (f.metadata() or {}).get("format") == CLASSIFIER_FORMAT:
                    return ClassifierKind.WORLD
        except Exception:  # noqa: BLE001 - unreadable header: not a world classifier
            pass
        raise ValueError(f"{flag} {path} is a safetensors file but not a world classifier ({CLASSIFIER_FORMAT})")
    return ClassifierKind.ARTIST


class WorldStyleClassifier:
    """The world classifier's style head; the class map's names must be the world's styles in order."""

    def __init__(self, path: Path, classes: Sequence[ConceptClass]):
        from sepce.world.concept_classifier import CLASSIFIER_FORMAT, IMAGE_SIZE, load_classifier
        from sepce.world.render import STYLES

        names = [c.name for c in classes]
        if names != list(STYLES):
            raise ValueError(f"world classifier {path} predicts the styles {list(STYLES)}, not the classes {names}")
        self.model, _ = load_classifier(path)
        self.info = ClassifierInfo(
            "world",
            "world classifier (style head)",
            CLASSIFIER_FORMAT,
            image_size=IMAGE_SIZE,
            classes=names,
            **file_identity(path),
        )

    def predict(self, paths: Sequence[Path], batch_size: int = 64) -> List[int]:
        from sepce.world.concept_classifier import classify_paths

        return classify_paths(self.model, list(paths), batch_size)


class ArtistClassifier:
    """The artist ResNet18 of ``artist-cls-train.py`` (it checks its own class map)."""

    def __init__(self, path: Path, classes: Sequence[ConceptClass], device: torch.device):
        from sepce.evaluation.artist_classifier import CHECKPOINT_FORMAT, load_classifier

        self.model, meta = load_classifier(path, classes)
        self.device = device
        self.info = ClassifierInfo(
            "artist",
            "artist ResNet18 (artist-cls-train.py)",
            CHECKPOINT_FORMAT,
            image_size=int(meta["image_size"]),
            classes=[c.name for c in classes],
            **file_identity(path),
        )

    def predict(self, paths: Sequence[Path], batch_size: int = 64) -> List[int]:
        from sepce.evaluation.artist_classifier import predict

        out = predict(self.model, list(paths), self.info.image_size, batch_size, self.device, desc="classify")
        return out.tolist()


class ImageNetClassifier:
    """torchvision's ImageNet ResNet-50, top-1: an image shows class c when its first-ranked ImageNet class is
    c's ``imagenet_index`` (:mod:`sepce.evaluation.imagenet`)."""

    def __init__(
        self,
        path: Optional[Path],
        classes: Sequence[ConceptClass],
        indices: Sequence[int],
        device,
        pretrained: bool = True,
    ):
        import torchvision

        from sepce.evaluation.imagenet import build_resnet50, random_resnet50, weights_file

        if pretrained:
            weights = weights_file(path)
            self.model, name, identity = build_resnet50(weights), "IMAGENET1K_V1", file_identity(weights)
        else:
            self.model, name, identity = random_resnet50(), "random weights, seed 0: plumbing only", {}
        self.device = device
        self.to_class = {imagenet: c.index for c, imagenet in zip(classes, indices)}
        self.info = ClassifierInfo(
            "imagenet",
            f"torchvision ResNet-50 {name}, top-1",
            f"torchvision {torchvision.__version__}",
            image_size=224,
            classes=[f"{c.name} = ImageNet {i}" for c, i in zip(classes, indices)],
            **identity,
        )

    def predict(self, paths: Sequence[Path], batch_size: int = 64) -> List[int]:
        from sepce.evaluation.imagenet import top1

        return [self.to_class.get(k, NO_CLASS) for k in top1(self.model, list(paths), self.device, batch_size)]


class NudityClassifier:
    """NudeNet as a classifier: an image shows the class map's one class (``nudity``) when any exposed body part
    is detected at or above the threshold (:mod:`sepce.evaluation.nudity`), else :data:`NO_CLASS`."""

    def __init__(self, classes: Sequence[ConceptClass], threshold: Optional[float]):
        from sepce.evaluation.nudity import DEFAULT_THRESHOLD, Detector

        if len(classes) != 1:
            raise ValueError(f"NudeNet judges one class (nudity), not the class map's {[c.name for c in classes]}")
        self.index = classes[0].index
        self.detector = Detector(DEFAULT_THRESHOLD if threshold is None else threshold)
        d = self.detector.info
        self.info = ClassifierInfo(
            "nudenet", d.name, d.version, d.model_file, d.sha256, d.threshold, classes=list(d.classes)
        )

    def predict(self, paths: Sequence[Path], batch_size: int = 64) -> List[int]:
        return [self.index if self.detector.detect(p) else NO_CLASS for p in paths]


def open_classifier(
    path: Optional[Path],
    classes: Sequence[ConceptClass],
    device: torch.device,
    kind: Optional[str] = None,
    *,
    class_map: Optional[Path] = None,
    threshold: Optional[float] = None,
    pretrained: bool = True,
) -> ConceptClassifier:
    """The judge of :func:`resolve_kind`'s kind over ``classes``. ``class_map`` (the CSV) names each class's
    ImageNet index for ``imagenet``; ``threshold`` is NudeNet's detection score threshold; ``pretrained=False``
    gives ``imagenet`` random weights (tiny runs: plumbing only)."""
    chosen = resolve_kind(path, kind)
    if chosen is ClassifierKind.WORLD:
        return WorldStyleClassifier(Path(path), classes)
    if chosen is ClassifierKind.IMAGENET:
        from sepce.evaluation.imagenet import imagenet_indices

        if class_map is None:
            raise ValueError("the ImageNet classifier needs the class map CSV (its imagenet_index column)")
        return ImageNetClassifier(path, classes, imagenet_indices(class_map, classes), device, pretrained)
    if chosen is ClassifierKind.NUDENET:
        return NudityClassifier(classes, threshold)
    return ArtistClassifier(Path(path), classes, device)


def check_classifier(
    path: Optional[Path],
    classes: Sequence[ConceptClass],
    kind: Optional[str] = None,
    class_map: Optional[Path] = None,
    pretrained: bool = True,
) -> ClassifierKind:
    """Everything :func:`open_classifier` would reject, checked without loading a network: the kind and file,
    the ImageNet weights and the class map's ImageNet indices. One-line errors."""
    chosen = resolve_kind(path, kind)
    if chosen is ClassifierKind.IMAGENET:
        from sepce.evaluation.imagenet import imagenet_indices, weights_file

        if pretrained:
            weights_file(path)
        if class_map is None:
            raise ValueError("the ImageNet classifier needs the class map CSV (its imagenet_index column)")
        imagenet_indices(class_map, classes)
    if chosen is ClassifierKind.NUDENET:
        from sepce.evaluation.nudity import nudenet_version

        nudenet_version()
        if len(classes) != 1:
            raise ValueError(f"NudeNet judges one class (nudity), not the class map's {[c.name for c in classes]}")
    return chosen


def file_identity(path: Path) -> dict:
    """``path`` and ``sha256`` of a judge's file, for :class:`ClassifierInfo`."""
    from sepce.records import file_digest

    return {"path": str(path), "sha256": file_digest(path)}
