"""Learning-rate schedules named by CompVis configs (``scheduler_config``)."""

from __future__ import annotations

from typing import Sequence


class LambdaLinearScheduler:
    """Linear warm-up from ``f_start`` to ``f_max`` over ``warm_up_steps``, then linear from ``f_max`` towards ``f_min``
    over each cycle; used as ``torch.optim.lr_scheduler.LambdaLR(opt, scheduler.schedule)``.
    """

    def __init__(
        self,
        warm_up_steps: Sequence[int],
        f_min: Sequence[float],
        f_max: Sequence[float],
        f_start: Sequence[float],
        cycle_lengths: Sequence[int],
        verbosity_interval: int = 0,
    ):
        self.lr_warm_up_steps = list(warm_up_steps)
        self.f_start = list(f_start)
        self.f_min = list(f_min)
        self.f_max = list(f_max)
        self.cycle_lengths = list(cycle_lengths)
        self.cum_cycles = [0]
        for length in self.cycle_lengths:
            self.cum_cycles.append(self.cum_cycles[-1] + length)

    def find_in_interval(self, n: int) -> int:
        for cycle, end in enumerate(self.cum_cycles[1:]):
            if n <= end:
                return cycle
        return len(self.cycle_lengths) - 1

    def schedule(self, n: int) -> float:
        cycle = self.find_in_interval(n)
        n = n - self.cum_cycles[cycle]
        warm = self.lr_warm_up_steps[cycle]
        if n < warm:
            return (self.f_max[cycle] - self.f_start[cycle]) / warm * n + self.f_start[cycle]
        length = self.cycle_lengths[cycle]
        return self.f_min[cycle] + (self.f_max[cycle] - self.f_min[cycle]) * (length - n) / length

    def __call__(self, n: int) -> float:
        return self.schedule(n)
