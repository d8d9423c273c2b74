"""The two variants of Forget-Me-Not and Ablating Concepts (docs/method.md, "The authors' variants of FMN and
Ablating Concepts" and "The original FMN and Ablating Concepts"), and the one training skeleton both methods' variants
run through.

"authors" is the released SepCE scripts' form, which the paper's table measured (the default); "original" is the
method as its authors published it. :class:`VariantDefaults` holds a variant's label, optimiser, learning rate,
iterations and trained parameters (the values are in :data:`sepce.methods.fmn.FMN_VARIANTS` and
:data:`sepce.methods.ablation.ABLATING_VARIANTS`); :func:`peek_variant` and :func:`variant_help` build a script's
``--variant`` flag; :func:`fill_template` makes the concept prompt; :func:`train_variant` is the skeleton
(load → select → set up → start the run → fit → finish) a variant fills with its :class:`VariantStep`.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Mapping, Optional, Sequence

import torch

from sepce.methods.common import check_concept_names
from sepce.training import TrainingSession, TrainStep, select_parameters

#: Variants of FMN and Ablating Concepts: "authors" is the released SepCE scripts' form, which the paper's table
#: measured (the default); "original" is the method as its authors published it.
VARIANTS = ("authors", "original")
#: Trained-parameter rules a variant may name: :data:`sepce.training.PARAMETER_RULES` keys, or the whole UNet.
PARAMETER_DESCRIPTIONS = {
    "attn2": "every attn2 tensor (q, k, v, out)",
    "attn2_kv": "attn2 to_k/to_v only",
    "unet": "the whole UNet",
}
OPTIMIZERS = {"Adam": torch.optim.Adam, "AdamW": torch.optim.AdamW}


@dataclass(frozen=True)
class VariantDefaults:
    """What one variant of FMN or Ablating Concepts trains, and how, unless flags say otherwise.

    ``parameters`` is a key of :data:`PARAMETER_DESCRIPTIONS`; ``zero_grad`` True means the method zeroes its
    gradients every step (False: they accumulate, as in the released SepCE scripts, unless ``--zero_grad``);
    ``max_grad_norm`` clips the gradient norm before each step (None: no clipping); ``source`` names where the
    values come from."""

    label: str
    lr: float
    iterations: int
    optimizer: str = "Adam"
    weight_decay: float = 0.0
    parameters: str = "attn2"
    zero_grad: bool = False
    max_grad_norm: Optional[float] = None
    source: str = ""

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer {self.optimizer!r}: expected one of {', '.join(OPTIMIZERS)}")
        if self.parameters not in PARAMETER_DESCRIPTIONS:
            raise ValueError(f"parameters {self.parameters!r}: expected one of {', '.join(PARAMETER_DESCRIPTIONS)}")

    @property
    def parameter_rule(self):
        """The rule for :func:`sepce.training.select_parameters`: a rule name, or a callable for the whole UNet."""
        return whole_unet if self.parameters == "unet" else self.parameters

    def describe(self) -> str:
        """One line for ``--help``: optimiser, learning rate, iterations, trained tensors, gradient handling."""
        opt = self.optimizer + (f" (weight decay {self.weight_decay:g})" if self.weight_decay else "")
        grads = "gradients zeroed every step" if self.zero_grad else "gradients accumulated unless --zero_grad"
        clip = f", gradient norm clipped to {self.max_grad_norm:g}" if self.max_grad_norm is not None else ""
        return (
            f"{opt}, lr {self.lr:g}, {self.iterations} iterations, {PARAMETER_DESCRIPTIONS[self.parameters]} "
            f"trained, {grads}{clip}"
        )

    def as_dict(self) -> dict:
        return asdict(self)

    def trainer_options(self, params: Iterable[torch.Tensor], lr: float) -> dict:
        """Keywords of :meth:`sepce.training.TrainingSession.fit` for this variant: its optimiser
        (:meth:`optimizer_for`) and, when the variant zeroes its gradients every step, ``zero_grad`` (else the
        run's ``--zero_grad`` decides)."""
        return {"optimizer": self.optimizer_for(params, lr), "zero_grad": True if self.zero_grad else None}

    def run_settings(
        self,
        variant: str,
        prompt: str,
        concept_template: str,
        trained_tensors: Optional[int] = None,
        **extra,
    ) -> dict:
        """The settings an FMN or Ablating Concepts run records (summary and record metadata): the concept, the
        variant and its label, the template and the concept prompt built from it (:func:`fill_template`); given
        ``trained_tensors`` (the original variants) also what was trained and how (parameter rule, optimiser,
        weight decay, gradient clipping and zeroing, and these defaults); then ``extra``."""
        out = {
            "prompt": prompt,
            "variant": variant,
            "label": self.label,
            "concept_template": concept_template,
            "concept_prompt": fill_template(concept_template, prompt),
        }
        if trained_tensors is not None:
            out.update(
                trained_parameters=self.parameters,
                trained_tensors=trained_tensors,
                optimizer=self.optimizer,
                weight_decay=self.weight_decay,
                max_grad_norm=self.max_grad_norm,
                zero_grad=self.zero_grad,
                variant_defaults=self.as_dict(),
            )
        return {**out, **extra}

    def optimizer_for(self, params: Iterable[torch.Tensor], lr: float) -> torch.optim.Optimizer:
        """The variant's optimiser over ``params`` at learning rate ``lr`` (torch's default betas and eps, as both
        originals use), clipping the gradient norm before every step when ``max_grad_norm`` is set."""
        params = list(params)
        kwargs = {"weight_decay": self.weight_decay} if self.optimizer == "AdamW" else {}
        optimizer = OPTIMIZERS[self.optimizer](params, lr=lr, **kwargs)
        if self.max_grad_norm is not None:
            max_norm = self.max_grad_norm

            def clip(*_) -> None:
                torch.nn.utils.clip_grad_norm_(params, max_norm)

            optimizer.register_step_pre_hook(clip)
        return optimizer


def whole_unet(name: str) -> bool:
    """Parameter rule of the original Forget-Me-Not: every UNet parameter."""
    return True


def variant_help(variants: Mapping[str, VariantDefaults], extra: Mapping[str, str]) -> str:
    """The ``--variant`` help: each variant's label, defaults and own flags (``extra``)."""
    parts = [f"{name}: {spec.label}, {spec.describe()}{extra.get(name, '')}" for name, spec in variants.items()]
    return (
        "; ".join(parts) + ". --lr and --iterations default to the chosen variant's values; "
        "--variant original --help lists the original's flags"
    )


def peek_variant(argv: Optional[Sequence[str]]) -> str:
    """The ``--variant`` among ``argv`` (default ``authors``), read before the full parser is built, so that the
    parser can take the variant's defaults and flags. A bad value is argparse's usual error."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--variant", choices=VARIANTS, default="authors")
    return pre.parse_known_args(argv)[0].variant


def check_template(template: str, flag: str = "--concept_template") -> str:
    """A concept-prompt template holds exactly one ``{}`` (where the concept goes) and no other format field."""
    import string

    try:
        fields = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise ValueError(f"{flag} {template!r}: {e}; expected text with exactly one {{}}") from None
    if fields != [("", "", None)]:
        raise ValueError(
            f"{flag} {template!r}: expected exactly one {{}} (where the concept goes), e.g. 'a painting of {{}}'"
        )
    return template


def fill_template(concept_template: str, prompt: str) -> str:
    """The concept prompt of FMN and Ablating Concepts: ``concept_template`` (checked, :func:`check_template`)
    with ``prompt`` in its ``{}`` — the released scripts' ``a painting of <prompt>`` (FMN, with the concept-free
    context ``a painting of``) and ``<prompt> painting`` (Ablating Concepts, anchor ``painting``)."""
    return check_template(concept_template).format(prompt)


@dataclass(frozen=True)
class VariantSettings:
    """What every FMN and Ablating Concepts run is given, validated on construction (one-line ``ValueError`` naming
    the flag): the concept ``prompt`` (its images in ``<data_dir>/<prompt>/``), the ``variant`` and the concept
    prompt's template. A method's settings extend it with their own flags and :meth:`check_own`."""

    prompt: str
    variant: str = "authors"
    concept_template: str = "{}"

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"--variant {self.variant!r}: expected one of {', '.join(VARIANTS)}")
        self.check_own()
        check_concept_names([self.prompt])
        check_template(self.concept_template)

    def check_own(self) -> None:
        """Check the method's own settings (called after the variant, before the prompt and template)."""

    @property
    def concept_prompt(self) -> str:
        """The concept prompt: the template with the prompt in its ``{}`` (:func:`fill_template`)."""
        return fill_template(self.concept_template, self.prompt)


@dataclass
class VariantStep:
    """What a variant's set-up hands :func:`train_variant`: the step function, the progress bar's ``desc``, what
    the frozen original is (``reference``, for the summary), the settings the run records and the extra entries
    of ``args.json``."""

    step: Callable[[int], TrainStep]
    desc: str
    reference: str
    settings: dict
    run_args: dict = field(default_factory=dict)


def train_variant(
    session: TrainingSession,
    spec: VariantDefaults,
    setup: Callable[[torch.nn.Module, dict[str, torch.nn.Parameter]], VariantStep],
) -> dict:
    """The one training run of every FMN and Ablating Concepts variant: load the model, select ``spec``'s
    parameters, let ``setup(model, params)`` build the step (contexts, frozen original), open the run folder,
    train with ``spec``'s optimiser (:meth:`VariantDefaults.trainer_options`) and end the run with the trained
    tensors' record; returns the summary."""
    model = session.load_model()
    params = select_parameters(model, spec.parameter_rule)
    plan = setup(model, params)
    session.start_run(plan.run_args)
    options = spec.trainer_options(params.values(), session.settings.lr)
    result = session.fit(params, plan.step, plan.desc, **options)
    return session.finish(result, session.tensor_record(params), reference=plan.reference, settings=plan.settings)
