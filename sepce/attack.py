"""Concept-inversion attack: teach a (possibly erased) model a new word for a concept (docs/method.md,
"Concept-inversion attack"; Pham et al., "Circumventing Concept Erasure Methods for Text-to-Image Generative
Models", ICLR 2024, which applies textual inversion, Gal et al. 2023, Eq. 2, to erased models).

The learned word
----------------
One new token embedding ``v*`` (the width of the text encoder's token embeddings: 768 in SD v1.4) is initialised
from the embedding of a neutral single-token word (``AttackPreset.init_word``). Prompts carry the placeholder
:data:`PLACEHOLDER` (``in the style of <v*>``); they are tokenized with the init word in its place, and a forward
hook on the text encoder's token-embedding table replaces the init word's row at exactly those positions by
``v*`` (:func:`substituted`). With ``v*`` equal to the init word's embedding the conditioning is therefore
bit-identical to the plain prompt's, and the model's vocabulary and weights are never changed.

Training (:func:`train_word`)
-----------------------------
Textual inversion's objective (Gal et al. 2023, Eq. 2) is LatentDiffusion's ε-loss
``‖ε − ε_θ(x_t, t, c(template with v*))‖²`` (``LatentDiffusion.p_losses``) with everything but ``v*`` frozen:
per step a batch of training images (:class:`sepce.training.ImageFolder`: images the ORIGINAL model generated
for the concept, ``<data_dir>/<prompt>/``), ``z`` = posterior sample × scale_factor (each image's posterior is
computed once, :class:`TrainingLatents`), ``t ~ U{0..T−1}`` per image, fresh noise, and per image a template
drawn uniformly from the domain's fixed list (:data:`TEMPLATES`). Adam (the shared
:class:`sepce.training.ParameterTrainer`, gradients zeroed every step). Steps, batch size, learning rate, seed
and init word are ONE preset per domain (:data:`PRESETS`), the same for every erasure method.

Generation (:class:`AttackSampler`)
-----------------------------------
The evaluation CSV's rows of the concept's class with the concept's words replaced by ``<v*>``
(:func:`attack_rows`), sampled by :class:`sepce.generation.ImageSampler` with the same start noise convention
as ``generate-images.py`` (:func:`sepce.generation.case_noise`), so attack image ``<case>_<k>.png`` pairs with the
model's own-prompt image of the same name.

Files
-----
``<model folder>/attack/embedding-<concept>.safetensors`` (:func:`embedding_path`, :func:`save_word` /
:func:`load_word`; one per attacked concept): the tensor ``embedding`` (D,), the loss history ``losses`` and
metadata (init word, token width, preset, templates, the model it was learned on, its base checkpoint digest, a
loss summary). ``<model folder>/attack/<case>_<k>.png``: the attack images of every attacked concept (cases are
distinct). ``<model folder>/results/attack.csv/json`` (:mod:`sepce.evaluation.results`): the classifier's
accuracy on all of them per class, with each image's true and predicted class and each word's preset.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import re
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from sepce.classes import ConceptClass, classes_by_names, load_class_map
from sepce.cli import Runtime, add_classes, add_prompts_path
from sepce.evaluation.classifiers import ClassifierKind, open_classifier, resolve_kind
from sepce.generation import (
    GenerationSetup,
    ImageSampler,
    SamplingSettings,
    add_model_arguments,
    add_output_arguments,
    folder_settings,
    generation_setup,
    image_name,
    model_from_args,
    plan_jobs,
    png_text,
    run_jobs,
)
from sepce.generation import check_folder_settings as check_generation_settings
from sepce.io import atomic_write
from sepce.modeling import ResolvedModel, load_resolved, tokenizer_from_config
from sepce.paths import DATA_DIR, concept_slug
from sepce.prompt_csv import PromptRow, case_classes, read_prompt_csv
from sepce.training import ImageFolder, ParameterTrainer, TrainStep

log = logging.getLogger(__name__)

PLACEHOLDER = "<v*>"
EMBEDDING_FORMAT = "sepce-attack-embedding-v1"
ATTACK_DIR = "attack"
EMBEDDING_PREFIX = "embedding-"
RESULTS_METRIC = "attack"
RESULT_COLUMNS = ["class", "name", "correct", "images", "accuracy_pct"]
DOMAINS = ("sd", "world")

#: Training prompts per domain, fixed: ``<v*>`` stands where the concept's words were. SD: the bare name (how the
#: paper's training images were prompted) and the style phrasings of textual inversion's template list; the
#: world: its two style-only phrasings (``sepce.world.prompts``), the only ones its model was trained on.
TEMPLATES = {
    "sd": (
        PLACEHOLDER,
        f"a painting in the style of {PLACEHOLDER}",
        f"a painting by {PLACEHOLDER}",
        f"an artwork by {PLACEHOLDER}",
        f"a picture in the style of {PLACEHOLDER}",
        f"a rendering in the style of {PLACEHOLDER}",
    ),
    "world": (f"in the style of {PLACEHOLDER}", f"{PLACEHOLDER} style"),
}


@dataclass(frozen=True)
class AttackPreset:
    """Optimisation settings of the attack, one per domain and shared by every method (docs/method.md); the
    values live in :data:`PRESETS`."""

    steps: int
    batch_size: int
    lr: float
    seed: int
    init_word: str

    def validate(self) -> AttackPreset:
        for name in ("steps", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"--attack_{name} {value!r}: expected a positive integer")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"--attack_lr {self.lr!r}: expected a positive number")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"--attack_seed {self.seed!r}: expected a non-negative integer")
        if not str(self.init_word).strip() or PLACEHOLDER in self.init_word:
            raise ValueError(f"--init_word {self.init_word!r}: expected one word (a single CLIP token)")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


#: The presets. World: tuned on the ORIGINAL world model (the attack's ceiling) with the world benchmark's held-out
#: styles grid, noise and stripes (sepce.world.benchmark.HELD_OUT), never on reported styles; accuracy of the world
#: classifier on 16-32 attack images per style, DDIM 50, guidance 7.5. Init word "art": at 200 steps, lr 5e-3 /
#: 2e-2 / 5e-2 gave grid 50 / 69 / 63 % and noise 94 / 100 / 100 % (own prompt 100 %); with lr 2e-2, grid went
#: 72 / 75 / 72 / 97 % at 100 / 200 / 300 / 400 steps. 400 steps took 1.5-2 min on the shared 2-core machine, over
#: the minute the world preset may take; 200 steps take 24-35 s. "art" alone draws "noise" in 14 of 32 images
#: (``in the style of art``, 32 seeds); "thing" is the most neutral of the words tried (art, pattern, texture,
#: thing, painting, *, sks, object: at most 9 of 32 images in one style) and gave grid 84 / 78 % and noise 100 / 100 %
#: at 100 / 200 steps. Stripes is not recovered at any setting tried (0-9 %, its attack images read as rings): on
#: stripes images the ε-loss is lower with the "rings" token (0.0763) than with "stripes" (0.0782) and the learned
#: word reaches 0.0720, so the objective itself points elsewhere on this model (a limit of the attack here, not of
#: the optimiser).
#: SD: not tuned here (no SD weights on this machine): batch 4 and a learning rate between diffusers' textual
#: inversion default (2e-3 effective) and the paper's (Gal et al. 2023: 5e-3 base, 4e-2 effective), 1000 steps.
PRESETS = {
    "world": AttackPreset(steps=200, batch_size=4, lr=2e-2, seed=0, init_word="thing"),
    "sd": AttackPreset(steps=1000, batch_size=4, lr=5e-3, seed=0, init_word="art"),
}


# ------------------------------------------------------------------------------------------------ text encoder
def text_encoder(model: torch.nn.Module) -> torch.nn.Module:
    """The model's CLIP text encoder (``cond_stage_model``, a ``FrozenCLIPEmbedder``)."""
    encoder = getattr(model, "cond_stage_model", None)
    table = getattr(getattr(getattr(encoder, "transformer", None), "embeddings", None), "token_embedding", None)
    if not isinstance(table, torch.nn.Embedding) or not hasattr(encoder, "tokenizer"):
        raise ValueError(
            f"the attack needs a CLIP text encoder (ldm FrozenCLIPEmbedder) as cond_stage_model, not "
            f"{type(encoder).__name__}"
        )
    return encoder


def token_table(model: torch.nn.Module) -> torch.nn.Embedding:
    """The token-embedding table ``cond_stage_model.transformer.embeddings.token_embedding`` (vocab × D)."""
    return text_encoder(model).transformer.embeddings.token_embedding


def word_token(tokenizer, word: str) -> int:
    """The id of ``word``, which must be exactly one CLIP token (else a one-line ``ValueError``)."""
    ids = tokenizer.encode(word)
    if len(ids) != 1:
        pieces = [tokenizer.decode([i]) for i in ids]
        raise ValueError(f"--init_word {word!r} is {len(ids)} CLIP tokens {pieces}; expected a single-token word")
    return ids[0]


@dataclass
class Slots:
    """Prompts with the init word at each placeholder, and where those tokens sit."""

    texts: List[str]
    ids: torch.Tensor  # B N, the tokenizer's ids of ``texts``
    mask: torch.Tensor  # B N, True at placeholder positions


def slot_prompts(tokenizer, prompts: Sequence[str], init_word: str) -> Slots:
    """Put ``init_word`` at every :data:`PLACEHOLDER` of ``prompts`` and locate those tokens.

    A placeholder must stand as a word of its own (``'in the style of <v*>'``; not ``'x<v*>'``, which BPE would
    merge with its neighbours) and within the text encoder's context (``max_length − 2`` tokens). Prompts without
    a placeholder are encoded as they are (an all-False mask row)."""
    init_id = word_token(tokenizer, init_word)
    texts, masks = [], []
    for prompt in prompts:
        parts = prompt.split(PLACEHOLDER)
        expected: List[int] = []
        positions: List[int] = []
        for k, part in enumerate(parts):
            expected += tokenizer.encode(part)
            if k < len(parts) - 1:
                positions.append(len(expected))
                expected.append(init_id)
        text = init_word.join(parts)
        if tokenizer.encode(text) != expected:
            raise ValueError(f"prompt {prompt!r}: {PLACEHOLDER} must stand as a separate word")
        limit = tokenizer.max_length - 2
        if positions and positions[-1] >= limit:
            raise ValueError(
                f"prompt {prompt!r}: {PLACEHOLDER} falls beyond the text encoder's {limit} tokens; shorten the prompt"
            )
        mask = torch.zeros(tokenizer.max_length, dtype=torch.bool)
        mask[[1 + p for p in positions]] = True  # +1: the start token
        texts.append(text)
        masks.append(mask)
    return Slots(texts, tokenizer(texts), torch.stack(masks))


@contextlib.contextmanager
def substituted(model: torch.nn.Module, slots: Slots, vector: torch.Tensor) -> Iterator[None]:
    """Within the block, the text encoder's token embeddings at ``slots.mask`` are ``vector`` (gradients reach
    it); every other position is untouched."""
    table = token_table(model)

    def hook(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        ids = inputs[0]
        if ids.shape != slots.ids.shape or not torch.equal(ids.cpu(), slots.ids):
            raise RuntimeError("the text encoder was called with other tokens than the attack's slotted prompts")
        mask = slots.mask.to(output.device).unsqueeze(-1)  # B N 1
        return torch.where(mask, vector.to(output.device, output.dtype), output)  # B N D

    handle = table.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@dataclass
class LearnedWord:
    """``v*`` with the word it started from and the metadata of how it was learned."""

    vector: torch.Tensor  # D
    init_word: str
    meta: dict = field(default_factory=dict)
    losses: List[float] = field(default_factory=list)

    @classmethod
    def initial(cls, model: torch.nn.Module, init_word: str) -> LearnedWord:
        """``v*`` = the init word's token embedding (a float32 copy)."""
        token = word_token(text_encoder(model).tokenizer, init_word)
        return cls(token_table(model).weight[token].detach().float().clone(), init_word)

    def conditioning(self, model: torch.nn.Module, prompts: Sequence[str]) -> torch.Tensor:
        """``get_learned_conditioning(prompts)`` (B, N, D) with ``v*`` at every :data:`PLACEHOLDER`."""
        encoder = text_encoder(model)
        if self.vector.shape != (token_table(model).embedding_dim,):
            raise ValueError(
                f"learned embedding has shape {tuple(self.vector.shape)}, but the model's tokens are "
                f"{token_table(model).embedding_dim}-dimensional; it was learned on another text encoder"
            )
        slots = slot_prompts(encoder.tokenizer, prompts, self.init_word)
        with substituted(model, slots, self.vector):
            return model.get_learned_conditioning(slots.texts)


# ------------------------------------------------------------------------------------------------ training
@dataclass
class TrainResult:
    word: LearnedWord
    iterations: int
    stop_reason: str
    ok: bool
    seconds: float


def loss_summary(losses: Sequence[float]) -> dict:
    """First, last and minimum loss, and the means of the first and last tenth of the steps."""
    if not losses:
        return {"steps": 0}
    tenth = max(1, len(losses) // 10)
    return {
        "steps": len(losses),
        "first": losses[0],
        "last": losses[-1],
        "min": min(losses),
        "mean_first_tenth": sum(losses[:tenth]) / tenth,
        "mean_last_tenth": sum(losses[-tenth:]) / tenth,
    }


class TrainingLatents:
    """Latents of the training images: an image drawn uniformly (as :meth:`ImageFolder.sample`), its posterior
    computed on its first draw and kept, a fresh posterior sample × scale_factor on every draw. Equal in
    distribution to encoding the image on every draw (the encoder is deterministic; only the sample is random),
    without repeating the encoder's forward pass."""

    def __init__(self, model: torch.nn.Module, images: ImageFolder):
        self.model, self.images = model, images
        self._posteriors: dict = {}

    @torch.no_grad()
    def draw(self, generator: torch.Generator, device_generator: torch.Generator) -> torch.Tensor:
        """One latent (1, C, h, w); the image index from ``generator``, the posterior noise from
        ``device_generator``."""
        index = int(torch.randint(len(self.images), (1,), generator=generator))
        if index not in self._posteriors:
            first = next(self.model.first_stage_model.parameters())
            image = self.images.load(index).to(first.device, first.dtype)  # 1 3 S S
            self._posteriors[index] = self.model.encode_first_stage(image)
        return self.model.get_first_stage_encoding(self._posteriors[index], generator=device_generator)


def train_word(
    model: torch.nn.Module,
    images: ImageFolder,
    templates: Sequence[str],
    preset: AttackPreset,
    *,
    precision: torch.dtype = torch.float32,
    progress: bool = False,
    word: Optional[LearnedWord] = None,
    after_step: Optional[Callable[[int], None]] = None,
) -> TrainResult:
    """Learn ``v*`` on ``images`` (textual inversion, Gal et al. 2023 Eq. 2; see the module docstring).

    Every model parameter is frozen (``requires_grad=False``) and left unchanged; only ``v*`` is optimised.
    ``word`` continues from a given ``v*`` (default: the init word's embedding); ``after_step(i)`` is called after
    each optimizer step (timing, logging)."""
    preset.validate()
    if not templates or any(PLACEHOLDER not in t for t in templates):
        raise ValueError(f"every training template needs the placeholder {PLACEHOLDER}; got {list(templates)}")
    for p in model.parameters():
        p.requires_grad_(False)
    device = token_table(model).weight.device
    word = word or LearnedWord.initial(model, preset.init_word)
    vector = word.vector.detach().clone().to(device).requires_grad_(True)
    learning = LearnedWord(vector, word.init_word, dict(word.meta))
    tokenizer = text_encoder(model).tokenizer
    slot_prompts(tokenizer, templates, word.init_word)  # validate every template once
    generator = torch.Generator().manual_seed(preset.seed)
    device_generator = torch.Generator(device).manual_seed(preset.seed + 1)
    latents = TrainingLatents(model, images)
    losses: List[float] = []

    def step(i: int) -> TrainStep:
        z = torch.cat([latents.draw(generator, device_generator) for _ in range(preset.batch_size)])  # B C h w
        t = torch.randint(model.num_timesteps, (preset.batch_size,), generator=generator).to(device)  # B
        noise = torch.randn(z.shape, generator=device_generator, device=device, dtype=z.dtype)
        chosen = torch.randint(len(templates), (preset.batch_size,), generator=generator).tolist()
        cond = learning.conditioning(model, [templates[k] for k in chosen])  # B N D
        loss, _ = model.p_losses(z, cond, t, noise=noise)
        losses.append(float(loss.detach()))
        return TrainStep(loss)

    started = time.perf_counter()
    trainer = ParameterTrainer(
        [vector],
        lr=preset.lr,
        iterations=preset.steps,
        zero_grad=True,
        desc="attack",
        precision=precision,
        progress=progress,
    )
    fit = trainer.fit(step, (lambda i, _: after_step(i)) if after_step else None)
    seconds = time.perf_counter() - started
    done = losses[: fit.iterations]
    learned = LearnedWord(vector.detach().cpu().clone(), word.init_word, dict(word.meta), done)
    learned.meta.update(preset=preset.to_dict(), templates=list(templates), loss=loss_summary(done))
    return TrainResult(learned, fit.iterations, fit.stop_reason, fit.ok, seconds)


# ------------------------------------------------------------------------------------------------ files
def save_word(path: Path, word: LearnedWord, overwrite: bool = True) -> Path:
    """A learned word's file: ``embedding`` (D,), ``losses`` (steps,) and JSON metadata (atomic write)."""
    from safetensors.torch import save_file

    tensors = {
        "embedding": word.vector.detach().float().cpu().contiguous(),
        "losses": torch.tensor(word.losses, dtype=torch.float32),
    }
    meta = {
        "format": EMBEDDING_FORMAT,
        "init_word": word.init_word,
        "token_width": str(int(word.vector.numel())),
        "meta": json.dumps(word.meta, sort_keys=True, default=str),
    }
    return atomic_write(path, lambda p: save_file(tensors, str(p), metadata=meta), overwrite=overwrite)


def load_word(path: Path) -> LearnedWord:
    """Read :func:`save_word`'s file back (one-line errors for a missing or foreign file)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"learned embedding {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as error:
        raise ValueError(f"cannot read learned embedding {path}: {str(error)[:200]}") from None
    if meta.get("format") != EMBEDDING_FORMAT or "embedding" not in tensors:
        raise ValueError(f"{path} is not a learned attack embedding (format {meta.get('format')!r})")
    vector = tensors["embedding"]
    if vector.ndim != 1 or vector.numel() != int(meta["token_width"]):
        raise ValueError(f"{path}: embedding shape {tuple(vector.shape)} does not match token_width")
    losses = tensors.get("losses", torch.empty(0)).tolist()
    return LearnedWord(vector, meta["init_word"], json.loads(meta.get("meta", "{}")), losses)


# ------------------------------------------------------------------------------------------------ prompts
def concept_words(concept: ConceptClass) -> str:
    """The words of a class that the attack replaces: its name where the class prompt contains it (``waves`` in
    ``in the style of waves``), else the whole class prompt."""
    if not concept.prompt:
        raise ValueError(f"class {concept.name!r} has an empty prompt: there are no concept words to replace")
    return concept.name if _words_pattern(concept.name).search(concept.prompt) else concept.prompt


def _words_pattern(words: str) -> re.Pattern:
    body = r"\s+".join(re.escape(w) for w in words.split())
    return re.compile(rf"(?<!\w){body}(?!\w)", re.IGNORECASE)


def replace_words(prompt: str, words: str) -> str:
    """``prompt`` with every occurrence of ``words`` (whole words, any case) replaced by :data:`PLACEHOLDER`."""
    new, count = _words_pattern(words).subn(PLACEHOLDER, prompt)
    if not count:
        raise ValueError(f"prompt {prompt!r} does not contain the concept's words {words!r}")
    return new


def attack_rows(rows: Sequence[PromptRow], concept: ConceptClass) -> List[PromptRow]:
    """The rows of ``concept``'s class with its words replaced by :data:`PLACEHOLDER` (one-line errors for a
    CSV without rows of the class, or a row whose prompt lacks the words)."""
    words = concept_words(concept)
    mine = [row for row in rows if row.class_index == concept.index]
    if not mine:
        raise ValueError(f"the prompt CSV has no row of class {concept.index} ({concept.name!r})")
    out = []
    for row in mine:
        try:
            out.append(replace(row, prompt=replace_words(row.prompt, words)))
        except ValueError as error:
            raise ValueError(f"prompt CSV line {row.line}: {error}") from None
    return out


def domain_of(concept: ConceptClass) -> str:
    """``world`` when the class prompt is a concept-world style prompt (``in the style of waves``), else ``sd``."""
    from sepce.world.prompts import parse_prompt

    try:
        style, obj = parse_prompt(concept.prompt)
    except ValueError:
        return "sd"
    return "world" if style is not None and obj is None else "sd"


# ------------------------------------------------------------------------------------------------ generation
class AttackSampler(ImageSampler):
    """:class:`sepce.generation.ImageSampler` whose prompts may hold :data:`PLACEHOLDER` (conditioned with
    ``v*``); prompts without it, like the unconditional ``""``, are embedded as usual."""

    def __init__(self, model, settings: SamplingSettings, device: torch.device, dtype: torch.dtype, word: LearnedWord):
        super().__init__(model, settings, device, dtype)
        self.word = LearnedWord(word.vector.to(device), word.init_word, word.meta)

    def embed(self, prompts: Sequence[str]) -> torch.Tensor:
        if not any(PLACEHOLDER in p for p in prompts):
            return super().embed(prompts)
        with torch.no_grad(), self.autocast():
            return self.word.conditioning(self.model, prompts)


# ------------------------------------------------------------------------------------------------ the attack
@dataclass
class AttackTarget:
    """What an attack aims at (this module's and :mod:`sepce.adversarial`'s): the model, the concept with its class
    map and the prompt CSV's rows, the concept's training images (made by the ORIGINAL model) and the model's
    folder of ``generate-images.py``, sampled with ``sampling`` on ``runtime``."""

    resolved: ResolvedModel
    concept: ConceptClass
    classes: Sequence[ConceptClass]
    rows: Sequence[PromptRow]
    data_folder: Path
    model_folder: Path
    sampling: SamplingSettings
    runtime: Runtime


@dataclass
class AttackPlan:
    """Everything :func:`run_attack` needs, validated by :func:`plan_attack` before any model loads."""

    resolved: ResolvedModel
    concept: ConceptClass
    classes: List[ConceptClass]
    images: ImageFolder
    rows: List[PromptRow]  # the concept's rows, prompts with PLACEHOLDER
    case_classes: Dict[int, int]  # class of every case of the CSV (labels of every attack image of the folder)
    domain: str
    templates: tuple
    preset: AttackPreset
    sampling: SamplingSettings
    model_folder: Path
    num_samples: int
    batch_size: int
    runtime: Runtime
    classifier: Optional[Path] = None
    overwrite: bool = False
    progress: bool = False
    identity: dict = field(default_factory=dict)
    classifier_kind: Optional[ClassifierKind] = None  # None: no classification

    @property
    def folder(self) -> Path:
        return attack_folder(self.model_folder)

    @property
    def embedding_path(self) -> Path:
        return embedding_path(self.model_folder, self.concept)

    def image_names(self) -> List[str]:
        return [image_name(row.case_number, k) for row in self.rows for k in range(self.num_samples)]


def attack_folder(model_folder: Path) -> Path:
    """``<model folder>/attack/``: the attack images of every concept attacked on this model, and their words."""
    return Path(model_folder) / ATTACK_DIR


def embedding_path(model_folder: Path, concept: ConceptClass) -> Path:
    """``<model folder>/attack/embedding-<concept>.safetensors`` (``embedding-VanGogh``, ``embedding-waves``): one
    learned word per attacked concept, so several concepts can be attacked on one model (SepCE)."""
    return attack_folder(model_folder) / f"{EMBEDDING_PREFIX}{concept_slug(concept.name)}.safetensors"


def plan_attack(
    target: AttackTarget,
    *,
    preset: Optional[AttackPreset] = None,
    domain: Optional[str] = None,
    num_samples: int = 1,
    batch_size: int = 8,
    classifier: Optional[Path] = None,
    overwrite: bool = False,
    progress: bool = False,
) -> AttackPlan:
    """Validate an attack without loading a model: the concept's rows and prompts, the training images, the init
    word and the prompts against the model's tokenizer, the classifier file, and what already exists in the
    model folder (this concept's word or images made from other inputs, attack results of another classifier:
    ``overwrite`` is needed)."""
    from sepce.evaluation.common import file_signature

    resolved, concept, classes, rows = target.resolved, target.concept, target.classes, target.rows
    sampling, runtime = target.sampling, target.runtime
    domain = domain or domain_of(concept)
    if domain not in DOMAINS:
        raise ValueError(f"--domain {domain!r}: expected one of {list(DOMAINS)}")
    preset = (preset or PRESETS[domain]).validate()
    if num_samples < 1 or batch_size < 1:
        raise ValueError(f"--num_samples {num_samples} and --batch_size {batch_size} must be >= 1")
    templates = TEMPLATES[domain]
    chosen = attack_rows(rows, concept)
    images = ImageFolder(target.data_folder, sampling.image_size)
    tokenizer = tokenizer_from_config(resolved.config_path)
    slot_prompts(tokenizer, list(templates) + [row.prompt for row in chosen], preset.init_word)
    kind = resolve_kind(classifier) if classifier is not None else None
    identity = {
        "model": resolved.describe(),
        "concept": concept.name,
        "training_images": file_signature(images.files, images.folder),
        "image_size": sampling.image_size,
        "domain": domain,
        "templates": list(templates),
        "preset": preset.to_dict(),
        "precision": runtime.precision,
    }
    plan = AttackPlan(
        resolved,
        concept,
        list(classes),
        images,
        chosen,
        case_classes(rows),
        domain,
        templates,
        preset,
        sampling,
        Path(target.model_folder),
        num_samples,
        batch_size,
        runtime,
        classifier,
        overwrite,
        progress,
        identity,
        kind,
    )
    if not overwrite:
        _check_existing(plan)
    return plan


def _reusable(plan: AttackPlan) -> Optional[LearnedWord]:
    """The stored learned word of the plan's concept when it was learned from exactly this plan's inputs."""
    if not plan.embedding_path.is_file():
        return None
    word = load_word(plan.embedding_path)
    stored = json.loads(json.dumps(word.meta.get("identity")))
    same = stored == json.loads(json.dumps(plan.identity, default=str))
    return word if same and word.meta.get("ok", True) else None


def _check_existing(plan: AttackPlan) -> None:
    from sepce.evaluation.results import metric_paths
    from sepce.records import file_digest

    if plan.embedding_path.is_file() and _reusable(plan) is None:
        raise FileExistsError(
            f"{plan.embedding_path} was learned from other inputs (model, images, preset or templates) or stopped "
            "early; pass --overwrite to learn it again"
        )
    if not plan.embedding_path.is_file():
        made = [n for n in plan.image_names() if (plan.folder / n).exists()]
        if made:
            raise FileExistsError(
                f"{plan.folder} holds attack images of {plan.concept.name!r} ({made[0]}, ...) but not the word they "
                f"were made with ({plan.embedding_path.name}); pass --overwrite to learn it and make them again"
            )
    _, json_path = metric_paths(plan.model_folder, RESULTS_METRIC)
    if plan.classifier is not None and json_path.is_file():
        stored = (json.loads(json_path.read_text()).get("classifier") or {}).get("sha256")
        if stored is not None and stored != file_digest(plan.classifier):
            raise FileExistsError(
                f"{json_path} holds attack results of another classifier; pass --overwrite to replace them"
            )


def attack_images(plan: AttackPlan) -> tuple[List[Path], List[int]]:
    """Every attack image of the model folder whose case is in the prompt CSV (any attacked concept), with the
    class of its case."""
    from sepce.evaluation.images import index_images, parse_image_name

    index, _ = index_images(plan.folder)
    paths, labels = [], []
    for name in sorted(index):
        parsed = parse_image_name(name)
        if parsed is not None and parsed[0] in plan.case_classes:
            paths.append(index[name])
            labels.append(plan.case_classes[parsed[0]])
    return paths, labels


def run_attack(plan: AttackPlan) -> dict:
    """Learn ``v*`` (or reuse an identical stored one), generate the attack images of the concept's rows, and,
    given a classifier, write ``results/attack.csv/json`` over every attack image of the model folder (each
    attacked concept's row of the table). Returns a summary."""
    from sepce.evaluation.artist_classifier import accuracy_table
    from sepce.evaluation.common import file_signature, fingerprint
    from sepce.evaluation.results import stored_rows, write_metric
    from sepce.evaluation.verify import verify_folders
    from sepce.records import file_digest

    device, dtype = plan.runtime.device, plan.runtime.dtype
    summary: dict = {"folder": str(plan.folder), "embedding": str(plan.embedding_path), "concept": plan.concept.name}
    word = None if plan.overwrite else _reusable(plan)
    jobs, skipped = plan_jobs(plan.rows, plan.num_samples, plan.folder, overwrite=plan.overwrite)
    settings = folder_settings(plan.resolved, plan.sampling, plan.runtime.precision)
    ledger = check_generation_settings(plan.folder, settings, plan.overwrite)  # what every concept's images share
    model = None
    if word is None or jobs:
        model = load_resolved(plan.resolved, device)
    if word is None:
        result = train_word(model, plan.images, plan.templates, plan.preset, precision=dtype, progress=plan.progress)
        word = result.word
        word.meta.update(
            identity=plan.identity,
            model_name=plan.resolved.name,
            base_sha256=file_digest(plan.resolved.ckpt_path),  # the checkpoint loaded (records: their base)
            training_images=len(plan.images),
            iterations=result.iterations,
            stop_reason=result.stop_reason,
            ok=result.ok,
            seconds=round(result.seconds, 2),
        )
        save_word(plan.embedding_path, word)
        summary.update(trained=True, seconds=round(result.seconds, 2), ok=result.ok, stop_reason=result.stop_reason)
        if not result.ok:
            return summary
    else:
        log.info("%s: learned from the same inputs; reusing it", plan.embedding_path)
        summary["trained"] = False
    summary["loss"] = word.meta.get("loss")
    digest = file_digest(plan.embedding_path)
    if jobs:
        sampler = AttackSampler(model, plan.sampling, device, dtype, word)
        text = {**png_text(plan.resolved, plan.sampling), "attack_embedding": digest[:16]}
        summary["written"] = run_jobs(
            sampler, jobs, plan.batch_size, plan.num_samples, text, f"attack {plan.concept.name}", plan.progress, ledger
        )
    summary["skipped"] = skipped
    if plan.classifier_kind is None:
        return summary

    verify_folders(plan.folder)
    paths, labels = attack_images(plan)
    key = fingerprint(
        {
            "images": file_signature(paths, plan.folder),
            "classifier": file_signature([plan.classifier]),
            "classes": [c.name for c in plan.classes],
        }
    )
    # the results summarise the folder's attack images: new images (another concept attacked) update them
    rows = stored_rows(plan.model_folder, RESULTS_METRIC, key, overwrite=True)
    if rows is None:
        judge = open_classifier(plan.classifier, plan.classes, device, plan.classifier_kind)
        predictions = judge.predict(paths)
        rows, confusion = accuracy_table(plan.classes, labels, predictions)
        words = {}
        for path in sorted(plan.folder.glob(f"{EMBEDDING_PREFIX}*.safetensors")):
            learned = load_word(path)
            identity = learned.meta.get("identity", {})
            words[path.name] = {
                "concept": identity.get("concept"),
                "sha256": file_digest(path),
                "preset": learned.meta.get("preset"),
                "domain": identity.get("domain"),
                "templates": learned.meta.get("templates"),
            }
        presets = {json.dumps(w["preset"], sort_keys=True) for w in words.values()}
        meta = {
            "model_folder": str(plan.model_folder),
            "attack_folder": str(plan.folder),
            "classifier": judge.info.to_dict(),
            "fingerprint": key,
            "preset": json.loads(presets.pop()) if len(presets) == 1 else None,  # None: the words' presets differ
            "embeddings": words,
            "predictions": {p.name: [label, int(pred)] for p, label, pred in zip(paths, labels, predictions)},
            "confusion": confusion,
        }
        write_metric(plan.model_folder, RESULTS_METRIC, rows, RESULT_COLUMNS, meta)
    summary["accuracy"] = next(r for r in rows if r["class"] == plan.concept.index)
    return summary


# ------------------------------------------------------------------------------------------------ the scripts
def add_target_arguments(p: argparse.ArgumentParser, *, prompt_help: str, data_help: str, domain_help: str) -> None:
    """The flags of the attack scripts (``attack-inversion.py``, ``attack-adversarial-prompt.py``) that name the
    target (:func:`target_from_args`): the model, ``--prompt``, ``--data_dir``, the prompt CSV and class map, the
    output folder and ``--domain``; the help texts that differ are the script's."""
    add_model_arguments(p)
    p.add_argument("--prompt", required=True, help=prompt_help)
    p.add_argument("--data_dir", type=Path, default=DATA_DIR, help=data_help)
    add_prompts_path(p, required=True)
    add_classes(p)
    add_output_arguments(p, save_help="the model folder is <save_path>/<output name>/")
    p.add_argument("--domain", choices=("auto",) + DOMAINS, default="auto", help=domain_help)


def add_optimiser_arguments(p: argparse.ArgumentParser, *, lr_help: str, batch_help: str, seed_help: str) -> None:
    """The attack scripts' ``--attack_steps/lr/batch_size/seed`` (None: the preset's; :func:`preset_from_args`)."""
    p.add_argument("--attack_steps", type=int, default=None, help="optimisation steps (None: the preset's)")
    p.add_argument("--attack_lr", type=float, default=None, help=lr_help)
    p.add_argument("--attack_batch_size", type=int, default=None, help=batch_help)
    p.add_argument("--attack_seed", type=int, default=None, help=seed_help)


def target_from_args(
    args: argparse.Namespace, *, require_class: Optional[bool] = True
) -> Tuple[AttackTarget, GenerationSetup, str]:
    """The target, generation setup and domain (``--domain auto``: :func:`domain_of`) that the flags of
    :func:`add_target_arguments` and ``add_sampling_arguments`` name, checked (one-line errors) without loading a
    model; ``require_class``: every CSV row must name its class (None: when the class map has several classes; a
    one-class map, nudity, takes rows without one)."""
    from sepce.data_generation import data_folder_name

    setup = generation_setup(args)
    classes = load_class_map(args.classes)
    (concept,) = classes_by_names(classes, [args.prompt], "--prompt")
    if require_class is None:
        require_class = len(classes) > 1
    rows = read_prompt_csv(args.prompts_path, classes=classes, require_class=require_class)
    domain = domain_of(concept) if args.domain == "auto" else args.domain
    resolved = model_from_args(args)
    target = AttackTarget(
        resolved,
        concept,
        classes,
        rows,
        Path(args.data_dir) / data_folder_name(concept.prompt, concept.name),
        Path(args.save_path) / (args.output_name or resolved.folder_name),
        setup.sampling,
        setup.runtime,
    )
    return target, setup, domain


def preset_from_args(preset: Any, args: argparse.Namespace, **extra: Any) -> Any:
    """``preset`` (an attack preset dataclass) with the fields that ``--attack_steps/lr/batch_size/seed``,
    ``--init_word`` and ``extra`` set (None: keep the preset's)."""
    overrides = {
        "steps": args.attack_steps,
        "lr": args.attack_lr,
        "batch_size": args.attack_batch_size,
        "seed": args.attack_seed,
        "init_word": args.init_word,
        **extra,
    }
    return replace(preset, **{k: v for k, v in overrides.items() if v is not None})
