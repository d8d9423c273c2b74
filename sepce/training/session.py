"""One training run (:class:`TrainingSession`): checks the image folders and the output folder BEFORE any model
is loaded (bad input → one-line ``ValueError``/``FileNotFoundError``/``FileExistsError``), loads the model, draws
the common training step of docs/method.md ("The common training step"), builds the frozen original
(:class:`~sepce.training.parameters.FrozenReference`) and ends every run the same way (:meth:`TrainingSession.finish`:
record, optional full checkpoints, one summary schema).

All randomness (image choice, timesteps, posterior and forward-process noise) comes from ``--seed``.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import torch

from sepce import records
from sepce.modeling import load_model, unet_of
from sepce.paths import MODELS_DIR, run_name
from sepce.training.data import ImageFolder, encode_latents, q_sample, sample_timesteps
from sepce.training.parameters import FrozenReference
from sepce.training.run import Run, check_output_dir
from sepce.training.settings import TrainingSettings
from sepce.training.trainer import FitResult, ParameterTrainer, TrainStep


class TrainingSession:
    """One training run of ``method`` erasing ``concepts``: its validated settings, model loading, the common
    training step, and the one way every run ends (:meth:`finish`).

    Construction checks (before any model is loaded) that every ``<data_dir>/<concept>/`` image folder holds
    readable images (when ``images``) and that the output folder is empty or ``overwrite`` was given.
    ``image_folders`` are training images of other names (the original Ablating Concepts trains on its anchor
    prompt's images), drawn with :meth:`image` / :meth:`latent` under their key and counted in the summary. The
    output folder is ``settings.output_dir`` or ``MODELS_DIR / run_name(method, concepts, folder_suffix or
    suffix)``; full checkpoints are named ``run_name(method, <concepts>, suffix)`` (``ESD-VanGogh-xattn.ckpt``)."""

    def __init__(
        self,
        settings: TrainingSettings,
        method: str,
        concepts: Sequence[str],
        images: bool = True,
        suffix: Optional[str] = None,
        folder_suffix: Optional[str] = None,
        image_folders: Optional[Mapping[str, ImageFolder]] = None,
    ):
        self.settings = settings
        self.method = method
        self.concepts = list(concepts)
        self.suffix = suffix
        self.output_dir = settings.output_dir or MODELS_DIR / run_name(method, self.concepts, folder_suffix or suffix)
        check_output_dir(self.output_dir, settings.overwrite)
        self.folders: dict[str, ImageFolder] = dict(image_folders or {})
        if images:
            if settings.data_dir is None:
                raise ValueError(f"{method} trains on images, but no --data_dir was given")
            for c in self.concepts:
                self.folders[c] = ImageFolder(Path(settings.data_dir) / c, settings.image_size)
        self.generator = torch.Generator().manual_seed(settings.seed)
        self.device_generator: Optional[torch.Generator] = None
        self.model: Optional[torch.nn.Module] = None
        self.run: Optional[Run] = None

    @property
    def devices(self) -> list[torch.device]:
        return list(self.settings.devices)

    @property
    def device(self) -> torch.device:
        return self.settings.devices[0]

    @property
    def two_devices(self) -> bool:
        return len(self.devices) == 2 and self.devices[0] != self.devices[1]

    def load_model(self, device: Optional[torch.device] = None) -> torch.nn.Module:
        """The base model on the first device (fp32), gradient checkpointing as the settings say."""
        device = device or self.device
        model = load_model(self.settings.config_path, self.settings.ckpt_path, device)
        if self.settings.gradient_checkpointing is not None:
            unet_of(model).set_gradient_checkpointing(self.settings.gradient_checkpointing)
        if self.model is None:
            self.model = model
            self.device_generator = torch.Generator(device).manual_seed(self.settings.seed + 1)
        return model

    def frozen_reference(self, model: torch.nn.Module, trained: Mapping[str, torch.Tensor]) -> FrozenReference:
        """The frozen original: a copy on the second device with two distinct devices, otherwise the same
        weights with the original trained tensors substituted (one model copy in memory)."""
        if self.two_devices:
            frozen = self.load_model(self.devices[1])
            return FrozenReference.copy(frozen, trained)
        return FrozenReference.substituted(model, trained)

    def start_run(self, extra_args: Optional[Mapping[str, Any]] = None) -> Run:
        """Create the run folder (after the model loaded, so a failed load leaves nothing behind); ``args.json``
        holds the command line, ``extra_args`` and the resolved devices."""
        payload = {
            **self.settings.command_line,
            **(extra_args or {}),
            "devices_resolved": [str(d) for d in self.devices],
        }
        self.run = Run(self.output_dir, payload, self.method, overwrite=self.settings.overwrite)
        return self.run

    def trainer(
        self,
        params: Union[Mapping[str, torch.Tensor], Sequence[torch.Tensor]],
        desc: Optional[str] = None,
        zero_grad: Optional[bool] = None,
        iterations: Optional[int] = None,
        **kw: Any,
    ) -> ParameterTrainer:
        """A :class:`ParameterTrainer` wired to this run's learning rate, iterations, ``zero_grad``, precision,
        progress display and ``losses.csv``; refused for a run without a learning rate (``lr`` None)."""
        if self.settings.lr is None:
            raise ValueError(f"{self.method}: the run's settings have no learning rate (lr None), so no optimiser")
        return ParameterTrainer(
            params,
            lr=self.settings.lr,
            iterations=iterations or self.settings.iterations,
            run=self.run,
            zero_grad=self.settings.zero_grad if zero_grad is None else zero_grad,
            desc=desc or self.method,
            precision=self.settings.dtype,
            device=self.device,
            progress=self.settings.progress,
            **kw,
        )

    def fit(
        self,
        params: Union[Mapping[str, torch.Tensor], Sequence[torch.Tensor]],
        step_fn: Callable[[int], TrainStep],
        desc: Optional[str] = None,
        **kw: Any,
    ) -> FitResult:
        """Train ``params`` with ``step_fn`` (:meth:`trainer`'s loop; ``kw`` goes to it): the model in train mode
        for the loop, in eval mode after it, whatever stopped it."""
        model = self._model()
        model.train()
        try:
            return self.trainer(params, desc, **kw).fit(step_fn)
        finally:
            model.eval()

    # -- the common training step ----------------------------------------------------------------------
    def timesteps(self) -> tuple[int, torch.Tensor]:
        """``(t_enc, t)`` with ``t`` a 1-element long tensor on the training device."""
        t_enc, t = sample_timesteps(self.settings.ddim_steps, self.generator, self._model().num_timesteps)
        return t_enc, torch.tensor([t], device=self.device, dtype=torch.long)

    def image(self, concept: str) -> torch.Tensor:
        """One training image of ``concept`` (1×3×S×S in [-1, 1], on the training device)."""
        return self.folders[concept].sample(self.generator).to(self.device)

    def latent(self, concept: str) -> torch.Tensor:
        """z of one training image of ``concept`` (posterior sample × scale_factor, no grad)."""
        return encode_latents(self._model(), self.image(concept), self.device_generator)

    def noisy(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t = q_sample(z, t) with fresh noise."""
        return q_sample(self._model(), z, t.expand(z.shape[0]), self.device_generator)

    def _model(self) -> torch.nn.Module:
        if self.model is None:
            raise RuntimeError("load_model() first")
        return self.model

    # -- the end of every run ----------------------------------------------------------------------------
    def base_info(self) -> dict:
        return records.base_info(self.settings.ckpt_path, self.settings.config_path)

    def tensor_record(self, tensors: Mapping[str, torch.Tensor]) -> records.ErasureRecord:
        """A replaced-tensor record of the trained tensors' new values (CiE, ESD, FMN, Ablating Concepts)."""
        return records.ErasureRecord(
            method=self.method,
            concepts=list(self.concepts),
            base=self.base_info(),
            tensors={k: v.detach().float().cpu() for k, v in tensors.items()},
        )

    def finish(
        self,
        results: Union[FitResult, Sequence[FitResult]],
        record: records.ErasureRecord,
        *,
        reference: str,
        settings: Mapping[str, Any],
        concepts: Optional[Mapping[str, Mapping[str, Any]]] = None,
        stop_reason: Optional[str] = None,
    ) -> dict:
        """End the run: save ``record`` (``erasure.safetensors``), the full checkpoints ``--save_full`` asks for,
        ``loss.png`` and ``summary.json``; return the summary.

        ``concepts`` is per concept at least ``iterations`` and ``stop_reason`` (None: every concept of the run
        with the run's iterations and stop reason); ``settings`` the method's own settings and derived values
        (prompts built, sampling mode, ...). Both go into the record's metadata (keys the record already holds
        win, e.g. SepCE's per-concept bases; ``lr`` only when the run has one) and into the summary, whose keys
        are :data:`SUMMARY_KEYS` for every method. ``results`` is one :class:`FitResult` or several (SepCE
        trained one concept at a time); ``stop_reason`` overrides the joined stop reasons. Full checkpoints: one
        of the record's tensors, or for a separable record one per non-empty subset of its concepts."""
        if self.run is None:
            raise RuntimeError("start_run() first")
        results = [results] if isinstance(results, FitResult) else list(results)
        iterations = sum(r.iterations for r in results)
        reason = stop_reason or "; ".join(r.stop_reason for r in results)
        ok = all(r.ok for r in results)
        if concepts is None:
            concepts = {c: {"iterations": iterations, "stop_reason": reason} for c in self.concepts}
        common = {
            "iterations": iterations,
            "stop_reason": reason,
            "ok": ok,
            **({} if self.settings.lr is None else {"lr": self.settings.lr}),
            "reference": reference,
            "concepts": {c: dict(v) for c, v in concepts.items()},
        }
        record.meta = {**dict(settings), **common, **record.meta}
        records.save_record(self.run.add_file(records.RECORD_NAME), record, overwrite=True)
        if self.settings.save_full:
            self._save_full(record)
        data = {
            c: {"folder": str(f.folder), "images": len(f), "skipped_unreadable": len(f.skipped)}
            for c, f in self.folders.items()
        }
        return self.run.finish(
            iterations,
            reason,
            ok=ok,
            reference=reference,
            concepts=common["concepts"],
            devices=[str(d) for d in self.devices],
            data=data,
            settings=dict(settings),
            output_dir=str(self.output_dir),
        )

    def _save_full(self, record: records.ErasureRecord) -> None:
        if record.separable:
            base = dict(self._model().named_parameters())
            subsets = [
                s for k in range(1, len(record.concepts) + 1) for s in itertools.combinations(record.concepts, k)
            ]
        else:
            base, subsets = {}, [tuple(record.concepts)]
        for subset in subsets:
            name = f"{run_name(self.method, subset, self.suffix)}.{self.settings.save_full}"
            changed = records.changed_tensors(record, base, list(subset))
            records.write_full_checkpoint(self.settings.ckpt_path, self.run.add_file(name), changed, overwrite=True)


def finished_message(summary: Mapping[str, Any]) -> str:
    """What a training script prints at the end: one line per concept (iterations, stop reason), then the run
    folder."""
    lines = [
        f"{summary['method']} {c!r}: {info['iterations']} iterations, {info['stop_reason']}"
        for c, info in summary["concepts"].items()
    ]
    return "\n".join([*lines, f"saved {summary['output_dir']}"])
