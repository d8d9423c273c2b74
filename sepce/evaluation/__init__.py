"""Evaluation of erased models (docs/method.md, "Evaluation").

Modules (import what you need; nothing heavy is imported here):

- :mod:`~sepce.evaluation.images` — find generated ``<case>_<k>.png`` files, sort them into class folders,
  pair same-named files of two model folders.
- :mod:`~sepce.evaluation.loading` — the Resize+CenterCrop image transform and loaders.
- :mod:`~sepce.evaluation.weights` — offline lookup of torchvision ImageNet weights (cache or explicit path).
- :mod:`~sepce.evaluation.artist_classifier` — the ResNet18 style classifier: training, checkpoints, accuracy.
- :mod:`~sepce.evaluation.lpips_metric` — LPIPS (AlexNet, 64 px) per class.
- :mod:`~sepce.evaluation.fid` — Fréchet distance and per-class FID with a pluggable feature extractor.
- :mod:`~sepce.evaluation.verify` — refuse image folders that do not match their ``generation.json`` (every scorer
  calls it first).
- :mod:`~sepce.evaluation.results` — the ``<model folder>/results/`` layout (scripts write, the table reads).
- :mod:`~sepce.evaluation.table` — the paper's FID/ACC/LPIPS table (Markdown, CSV, bar chart).
- :mod:`~sepce.evaluation.common` — result fingerprints, message helpers (runner, devices: :mod:`sepce.cli`).

Seed pipeline::

    python train-scripts/move_image.py
    python train-scripts/artist-cls-test.py --path './evaluation_folder/'
    python eval-scripts/lpips_eval.py --original_path './evaluation_folder/default' \\
        --edited_path './evaluation_folder/eval' --prompts_path './data/evaluate.csv'
    python eval-scripts/make-table.py --original ./evaluation_folder/default \\
        --model CiE=./evaluation_folder/eval --erased 'CiE=Van Gogh'
"""
