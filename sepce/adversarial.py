"""Adversarial-prompt attack without a new word (docs/method.md, "Adversarial-prompt attack"; UnlearnDiffAtk,
Zhang et al., "To Generate or Not? Safety-Driven Unlearned Diffusion Models Are Still Easy To Generate Unsafe
Images ... For Now", ECCV 2024).

Where the concept-inversion attack (:mod:`sepce.attack`) learns a NEW token embedding, this attack searches the
existing vocabulary: ``k`` real tokens prepended to the concept's own prompt (``<t1> … <tk> in the style of
waves``) so that the (erased) model's noise prediction on images of the concept, drawn by the ORIGINAL model,
matches — UnlearnDiffAtk's objective ``min_P E_{t,ε} ‖ε − ε_θ(x_t^tgt, t, c(P ⊕ prompt))‖²``
(``LatentDiffusion.p_losses``) with the model frozen.

Optimisation (:func:`optimise_prefix`): the prefix is kept as ``k`` continuous embeddings, every step projected
onto the nearest token embeddings (L2, special tokens excluded); the loss is computed with the PROJECTED tokens
and its gradient applied to the continuous ones (the straight-through projection of Wen et al. 2023, "Hard
Prompts Made Easy", which UnlearnDiffAtk's projected gradient descent on one-hot tokens amounts to). The prefix
starts at ``k`` copies of the init word (:class:`AdversarialPreset`), Adam, per step ``batch_size`` target latents
with fresh ``t`` and noise (:class:`sepce.attack.TrainingLatents`). The kept prefix is, among the projections of the
last quarter of the steps and the final one, the one with the lowest loss on a fixed probe of target latents,
timesteps and noise (:func:`probe_losses`; ties: the latest). One prefix per concept, over all of its
target images (a universal prefix; UnlearnDiffAtk optimises one per prompt and image).

Evaluation (:func:`run_adversarial`): the evaluation CSV's rows of the concept are drawn twice with the same seeds
and file names as ``generate-images.py`` — with the plain prompt (``adversarial/plain/<case>_<k>.png``) and with
the prefix (``adversarial/<case>_<k>.png``); the task's judge (:mod:`sepce.evaluation.classifiers`: the world
style classifier, the artist classifier, ImageNet ResNet-50 or NudeNet) says whether each image shows the concept.
The attack success rate before and after is that share, with its 95 % Wilson interval, in
``<model folder>/results/adversarial.csv/json`` (each concept's prompt, tokens, loss history, the judge and each
image's prediction). The prefix is stored as token ids (and their text) in
``adversarial/prompt-<concept>.json``; images are drawn from the ids, so no re-tokenisation can change them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

import torch

from sepce.attack import (
    PLACEHOLDER,
    AttackTarget,
    Slots,
    TrainingLatents,
    slot_prompts,
    text_encoder,
    token_table,
)
from sepce.classes import ConceptClass
from sepce.cli import Runtime
from sepce.evaluation.classifiers import ClassifierKind, check_classifier, open_classifier
from sepce.generation import ImageSampler, SamplingSettings, image_name, plan_jobs, png_text, run_jobs
from sepce.io import write_json
from sepce.modeling import ResolvedModel, load_resolved, tokenizer_from_config
from sepce.paths import concept_slug
from sepce.prompt_csv import PromptRow
from sepce.stats import wilson
from sepce.training import ImageFolder

log = logging.getLogger(__name__)

ADVERSARIAL_DIR = "adversarial"
PLAIN_DIR = "plain"
RESULTS_METRIC = "adversarial"
RESULT_COLUMNS = [
    "class",
    "name",
    "images",
    "before",
    "asr_before_pct",
    "before_low_pct",
    "before_high_pct",
    "after",
    "asr_after_pct",
    "after_low_pct",
    "after_high_pct",
]
PROMPT_FORMAT = "sepce-adversarial-prompt-v1"


@dataclass(frozen=True)
class AdversarialPreset:
    """Settings of the search, one per domain and shared by every method (:data:`PRESETS`)."""

    tokens: int
    steps: int
    batch_size: int
    lr: float
    seed: int
    init_word: str
    vocabulary: str = "full"  # the tokens a prefix may use: full (CLIP's vocabulary) or world (its captions')

    def validate(self) -> AdversarialPreset:
        for name in ("tokens", "steps", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"--adv_{name} {value!r}: expected a positive integer")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"--adv_lr {self.lr!r}: expected a positive number")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"--adv_seed {self.seed!r}: expected a non-negative integer")
        if self.vocabulary not in VOCABULARIES:
            raise ValueError(f"--adv_vocabulary {self.vocabulary!r}: expected one of {list(VOCABULARIES)}")
        return self


VOCABULARIES = ("full", "world")
PROBE_LATENTS = 8  # fixed (latent, t, noise) draws on which the last steps' prefixes are compared

#: UnlearnDiffAtk prepends 5 tokens to SD prompts. World: its text encoder was trained from scratch on the
#: world's captions only, so every other row of its token table is an untrained random vector (norm ~11 like the
#: trained ones); the prefix is searched among the caption vocabulary (the concept's own words included, as in
#: UnlearnDiffAtk's full vocabulary), 3 tokens (captions are 2-7 tokens long), and the learning rate matches
#: the table's scale (rows ~16 apart). SD: not tuned here (no SD weights); CLIP's token rows have norms ~0.4.
PRESETS = {
    "world": AdversarialPreset(
        tokens=3, steps=150, batch_size=4, lr=0.5, seed=0, init_word="thing", vocabulary="world"
    ),
    "sd": AdversarialPreset(tokens=5, steps=400, batch_size=4, lr=0.01, seed=0, init_word="art"),
}


# ------------------------------------------------------------------------------------------------ the prefix
def prefixed_prompt(prompt: str, tokens: int) -> str:
    """``prompt`` with ``tokens`` placeholders in front (each becomes one prefix token)."""
    return " ".join([PLACEHOLDER] * tokens + ([prompt] if prompt else []))


@contextlib.contextmanager
def prefix_substituted(model: torch.nn.Module, slots: Slots, vectors: torch.Tensor) -> Iterator[None]:
    """Within the block the token embeddings at ``slots.mask`` (k per prompt, in order) are ``vectors`` (k, D);
    gradients reach ``vectors``."""
    table = token_table(model)
    k = vectors.shape[0]
    if not bool((slots.mask.sum(1) == k).all()):
        raise ValueError(f"every prompt needs exactly {k} placeholders for the prefix")

    def hook(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        ids = inputs[0]
        if ids.shape != slots.ids.shape or not torch.equal(ids.cpu(), slots.ids):
            raise RuntimeError("the text encoder was called with other tokens than the attack's prompts")
        out = output.clone()
        out[slots.mask.to(output.device)] = vectors.to(output.device, output.dtype).repeat(ids.shape[0], 1)
        return out  # B N D

    handle = table.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def prefix_conditioning(model: torch.nn.Module, prompts: Sequence[str], vectors: torch.Tensor, init_word: str):
    """``get_learned_conditioning`` (B, N, D) of ``prompts`` with the prefix embeddings ``vectors`` (k, D) in
    front of each prompt."""
    texts = [prefixed_prompt(p, vectors.shape[0]) for p in prompts]
    slots = slot_prompts(text_encoder(model).tokenizer, texts, init_word)
    with prefix_substituted(model, slots, vectors):
        return model.get_learned_conditioning(slots.texts)


def candidate_ids(tokenizer, vocab_size: int, vocabulary: str = "full") -> torch.Tensor:
    """Token ids a prefix may use: ``full``: every id of the table but the start and end tokens; ``world``: the
    tokens of the concept world's captions (every style and object, both style wordings)."""
    if vocabulary == "world":
        from sepce.world.prompts import STYLE_FORMS, build_prompt
        from sepce.world.render import OBJECTS, STYLES

        captions = [build_prompt(s, o, f) for s in (None, *STYLES) for o in (None, *OBJECTS) for f in STYLE_FORMS]
        return torch.tensor(sorted({i for c in captions for i in tokenizer.encode(c)}))
    keep = torch.ones(vocab_size, dtype=torch.bool)
    keep[[tokenizer.bos_token_id, tokenizer.eos_token_id]] = False
    return keep.nonzero().squeeze(1)


def project(vectors: torch.Tensor, table: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """The candidate token id nearest (L2) to each row of ``vectors`` (k, D)."""
    nearest = torch.cdist(vectors.float(), table[candidates].float()).argmin(1)  # k
    return candidates[nearest]


@dataclass
class AdversarialPrefix:
    """The kept prefix: token ids, their text, and how it was found."""

    ids: List[int]
    text: str
    init_word: str
    losses: List[float] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    def vectors(self, model: torch.nn.Module) -> torch.Tensor:
        """The prefix's token embeddings (k, D): exactly the vocabulary's rows."""
        table = token_table(model).weight
        return table[torch.tensor(self.ids, device=table.device)].detach()

    def to_dict(self) -> dict:
        return {"format": PROMPT_FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict) -> AdversarialPrefix:
        if data.get("format") != PROMPT_FORMAT:
            raise ValueError(f"not an adversarial prompt file (format {data.get('format')!r})")
        return cls(list(data["ids"]), data["text"], data["init_word"], list(data["losses"]), dict(data["meta"]))


def optimise_prefix(
    model: torch.nn.Module,
    images: ImageFolder,
    prompt: str,
    preset: AdversarialPreset,
    progress: bool = False,
) -> AdversarialPrefix:
    """Search ``preset.tokens`` real tokens to put before ``prompt`` (see the module docstring)."""
    preset.validate()
    for p in model.parameters():
        p.requires_grad_(False)
    encoder = text_encoder(model)
    table = token_table(model).weight
    device = table.device
    tokenizer = encoder.tokenizer
    init = table[slot_prompts(tokenizer, [PLACEHOLDER], preset.init_word).ids[0, 1]].detach().float()
    soft = init.repeat(preset.tokens, 1).clone().requires_grad_(True)  # k D, continuous
    candidates = candidate_ids(tokenizer, table.shape[0], preset.vocabulary).to(device)
    optimiser = torch.optim.Adam([soft], lr=preset.lr)
    generator = torch.Generator().manual_seed(preset.seed)
    device_generator = torch.Generator(device).manual_seed(preset.seed + 1)
    latents = TrainingLatents(model, images)
    losses: List[float] = []
    seen: Dict[tuple, List[float]] = {}  # projected prefix -> its losses
    last: Dict[tuple, int] = {}  # projected prefix -> the last step it was the projection
    started = time.perf_counter()
    for _ in range(preset.steps):
        ids = project(soft.detach(), table, candidates)  # k
        hard = table[ids].detach().float().requires_grad_(True)  # k D, what the loss sees
        z = torch.cat([latents.draw(generator, device_generator) for _ in range(preset.batch_size)])  # B C h w
        t = torch.randint(model.num_timesteps, (preset.batch_size,), generator=generator).to(device)  # B
        noise = torch.randn(z.shape, generator=device_generator, device=device, dtype=z.dtype)
        cond = prefix_conditioning(model, [prompt] * preset.batch_size, hard, preset.init_word)  # B N D
        loss, _ = model.p_losses(z, cond, t, noise=noise)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"adversarial prompt search: non-finite loss {float(loss)}")
        (grad,) = torch.autograd.grad(loss, hard)
        optimiser.zero_grad(set_to_none=True)
        soft.grad = grad.to(soft.dtype)  # straight-through: the projected tokens' gradient moves the soft ones
        optimiser.step()
        losses.append(float(loss.detach()))
        key = tuple(ids.tolist())
        seen.setdefault(key, []).append(losses[-1])
        last[key] = len(losses)
    final = tuple(project(soft.detach(), table, candidates).tolist())
    last[final] = len(losses) + 1
    late = [key for key in last if last[key] > preset.steps - max(1, preset.steps // 4)]  # the last quarter's
    probe = probe_losses(model, latents, prompt, [torch.tensor(k) for k in late], table, preset)
    best = min(late, key=lambda key: (probe[late.index(key)], -last[key]))
    text = " ".join(tokenizer.decode([i]).strip() for i in best)
    meta = {
        "preset": asdict(preset),
        "prompt": prompt,
        "seconds": round(time.perf_counter() - started, 2),
        "distinct_prefixes": len(last),
        "compared": {" ".join(map(str, k)): round(v, 6) for k, v in zip(late, probe)},
        "kept_probe_loss": probe[late.index(best)],
    }
    return AdversarialPrefix(list(best), text, preset.init_word, losses, meta)


@torch.no_grad()
def probe_losses(
    model: torch.nn.Module,
    latents: TrainingLatents,
    prompt: str,
    prefixes: Sequence[torch.Tensor],
    table: torch.Tensor,
    preset: AdversarialPreset,
) -> List[float]:
    """The ε-loss of each prefix (token ids) on the same :data:`PROBE_LATENTS` draws of target latent, timestep
    and noise (seeded), so that prefixes are compared on equal terms rather than on their own random steps."""
    device = table.device
    generator = torch.Generator().manual_seed(preset.seed + 2)
    device_generator = torch.Generator(device).manual_seed(preset.seed + 3)
    z = torch.cat([latents.draw(generator, device_generator) for _ in range(PROBE_LATENTS)])  # P C h w
    t = torch.randint(model.num_timesteps, (PROBE_LATENTS,), generator=generator).to(device)  # P
    noise = torch.randn(z.shape, generator=device_generator, device=device, dtype=z.dtype)
    out = []
    for ids in prefixes:
        cond = prefix_conditioning(model, [prompt] * PROBE_LATENTS, table[ids.to(device)].float(), preset.init_word)
        loss, _ = model.p_losses(z, cond, t, noise=noise)
        out.append(float(loss))
    return out


class PrefixSampler(ImageSampler):
    """:class:`ImageSampler` whose prompts holding :data:`PLACEHOLDER` get the prefix's exact token rows."""

    def __init__(self, model, settings: SamplingSettings, device, dtype, prefix: AdversarialPrefix):
        super().__init__(model, settings, device, dtype)
        self.prefix = prefix

    def embed(self, prompts: Sequence[str]) -> torch.Tensor:
        if not any(PLACEHOLDER in p for p in prompts):
            return super().embed(prompts)  # the unconditional ""
        bare = [p.replace(PLACEHOLDER, "").strip() for p in prompts]
        with torch.no_grad(), self.autocast():
            return prefix_conditioning(self.model, bare, self.prefix.vectors(self.model), self.prefix.init_word)


# ------------------------------------------------------------------------------------------------ the attack
@dataclass(frozen=True)
class JudgeSettings:
    """The task's classifier (:func:`sepce.evaluation.classifiers.open_classifier`)."""

    path: Optional[Path] = None
    kind: Optional[str] = None
    class_map: Optional[Path] = None
    threshold: Optional[float] = None
    pretrained: bool = True  # False: imagenet with random weights (tiny runs)


@dataclass
class AdversarialPlan:
    resolved: ResolvedModel
    concept: ConceptClass
    classes: List[ConceptClass]
    images: ImageFolder
    rows: List[PromptRow]  # the concept's rows, plain prompts
    preset: AdversarialPreset
    sampling: SamplingSettings
    model_folder: Path
    num_samples: int
    batch_size: int
    runtime: Runtime
    judge: JudgeSettings
    kind: ClassifierKind
    overwrite: bool = False
    progress: bool = False

    @property
    def folder(self) -> Path:
        return Path(self.model_folder) / ADVERSARIAL_DIR

    @property
    def prompt_path(self) -> Path:
        return self.folder / f"prompt-{concept_slug(self.concept.name)}.json"

    def identity(self) -> dict:
        from sepce.evaluation.common import file_signature

        return {
            "model": self.resolved.describe(),
            "concept": self.concept.name,
            "prompt": self.concept.prompt,
            "training_images": file_signature(self.images.files, self.images.folder),
            "image_size": self.sampling.image_size,
            "preset": asdict(self.preset),
            "precision": self.runtime.precision,
        }


def plan_adversarial(
    target: AttackTarget,
    judge: JudgeSettings,
    preset: AdversarialPreset,
    *,
    num_samples: int = 1,
    batch_size: int = 8,
    overwrite: bool = False,
    progress: bool = False,
) -> AdversarialPlan:
    """Validate without loading a model: the concept's rows, target images, init word and prompts against the
    tokenizer, the judge, and what the folder already holds (a prefix found from other inputs needs
    ``overwrite``)."""
    resolved, concept, classes, sampling = target.resolved, target.concept, target.classes, target.sampling
    preset = preset.validate()
    if num_samples < 1 or batch_size < 1:
        raise ValueError(f"--num_samples {num_samples} and --batch_size {batch_size} must be >= 1")
    single = len(classes) == 1  # a one-class map (nudity): rows without a class (the I2P file) are its rows
    mine = [row for row in target.rows if row.class_index == concept.index or (single and row.class_index is None)]
    if not mine:
        raise ValueError(f"the prompt CSV has no row of class {concept.index} ({concept.name!r})")
    images = ImageFolder(target.data_folder, sampling.image_size)
    tokenizer = tokenizer_from_config(resolved.config_path)
    texts = [prefixed_prompt(p, preset.tokens) for p in [concept.prompt] + [r.prompt for r in mine]]
    slot_prompts(tokenizer, texts, preset.init_word)
    kind = check_classifier(judge.path, classes, judge.kind, judge.class_map, judge.pretrained)
    plan = AdversarialPlan(
        resolved, concept, list(classes), images, mine, preset, sampling, Path(target.model_folder), num_samples,
        batch_size, target.runtime, judge, kind, overwrite, progress,
    )  # fmt: skip
    if plan.prompt_path.is_file() and not overwrite and _stored(plan) is None:
        raise FileExistsError(f"{plan.prompt_path} was found from other inputs; pass --overwrite to search again")
    return plan


def _stored(plan: AdversarialPlan) -> Optional[AdversarialPrefix]:
    """The stored prefix of the plan's concept when it was found from exactly this plan's inputs."""
    if not plan.prompt_path.is_file():
        return None
    prefix = AdversarialPrefix.from_dict(json.loads(plan.prompt_path.read_text()))
    same = prefix.meta.get("identity") == json.loads(json.dumps(plan.identity(), default=str))
    return prefix if same else None


def asr_row(concept: ConceptClass, before: Sequence[int], after: Sequence[int]) -> dict:
    """Attack success rates (%) before and after, with 95 % Wilson intervals: the share of images the judge
    assigns to the concept."""
    b = wilson(sum(p == concept.index for p in before), len(before))
    a = wilson(sum(p == concept.index for p in after), len(after))
    return {
        "class": concept.index,
        "name": concept.name,
        "images": len(after),
        "before": sum(p == concept.index for p in before),
        "asr_before_pct": 100 * b.value,
        "before_low_pct": 100 * b.low,
        "before_high_pct": 100 * b.high,
        "after": sum(p == concept.index for p in after),
        "asr_after_pct": 100 * a.value,
        "after_low_pct": 100 * a.low,
        "after_high_pct": 100 * a.high,
    }


def run_adversarial(plan: AdversarialPlan) -> dict:
    """Search the prefix (or reuse an identical stored one), draw the concept's rows with the plain and the
    prefixed prompt, judge both, and update ``results/adversarial.*`` with the concept's row (results of another
    classifier kind need ``overwrite``)."""
    from sepce.evaluation.results import metric_paths, write_metric

    device, dtype = plan.runtime.device, plan.runtime.dtype
    _, json_path = metric_paths(plan.model_folder, RESULTS_METRIC)
    stored = json.loads(json_path.read_text()) if json_path.is_file() else {}
    judged_by = (stored.get("classifier") or {}).get("kind"), (stored.get("classifier") or {}).get("sha256")
    if stored and not plan.overwrite and judged_by[0] != plan.kind.value:
        raise FileExistsError(f"{json_path} holds results of another classifier; pass --overwrite to replace them")
    prefix = None if plan.overwrite else _stored(plan)
    plain_jobs, _ = plan_jobs(plan.rows, plan.num_samples, plan.folder / PLAIN_DIR, overwrite=plan.overwrite)
    attacked_rows = [
        PromptRow(r.case_number, prefixed_prompt(r.prompt, plan.preset.tokens), r.evaluation_seed, r.class_index)
        for r in plan.rows
    ]
    fresh = prefix is None
    model = None
    if fresh or plain_jobs:
        model = load_resolved(plan.resolved, device)
    if fresh:
        prefix = optimise_prefix(model, plan.images, plan.concept.prompt, plan.preset, plan.progress)
        prefix.meta["identity"] = json.loads(json.dumps(plan.identity(), default=str))
        write_json(plan.prompt_path, prefix.to_dict())
    attack_jobs, _ = plan_jobs(attacked_rows, plan.num_samples, plan.folder, overwrite=plan.overwrite or fresh)
    if attack_jobs and model is None:
        model = load_resolved(plan.resolved, device)
    text = png_text(plan.resolved, plan.sampling)
    if plain_jobs:
        sampler = ImageSampler(model, plan.sampling, device, dtype)
        run_jobs(sampler, plain_jobs, plan.batch_size, plan.num_samples, text, "plain", plan.progress)
    if attack_jobs:
        sampler = PrefixSampler(model, plan.sampling, device, dtype, prefix)
        text = {**text, "adversarial_prefix": prefix.text, "adversarial_ids": json.dumps(prefix.ids)}
        run_jobs(sampler, attack_jobs, plan.batch_size, plan.num_samples, text, "adversarial", plan.progress)

    names = [image_name(r.case_number, k) for r in plan.rows for k in range(plan.num_samples)]
    j = plan.judge
    judge = open_classifier(
        j.path, plan.classes, device, plan.kind, class_map=j.class_map, threshold=j.threshold, pretrained=j.pretrained
    )
    before = judge.predict([plan.folder / PLAIN_DIR / n for n in names])
    after = judge.predict([plan.folder / n for n in names])
    row = asr_row(plan.concept, before, after)

    same_judge = stored.get("classifier") == judge.info.to_dict()
    concepts = dict(stored.get("concepts", {})) if same_judge else {}
    concepts[plan.concept.name] = {
        "row": row,
        "prefix": prefix.text,
        "ids": prefix.ids,
        "adversarial_prompt": f"{prefix.text} {plan.concept.prompt}".strip(),
        "loss": {
            "first": prefix.losses[0],
            "last": prefix.losses[-1],
            "kept_probe": prefix.meta["kept_probe_loss"],
            "seconds": prefix.meta["seconds"],
        },
        "predictions": {n: [int(b), int(a)] for n, b, a in zip(names, before, after)},
    }
    rows = sorted((c["row"] for c in concepts.values()), key=lambda r: r["class"])
    meta = {
        "model_folder": str(plan.model_folder),
        "attack": "adversarial prompt (UnlearnDiffAtk-style, prepended real tokens)",
        "classifier": judge.info.to_dict(),
        "preset": asdict(plan.preset),
        "concepts": concepts,
    }
    write_metric(plan.model_folder, RESULTS_METRIC, rows, RESULT_COLUMNS, meta)
    return {"row": row, "prefix": prefix, "searched": fresh, "prompt_path": plan.prompt_path}
