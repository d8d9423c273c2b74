"""The training harness every erasure method shares (CiE, SepCE, ESD, Forget-Me-Not, Ablating Concepts, and UCE's
closed form for its run folder), so that a method's module (:mod:`sepce.methods`) only holds its loss and step and a
script only its flags:

* :mod:`~sepce.training.settings` — the common flags and the validated :class:`TrainingSettings` they become;
* :mod:`~sepce.training.data` — training images (:class:`ImageFolder`), latents, the timestep draw, ``q_sample``;
* :mod:`~sepce.training.parameters` — which tensors are trained (:func:`select_parameters`) and the frozen original
  (:class:`FrozenReference`);
* :mod:`~sepce.training.trainer` — the optimisation loop (:class:`ParameterTrainer`, :class:`TrainStep`,
  :class:`FitResult`);
* :mod:`~sepce.training.run` — the run folder (:class:`Run`: ``args.json``, ``losses.csv``, ``summary.json``,
  ``loss.png``);
* :mod:`~sepce.training.session` — one run from flags to summary (:class:`TrainingSession`).

The public names are re-exported here, so ``from sepce.training import TrainingSession`` keeps working.
"""

from sepce.training.data import IMAGE_SUFFIXES, ImageFolder, encode_latents, q_sample, sample_timesteps
from sepce.training.parameters import PARAMETER_RULES, UNET_PREFIX, FrozenReference, select_parameters
from sepce.training.run import RUN_FILES, SUMMARY_KEYS, Run, check_output_dir, cpu_peak_rss_bytes, peak_memory
from sepce.training.session import TrainingSession, finished_message
from sepce.training.settings import (
    FULL_FORMATS,
    GRADIENT_CHECKPOINTING,
    TrainingSettings,
    add_common_args,
    add_run_args,
    check_positive,
    settings_from_args,
    training_parser,
)
from sepce.training.trainer import FitResult, ParameterTrainer, TrainStep

__all__ = [
    "FULL_FORMATS",
    "GRADIENT_CHECKPOINTING",
    "IMAGE_SUFFIXES",
    "PARAMETER_RULES",
    "RUN_FILES",
    "SUMMARY_KEYS",
    "UNET_PREFIX",
    "FitResult",
    "FrozenReference",
    "ImageFolder",
    "ParameterTrainer",
    "Run",
    "TrainStep",
    "TrainingSession",
    "TrainingSettings",
    "add_common_args",
    "add_run_args",
    "check_output_dir",
    "check_positive",
    "cpu_peak_rss_bytes",
    "encode_latents",
    "finished_message",
    "peak_memory",
    "q_sample",
    "sample_timesteps",
    "select_parameters",
    "settings_from_args",
    "training_parser",
]
