"""The optimisation loop of every trained method (:class:`ParameterTrainer`): Adam (or a method's own optimiser)
over a set of tensors; gradient ACCUMULATION as in the released CiE/SepCE/FMN/AC scripts unless ``zero_grad``; a
non-finite loss or gradient stops the run and keeps the last good state; Ctrl-C stops cleanly; a tqdm bar; one
``losses.csv`` row per iteration into a :class:`~sepce.training.run.Run`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import torch

from sepce.training.run import Run

log = logging.getLogger(__package__)  # one logger for the whole training harness: "sepce.training"


@dataclass
class TrainStep:
    """What a method's step function returns: the loss to minimise (with grad), values for ``losses.csv``, and
    optionally a stop reason decided from this iteration (applied after its optimizer step)."""

    loss: torch.Tensor
    values: dict[str, Any] = field(default_factory=dict)
    stop: Optional[str] = None


@dataclass
class FitResult:
    iterations: int
    stop_reason: str
    ok: bool = True  # False after a non-finite loss/gradient or an interruption


#: The values of a ``losses.csv`` row the progress bar shows.
_SHOWN = ("loss", "momentum")


class ParameterTrainer:
    """Adam over the tensors ``params`` for at most ``iterations`` steps of ``step_fn`` (see :meth:`fit`).

    Gradients accumulate across iterations unless ``zero_grad`` (the released scripts never zeroed them). A
    non-finite loss stops the run and restores the parameters of the previous iteration (whose loss was
    finite); a non-finite gradient stops it before the optimizer step. ``precision`` other than fp32 runs
    ``step_fn`` under ``torch.autocast`` (fp16 with a gradient scaler on CUDA)."""

    def __init__(
        self,
        params: Union[Mapping[str, torch.Tensor], Sequence[torch.Tensor]],
        lr: float,
        iterations: int,
        run: Optional[Run] = None,
        zero_grad: bool = False,
        desc: str = "training",
        precision: torch.dtype = torch.float32,
        device: Optional[torch.device] = None,
        keep_last_good: bool = True,
        progress: bool = True,
        optimizer: Optional[torch.optim.Optimizer] = None,
    ):
        self.params = list(params.values()) if isinstance(params, Mapping) else list(params)
        if not self.params:
            raise ValueError("nothing to train: the parameter list is empty")
        self.optimizer = optimizer or torch.optim.Adam(self.params, lr=lr)
        self.iterations = iterations
        self.run = run
        self.zero_grad = zero_grad
        self.desc = desc
        self.precision = precision
        self.device = device or self.params[0].device
        self.keep_last_good = keep_last_good
        self.progress = progress
        self._last_good: Optional[list[torch.Tensor]] = None
        self._steps_kept = 0  # optimizer steps of the current fit whose parameters are kept
        self._stepping = False  # inside an optimizer step (a Ctrl-C there is undone)
        use_scaler = precision == torch.float16 and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda") if use_scaler else None

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.precision)

    def _grads_finite(self) -> bool:
        return all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in self.params)

    @torch.no_grad()
    def _remember(self) -> None:
        if not self.keep_last_good:
            return
        if self._last_good is None:
            self._last_good = [p.detach().clone() for p in self.params]
        else:
            for saved, p in zip(self._last_good, self.params):
                saved.copy_(p)

    @torch.no_grad()
    def _roll_back(self) -> bool:
        if self._last_good is None:
            return False
        for saved, p in zip(self._last_good, self.params):
            p.copy_(saved)
        return True

    def fit(
        self,
        step_fn: Callable[[int], TrainStep],
        after_step: Optional[Callable[[int, TrainStep], Optional[str]]] = None,
        start: int = 0,
    ) -> FitResult:
        """Run ``step_fn(i)`` → backward → optimizer step for i = start, start+1, …; log one row per iteration
        (``iteration``, ``loss``, the step's values, ``seconds``); stop at the first stop reason (the step's, or
        ``after_step(i, step)``'s, evaluated after the optimizer step) or after ``iterations`` iterations."""
        bar = self._progress_bar(start)
        started = time.perf_counter()
        self._steps_kept, self._stepping = 0, False
        stop: Optional[tuple[str, bool]] = None
        i = start
        try:
            for i in bar:
                stop = self._iteration(i, start, step_fn, after_step, bar)
                if stop is not None:
                    break
        except KeyboardInterrupt:
            stop = self._interrupted(i)
        finally:
            bar.close()
        reason, ok = stop or (f"iteration cap reached ({self.iterations} iterations)", True)
        if not ok:
            log.warning("%s: %s", self.desc, reason)
        if not self.progress:  # no bar to watch: one line per finished run
            seconds = time.perf_counter() - started
            log.info("%s: %d iteration(s), %s, %.1f s", self.desc, self._steps_kept, reason, seconds)
        return FitResult(iterations=self._steps_kept, stop_reason=reason, ok=ok)

    def _iteration(
        self,
        i: int,
        start: int,
        step_fn: Callable[[int], TrainStep],
        after_step: Optional[Callable[[int, TrainStep], Optional[str]]],
        bar: Any,
    ) -> Optional[tuple[str, bool]]:
        """Iteration ``i``: the step, its checks, the optimizer step and the ``losses.csv`` row; returns ``(stop
        reason, ok)`` when the run stops here, None to go on."""
        tic = time.perf_counter()
        if self.zero_grad:
            self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            step = step_fn(i)
        value = float(step.loss.detach().float())
        row = {"iteration": i, "loss": value, **step.values}
        if not math.isfinite(value):
            self._log(row, tic)
            return self._non_finite_loss(i, value), False
        (self.scaler.scale(step.loss) if self.scaler else step.loss).backward()
        if self.scaler is None and not self._grads_finite():
            self._log(row, tic)
            return (
                f"non-finite gradient at iteration {i}; stopped before its optimizer step "
                f"(parameters of iteration {i} kept, their loss {value:.6g} was finite)"
            ), False
        self._optimizer_step()
        self._steps_kept = i - start + 1
        self._log(row, tic)
        bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in row.items() if k in _SHOWN})
        stop = step.stop or (after_step(i, step) if after_step else None)
        return (stop, True) if stop else None

    def _progress_bar(self, start: int) -> Any:
        from tqdm import tqdm

        return tqdm(
            range(start, start + self.iterations),
            desc=self.desc,
            disable=not self.progress,
            file=sys.stderr,
            dynamic_ncols=True,
        )

    def _optimizer_step(self) -> None:
        """Remember the parameters (for a rollback), then step, through the gradient scaler when there is one."""
        self._remember()
        self._stepping = True
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self._stepping = False

    def _non_finite_loss(self, i: int, value: float) -> str:
        """Roll back to the parameters of the previous iteration, whose loss was finite; the stop reason."""
        if self._roll_back():
            self._steps_kept -= 1
            kept = f"restored the parameters of iteration {i - 1}, whose loss was finite"
        else:
            kept = "no optimizer step had been taken"
        return f"non-finite loss ({value}) at iteration {i}; stopped and {kept}"

    def _interrupted(self, i: int) -> tuple[str, bool]:
        """Ctrl-C: an optimizer step cut short is undone; the stop reason."""
        if self._stepping:
            self._roll_back()
        return f"interrupted by the user at iteration {i} ({self._steps_kept} optimizer steps kept)", False

    def _log(self, row: dict, tic: float) -> None:
        if self.run is not None:
            self.run.log({**row, "seconds": round(time.perf_counter() - tic, 4)})
