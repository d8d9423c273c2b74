"""One module per erasure method, each holding that method's loss, parameter selection, defaults and training step
(docs/method.md names the section of each):

* :mod:`~sepce.methods.cie` — Concept-irrelevant Erasure (CiE);
* :mod:`~sepce.methods.sepce` — Separable Concept Erasure (SepCE), on the increments of :mod:`sepce.increments`;
* :mod:`~sepce.methods.esd` — Erased Stable Diffusion (ESD, Gandikota et al. 2023);
* :mod:`~sepce.methods.fmn` — Forget-Me-Not (FMN, Zhang et al. 2023), authors' and original variants;
* :mod:`~sepce.methods.ablation` — Ablating Concepts (AC, Kumari et al. 2023), authors' and original variants;
* :mod:`~sepce.methods.uce` — Unified Concept Editing (UCE, Gandikota et al. 2024), closed form.

What several methods share: :mod:`~sepce.methods.common` (the direction term, the L1 drift, the momentum stop, the
concept-name check) and :mod:`~sepce.methods.variants` (FMN's and AC's variant defaults, the ``--variant`` flag,
and the one training skeleton their variants run through). The training harness itself is :mod:`sepce.training`;
the scripts in ``train-scripts/`` hold the flags and one call. Nothing here imports :mod:`sepce.world`.
"""
