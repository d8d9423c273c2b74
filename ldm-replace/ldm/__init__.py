"""A clean, dependency-light re-implementation of the CompVis ``ldm`` package for Stable Diffusion v1.

Module paths, class names, constructor parameters and state-dict keys match the CompVis code, so
``configs/stable-diffusion/v1-inference.yaml`` and ``sd-v1-4-full-ema.ckpt`` load unchanged. Extras built in for
concept erasure: separable key/value increments and attention-logit capture on cross-attention
(``ldm.modules.attention.CrossAttention``).
"""
