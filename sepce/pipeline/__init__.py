"""The one pipeline runner every multi-step script hands its plan to (DESIGN.md; ``eval-scripts/reproduce.py``,
``eval-scripts/world-benchmark.py``).

- :mod:`sepce.pipeline.steps`: a step (its command, what it reads and writes, whether it resumes, its resources),
  the dependency graph read off the reads and writes, and the dry run;
- :mod:`sepce.pipeline.timing`: per-step and per-invocation wall times of a work directory;
- :mod:`sepce.pipeline.executors`: where a step runs -- in this interpreter, as a local process (its own GPUs
  through ``CUDA_VISIBLE_DEVICES``), or as a submitit job (its local executor, or Slurm);
- :mod:`sepce.pipeline.runner`: runs a plan (resume, failures stop only their dependents, booking).
"""
