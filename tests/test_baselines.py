"""Baselines (ESD, Forget-Me-Not, Ablating Concepts): losses against direct computations, ESD's parameter
selection on a full-size SD v1 UNet built on the meta device, and the three training scripts end to end."""

from __future__ import annotations

import copy
import csv
import json
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_one_line_error, projection_outputs, run_script
from ldm.checkpoint import read_state_dict
from ldm.models.diffusion.sampling import ddim_timesteps
from PIL import Image

from sepce.methods.ablation import ABLATING_ANCHOR_PROMPT, ABLATING_CONCEPT_TEMPLATE, ablating_loss
from sepce.methods.esd import (
    ESD_TRAIN_METHODS,
    esd_loss,
    esd_parameter_keys,
    esd_sample_till_t,
    esd_sampling_steps,
    esd_target,
    esd_unet_names,
    split_concepts,
)
from sepce.methods.fmn import FMN_CONCEPT_TEMPLATE, FMN_NEUTRAL_PROMPT, AttentionCapture, fmn_loss
from sepce.methods.variants import check_template, fill_template
from sepce.modeling import attn2_modules, unet_of
from sepce.paths import DEFAULT_CONFIG


def emb(model, prompt):
    with torch.no_grad():
        return model.get_learned_conditioning([prompt])


# ---------------------------------------------------------------------------------------------------- ESD
def test_esd_target_arithmetic():
    g = torch.Generator().manual_seed(0)
    e_0, e_p, e_n = (torch.randn(1, 4, 8, 8, generator=g) for _ in range(3))
    torch.testing.assert_close(esd_target(e_0, e_p, 1.0), 2 * e_0 - e_p)
    torch.testing.assert_close(esd_target(e_0, e_p, 0.0), e_0)
    torch.testing.assert_close(esd_target(e_0, e_p, 2.5), 3.5 * e_0 - 2.5 * e_p)
    expected = ((e_n - (e_0 - 1.0 * (e_p - e_0))) ** 2).sum() / e_n.numel()
    torch.testing.assert_close(esd_loss(e_n, e_0, e_p, 1.0), expected)


def test_esd_loss_does_not_backprop_into_targets():
    e_0 = torch.randn(1, 4, 8, 8, requires_grad=True)
    e_p = torch.randn(1, 4, 8, 8, requires_grad=True)
    e_n = torch.randn(1, 4, 8, 8, requires_grad=True)
    esd_loss(e_n, e_0, e_p, 1.0).backward()
    assert e_n.grad is not None and e_0.grad is None and e_p.grad is None


@pytest.mark.parametrize(
    "t_enc, expected", [(0, 50), (1, 50), (2, 49), (25, 26), (49, 2)]
)  # S+1-t_enc steps, all S for t_enc = 0
def test_esd_sampling_steps_run_till_t(t_enc, expected):
    assert esd_sampling_steps(t_enc, 50) == expected
    assert esd_sampling_steps(t_enc, 50, "authors_all_steps") == 50  # the authors' sampler ignored the stop
    with pytest.raises(ValueError, match="--sampling 'till_T'"):
        esd_sampling_steps(t_enc, 50, "till_T")


class RecordingModel:
    """A stand-in model for the sampler: ε = 0 (so each DDIM step rescales x by √(ᾱ_prev/ᾱ_t)), records the DDPM
    timestep of every call (one call per step: guidance batches both branches)."""

    def __init__(self, alphas_cumprod):
        self.alphas_cumprod = alphas_cumprod
        self.timesteps = []

    def apply_model(self, x, t, cond):
        self.timesteps.append(int(t[0]))
        return torch.zeros_like(x)


@pytest.mark.parametrize("steps", [50, 10])
@pytest.mark.parametrize("position", ["zero", "one", "middle", "last"])
def test_esd_sample_till_t_ends_at_the_noise_level_of_the_scored_t(tiny_model, steps, position):
    """ESD's sampler (``if index + 1 == till_T: break``): step indices n-1 down to t_enc-1, so the returned latent
    sits at DDIM timestep ts[t_enc-2] (ᾱ of DDPM step 0 for t_enc <= 1), within three grid strides below every DDPM
    t of t_enc's bucket [t_enc·T/S, (t_enc+1)·T/S) — where the latent is scored. (Stopping after t_enc steps, as
    before, left it at noise level ~T - t_enc·T/S instead.)"""
    t_enc = {"zero": 0, "one": 1, "middle": steps // 2, "last": steps - 1}[position]
    ts = [int(v) for v in ddim_timesteps(steps)]
    stride = 1000 // steps
    ac = tiny_model.alphas_cumprod
    model = RecordingModel(ac)
    x_T = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    cond = uncond = torch.zeros(1, 77, 8)
    z = esd_sample_till_t(model, x_T, cond, uncond, t_enc, steps, 3.0)
    n_run = esd_sampling_steps(t_enc, steps)
    assert len(model.timesteps) == n_run == (steps if t_enc == 0 else steps + 1 - t_enc)
    assert model.timesteps == ts[::-1][:n_run]  # from the noisiest down; the last step is index t_enc-1
    if t_enc >= 1:
        assert model.timesteps[-1] == ts[t_enc - 1]
    reached = ts[t_enc - 2] if t_enc >= 2 else 0  # the last step's "previous" timestep
    torch.testing.assert_close(z, x_T * (ac[reached] / ac[ts[-1]]).sqrt(), rtol=1e-5, atol=1e-6)  # noise level
    bucket = range(round(t_enc / steps * 1000), round((t_enc + 1) / steps * 1000))
    if t_enc >= 2:
        assert all(0 < t - reached < 3 * stride for t in bucket)
    else:  # t_enc 0 and 1: the clean end of the schedule
        assert reached == 0 and max(bucket) < 2 * stride
    authors = RecordingModel(ac)
    esd_sample_till_t(authors, x_T, cond, uncond, t_enc, steps, 3.0, sampling="authors_all_steps")
    assert authors.timesteps == ts[::-1]  # all steps, whatever t_enc


def test_esd_sample_till_t_is_guided_ddim(tiny_model):
    """Explicit DDIM (Song et al. Eq. 12, eta 0) over the CompVis uniform 50-step grid, with separate conditional
    and unconditional forwards, against the batched sampler: t_enc = 47 runs the 4 noisiest steps."""
    m = tiny_model
    cond, uncond = emb(m, "Van Gogh"), emb(m, "")
    x_T = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    ac = m.alphas_cumprod.double()
    ts = list(range(1, 1000, 20))  # CompVis 'uniform' DDIM timesteps for 50 steps
    x = x_T.double()
    with torch.no_grad():
        for i in range(4):
            t, t_prev = ts[49 - i], ts[48 - i]
            tt = torch.tensor([t])
            e_u = m.apply_model(x.float(), tt, uncond).double()
            e_c = m.apply_model(x.float(), tt, cond).double()
            eps = e_u + 3.0 * (e_c - e_u)
            x0 = (x - (1 - ac[t]).sqrt() * eps) / ac[t].sqrt()
            x = ac[t_prev].sqrt() * x0 + (1 - ac[t_prev]).sqrt() * eps
    z = esd_sample_till_t(m, x_T, cond, uncond, 47, 50, 3.0)
    assert not z.requires_grad
    torch.testing.assert_close(z.double(), x, atol=1e-4, rtol=1e-4)


def test_split_concepts():
    assert split_concepts("Van Gogh", None) == ["Van Gogh"]
    assert split_concepts(" Van Gogh , Picasso", ",") == ["Van Gogh", "Picasso"]
    with pytest.raises(ValueError, match="empty concept"):
        split_concepts("Van Gogh,,Picasso", ",")


@pytest.fixture(scope="module")
def sd_unet_names():
    """Parameter names of the full-size SD v1.4 UNet, built on the meta device (no weights, no memory)."""
    from ldm.checkpoint import load_config
    from ldm.util import instantiate_from_config

    config = load_config(DEFAULT_CONFIG)
    with torch.device("meta"):
        unet = instantiate_from_config(config.model.params.unet_config)
    return [n for n, _ in unet.named_parameters()]


def test_esd_train_methods_on_full_size_unet(sd_unet_names):
    names = sd_unet_names
    # 16 transformer blocks, each attention = to_q, to_k, to_v weights + to_out weight and bias
    attn = {"attn1": 16 * 5, "attn2": 16 * 5}
    head_and_time = [
        "out.0.weight",
        "out.0.bias",
        "out.2.weight",
        "out.2.bias",
        "time_embed.0.weight",
        "time_embed.0.bias",
        "time_embed.2.weight",
        "time_embed.2.bias",
    ]
    assert all(n in names for n in head_and_time)
    total = len(names)
    expected_counts = {
        "xattn": attn["attn2"],
        "selfattn": attn["attn1"],
        "full": total,
        "notime": total - len(head_and_time),
        "noxattn": total - len(head_and_time) - attn["attn2"],
        "xlayer": 10,
        "selflayer": 10,
    }
    selected = {m: esd_unet_names(names, m) for m in ESD_TRAIN_METHODS}
    assert {m: len(v) for m, v in selected.items()} == expected_counts
    assert total == 686
    assert all("attn2" in n for n in selected["xattn"])
    assert "middle_block.1.transformer_blocks.0.attn2.to_k.weight" in selected["xattn"]
    assert "input_blocks.1.1.transformer_blocks.0.attn1.to_out.0.bias" in selected["selfattn"]
    assert not set(selected["noxattn"]) & (set(selected["xattn"]) | set(head_and_time))
    assert "input_blocks.0.0.weight" in selected["noxattn"]
    assert "output_blocks.2.1.conv.weight" in selected["noxattn"]
    assert "input_blocks.1.0.emb_layers.1.weight" in selected["noxattn"]  # ResBlock time projections stay
    assert set(selected["notime"]) == set(names) - set(head_and_time)
    suffixes = ["to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight", "to_out.0.bias"]
    assert selected["xlayer"] == [
        f"output_blocks.{b}.1.transformer_blocks.0.attn2.{s}" for b in (6, 8) for s in suffixes
    ]
    assert selected["selflayer"] == [
        f"input_blocks.{b}.1.transformer_blocks.0.attn1.{s}" for b in (4, 7) for s in suffixes
    ]


def test_esd_parameter_keys_use_state_dict_prefix(sd_unet_names):
    keys = ["model.diffusion_model." + n for n in sd_unet_names] + [
        "cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.k_proj.weight",
        "first_stage_model.encoder.mid.attn_1.k.weight",
    ]
    full = esd_parameter_keys(keys, "full")
    assert len(full) == 686 and all(k.startswith("model.diffusion_model.") for k in full)
    assert esd_parameter_keys(keys, "xattn") == [
        "model.diffusion_model." + n for n in esd_unet_names(sd_unet_names, "xattn")
    ]
    with pytest.raises(ValueError, match="'xatn'.*xattn, noxattn"):
        esd_parameter_keys(keys, "xatn")


# ---------------------------------------------------------------------------------------------------- FMN
def explicit_fmn_loss(model, x_t, t, c, c2):
    """Σ_l mean((q k_cᵀ − q k_c2ᵀ)² / d) from the to_q outputs of a forward with c (torch forward hooks)."""
    layers = attn2_modules(model)
    queries = projection_outputs(model, x_t, t, c)
    total = 0.0
    for name, mod in layers.items():
        h = mod.heads
        q = queries[(name, "to_q")]
        b, n, inner = q.shape
        d = inner // h
        with torch.no_grad():
            k, k2 = mod.to_k(c), mod.to_k(c2)
        q = q.reshape(b, n, h, d).permute(0, 2, 1, 3)
        k = k.reshape(b, -1, h, d).permute(0, 2, 1, 3)
        k2 = k2.reshape(b, -1, h, d).permute(0, 2, 1, 3)
        logits_c = torch.einsum("bhnd,bhmd->bhnm", q, k) / math.sqrt(d)
        logits_c2 = torch.einsum("bhnd,bhmd->bhnm", q, k2) / math.sqrt(d)
        total += ((logits_c - logits_c2) ** 2).mean().item()
    return total


def test_prompt_templates_of_the_authors_variants():
    """The released prompts by default; a world-style setting (the concept is the whole prompt) by flags."""
    assert fill_template(FMN_CONCEPT_TEMPLATE, "Van Gogh") == "a painting of Van Gogh"
    assert FMN_NEUTRAL_PROMPT == "a painting of"
    assert fill_template(ABLATING_CONCEPT_TEMPLATE, "Van Gogh") == "Van Gogh painting"
    assert ABLATING_ANCHOR_PROMPT == "painting"
    assert fill_template("{}", "in the style of waves") == "in the style of waves"
    for bad in ("a painting", "{} and {}", "{0} painting", "{x}", "{"):
        with pytest.raises(ValueError, match="--concept_template"):
            check_template(bad)
    with pytest.raises(ValueError, match="exactly one"):
        fill_template("a painting of", "Van Gogh")


def test_fmn_loss_equals_explicit_attention_logits(tiny_model):
    m = tiny_model
    c_text, c2_text = fill_template(FMN_CONCEPT_TEMPLATE, "Van Gogh"), FMN_NEUTRAL_PROMPT
    assert (c_text, c2_text) == ("a painting of Van Gogh", "a painting of")
    c, c2 = emb(m, c_text), emb(m, c2_text)
    x_t = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([437])
    layers = attn2_modules(m)
    assert len(layers) == 7
    with torch.no_grad():
        loss = fmn_loss(m, x_t, t, c, c2, layers)
    expected = explicit_fmn_loss(m, x_t, t, c, c2)
    assert expected > 0
    assert loss.item() == pytest.approx(expected, rel=1e-4)
    with torch.no_grad():
        assert fmn_loss(m, x_t, t, c, c, layers).item() == 0.0
    assert all(mod.attention_hook is None for mod in layers.values())


def test_fmn_gradients_with_and_without_gradient_checkpointing(tiny_model):
    """The capture keeps references only, so checkpointed blocks recompute consistently: same gradients."""
    model = copy.deepcopy(tiny_model)
    model.train()
    params = {n: p for n, p in model.named_parameters() if "attn2" in n and n.startswith("model.")}
    for p in params.values():
        p.requires_grad_(True)
    c, c2 = emb(model, "a painting of Van Gogh"), emb(model, "a painting of")
    x_t = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([123])
    grads = []
    for flag in (True, False):
        unet_of(model).set_gradient_checkpointing(flag)
        model.zero_grad(set_to_none=True)
        fmn_loss(model, x_t, t, c, c2, attn2_modules(model)).backward()
        grads.append({n: torch.zeros_like(p) if p.grad is None else p.grad.clone() for n, p in params.items()})
    # queries and keys of every layer feed the loss; values/outputs only through later layers' queries
    assert all(grads[0][n].abs().sum() > 0 for n in params if "to_q" in n or "to_k" in n)
    assert any(grads[0][n].abs().sum() > 0 for n in params if "to_v" in n)
    for n in params:
        torch.testing.assert_close(grads[0][n], grads[1][n], atol=1e-7, rtol=1e-5)


def test_attention_capture_restores_and_refuses_busy_layers(tiny_model):
    layers = attn2_modules(tiny_model)
    cap = AttentionCapture(layers)
    with cap:
        assert all(mod.attention_hook is not None for mod in layers.values())
        with pytest.raises(RuntimeError, match="already has an attention_hook"):
            AttentionCapture(layers).__enter__()
    assert all(mod.attention_hook is None for mod in layers.values())


# ------------------------------------------------------------------------------------------ Ablating Concepts
def test_ablating_loss_two_terms(tiny_model):
    m = tiny_model
    concept, anchor = fill_template(ABLATING_CONCEPT_TEMPLATE, "Van Gogh"), ABLATING_ANCHOR_PROMPT
    assert (concept, anchor) == ("Van Gogh painting", "painting")
    x_t = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    t = torch.tensor([700])
    with torch.no_grad():
        e_pn = m.apply_model(x_t, t, emb(m, concept))
        e_p0 = m.apply_model(x_t, t, emb(m, anchor))
        e_n = m.apply_model(x_t, t, emb(m, anchor)) + 0.1  # a shifted "original" so both terms are non-zero
    loss, concept_term, anchor_term = ablating_loss(e_pn, e_p0, e_n)
    direct_1 = ((e_pn - e_n) ** 2).mean()
    direct_2 = ((e_p0 - e_n) ** 2).mean()
    torch.testing.assert_close(concept_term, direct_1)
    torch.testing.assert_close(anchor_term, direct_2)
    torch.testing.assert_close(loss, direct_1 + 10 * direct_2)
    torch.testing.assert_close(anchor_term, torch.tensor(0.01), rtol=1e-5, atol=0)
    assert ablating_loss(e_pn, e_p0, e_n, anchor_weight=0.0)[0] == F.mse_loss(e_pn, e_n)


# ------------------------------------------------------------------------------------------------- scripts
SEED_COMMANDS = {
    "FMN": ["train-scripts/FMN.py", "--lr", "1e-5", "--iter_break", "10", "--prompt", "Van Gogh", "--devices", "0,1"],
    "Abconcept": [
        "train-scripts/Abconcept.py",
        "--lr",
        "1e-5",
        "--iter_break",
        "50",
        "--prompt",
        "Van Gogh",
        "--devices",
        "0,1",
    ],
    "ESD": [
        "train-scripts/Esd.py",
        "--prompt",
        "Van Gogh",
        "--train_method",
        "xattn",
        "--iterations",
        "1000",
        "--devices",
        "0,1",
    ],
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """``<data_dir>/Van Gogh/`` and ``<data_dir>/Picasso/`` with a few small random images (not square, so
    Resize + CenterCrop do work)."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for prompt in ("Van Gogh", "Picasso"):
        (root / prompt).mkdir()
        for k in range(3):
            Image.fromarray(rng.integers(0, 256, (72, 90, 3), dtype=np.uint8)).save(root / prompt / f"{k}.png")
    return root


def tiny_overrides(tiny_ckpt, iterations):
    return [
        "--ckpt_path",
        tiny_ckpt,
        "--config_path",
        tiny_ckpt.parent / "config.yaml",
        "--devices",
        "cpu",
        "--image_size",
        "64",
        "--iterations",
        str(iterations),
    ]


def check_run(run_dir, method, iterations, tiny_ckpt, expected_keys):
    """Run files as promised, and the erased model loads like any other through the generation resolver."""
    from sepce.modeling import load_resolved, resolve_model
    from sepce.records import load_record

    assert {"args.json", "losses.csv", "summary.json", "loss.png", "erasure.safetensors"} <= {
        p.name for p in run_dir.iterdir()
    }
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["method"] == method and summary["iterations"] == iterations and summary["ok"] is True
    rows = list(csv.DictReader((run_dir / "losses.csv").open()))
    assert len(rows) == iterations and all(math.isfinite(float(r["loss"])) for r in rows)
    record = load_record(run_dir)
    assert record.method == method and sorted(record.tensors) == sorted(expected_keys)
    resolved = resolve_model(str(run_dir), tiny_ckpt, tiny_ckpt.parent / "config.yaml")
    erased = load_resolved(resolved, torch.device("cpu"))
    base = read_state_dict(tiny_ckpt)
    params = dict(erased.named_parameters())
    moved = 0
    for k, v in record.tensors.items():
        assert torch.equal(params[k], v)
        moved += not torch.equal(v, base[k])
    assert moved > 0
    untouched = [k for k in params if k.startswith("model.diffusion_model.") and k not in record.tensors]
    assert all(torch.equal(params[k], base[k]) for k in untouched)
    return rows, record


def attn2_keys(tiny_model):
    return [k for k, _ in tiny_model.named_parameters() if k.startswith("model.diffusion_model.") and "attn2" in k]


def test_fmn_seed_command_end_to_end(tiny_ckpt, tiny_model, data_dir, tmp_path):
    out = tmp_path / "fmn"
    proc = run_script(*SEED_COMMANDS["FMN"], "--data_dir", data_dir, *tiny_overrides(tiny_ckpt, 3), "--output_dir", out)
    assert "FMN 'Van Gogh': 3 iterations" in proc.stdout
    rows, record = check_run(out, "FMN", 3, tiny_ckpt, attn2_keys(tiny_model))
    assert float(rows[0]["l1_drift"]) == 0.0 and float(rows[-1]["l1_drift"]) > 0
    assert (
        record.meta["concept_prompt"] == "a painting of Van Gogh" and record.meta["neutral_prompt"] == "a painting of"
    )
    assert record.meta["variant"] == "authors" and record.concepts == ["Van Gogh"]


def test_abconcept_seed_command_end_to_end_with_full_checkpoint(tiny_ckpt, tiny_model, data_dir, tmp_path):
    out = tmp_path / "ac"
    run_script(
        *SEED_COMMANDS["Abconcept"],
        "--data_dir",
        data_dir,
        *tiny_overrides(tiny_ckpt, 3),
        "--output_dir",
        out,
        "--save_full",
    )
    rows, record = check_run(out, "Abconcept", 3, tiny_ckpt, attn2_keys(tiny_model))
    for r in rows:  # the logged loss is the two-term loss
        expected = float(r["concept_mse"]) + 10 * float(r["anchor_mse"])
        assert float(r["loss"]) == pytest.approx(expected, rel=1e-5)
    full = read_state_dict(out / "Abconcept-VanGogh.ckpt")
    base = read_state_dict(tiny_ckpt)
    assert sorted(full) == sorted(base)
    assert all(torch.equal(full[k], record.tensors.get(k, base[k])) for k in base)


def test_esd_seed_command_end_to_end(tiny_ckpt, tiny_model, tmp_path):
    out = tmp_path / "esd"
    proc = run_script(*SEED_COMMANDS["ESD"], *tiny_overrides(tiny_ckpt, 3), "--output_dir", out)
    assert "ESD 'Van Gogh': 3 iterations" in proc.stdout
    names = [k for k, _ in tiny_model.named_parameters()]
    rows, record = check_run(out, "ESD", 3, tiny_ckpt, esd_parameter_keys(names, "xattn"))
    assert all(0 <= int(r["t_enc"]) < 50 and r["concept"] == "Van Gogh" for r in rows)
    assert all(int(r["ddim_steps_run"]) == esd_sampling_steps(int(r["t_enc"]), 50) for r in rows)
    assert record.meta["train_method"] == "xattn" and record.meta["negative_guidance"] == 1.0
    summary = json.loads((out / "summary.json").read_text())
    assert record.meta["sampling"] == summary["settings"]["sampling"] == "till_t"


def test_esd_authors_sampling_is_recorded(tiny_ckpt, tmp_path, load_script, capsys):
    esd = load_script("train-scripts/Esd.py")
    argv = ["--prompt", "Van Gogh", "--sampling", "authors_all_steps", "--ddim_steps", "4"]
    summary = esd.main(esd.parse_args([*argv, *map(str, tiny_overrides(tiny_ckpt, 2)), "--output_dir", str(tmp_path)]))
    rows = list(csv.DictReader((tmp_path / "losses.csv").open()))
    assert [int(r["ddim_steps_run"]) for r in rows] == [4, 4]
    assert summary["settings"]["sampling"] == "authors_all_steps"
    with pytest.raises(SystemExit):
        esd.parse_args(["--help"])
    assert (
        "authors_all_steps: always all steps, the clean latent scored at t — for reproducing the paper's ESD row"
        in (" ".join(capsys.readouterr().out.split()))
    )


def test_fmn_and_ablating_concepts_take_world_style_prompts(tiny_ckpt, tmp_path, load_script):
    """The concept read from --prompt (images in <data_dir>/<prompt>/), the prompts built from the templates and
    recorded in the summary and the record."""
    from sepce.records import load_record

    concept = "in the style of waves"
    (tmp_path / "data" / concept).mkdir(parents=True)
    rng = np.random.default_rng(1)
    for k in range(2):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
            tmp_path / "data" / concept / f"{k}.png"
        )
    common = ["--prompt", concept, "--data_dir", str(tmp_path / "data"), *map(str, tiny_overrides(tiny_ckpt, 1))]
    fmn = load_script("train-scripts/FMN.py")
    out = tmp_path / "fmn"
    argv = [*common, "--concept_template", "{}", "--neutral_prompt", "in the style of", "--output_dir", str(out)]
    summary = fmn.main(fmn.parse_args(argv))
    expected = {"concept_prompt": concept, "neutral_prompt": "in the style of", "concept_template": "{}"}
    assert expected.items() <= summary["settings"].items() and expected.items() <= load_record(out).meta.items()
    assert summary["data"][concept]["images"] == 2
    ac = load_script("train-scripts/Abconcept.py")
    out = tmp_path / "ac"
    summary = ac.main(
        ac.parse_args([*common, "--concept_template", "{}", "--anchor_prompt", "", "--output_dir", str(out)])
    )
    expected = {"concept_prompt": concept, "anchor_prompt": "", "variant": "authors"}
    assert expected.items() <= summary["settings"].items() and expected.items() <= load_record(out).meta.items()
    defaults = ac.parse_args(common)
    assert (defaults.concept_template, defaults.anchor_prompt) == ("{} painting", "painting")
    defaults = fmn.parse_args(common)
    assert (defaults.concept_template, defaults.neutral_prompt) == ("a painting of {}", "a painting of")


def test_esd_several_concepts_noxattn(tiny_ckpt, tiny_model, tmp_path, load_script):
    esd = load_script("train-scripts/Esd.py")
    out = tmp_path / "esd-multi"
    args = esd.parse_args(
        [
            "--prompt",
            "Van Gogh, Picasso",
            "--seperator",
            ",",
            "--train_method",
            "noxattn",
            *map(str, tiny_overrides(tiny_ckpt, 6)),
            "--ddim_steps",
            "5",
            "--output_dir",
            str(out),
        ]
    )
    summary = esd.main(args)
    assert set(summary["concepts"]) == {"Van Gogh", "Picasso"}
    names = [k for k, _ in tiny_model.named_parameters()]
    rows, record = check_run(out, "ESD", 6, tiny_ckpt, esd_parameter_keys(names, "noxattn"))
    assert record.concepts == ["Van Gogh", "Picasso"]
    drawn = {r["concept"] for r in rows}
    assert drawn <= {"Van Gogh", "Picasso"} and sum(summary["concepts"][c]["draws"] for c in drawn) == 6
    assert all(0 <= int(r["t_enc"]) < 5 for r in rows)
    assert not any(
        "attn2" in k or "time_embed" in k or k.startswith("model.diffusion_model.out.") for k in record.tensors
    )


@pytest.mark.parametrize(
    "script, argv, message",
    [
        ("Esd", ["--prompt", "Van Gogh", "--start_guidance", "nan"], "--start_guidance nan: expected a finite number"),
        ("Esd", ["--prompt", "Van Gogh,", "--seperator", ","], "gives an empty concept"),
        ("Esd", ["--prompt", "St. Ives"], "contains '.'"),
        ("Esd", ["--prompt", "Van Gogh", "--ddim_steps", "600"], "--ddim_steps 600"),
        ("Esd", ["--prompt", "Van Gogh", "--lr", "-1"], "--lr -1.0: expected a positive number"),
        ("FMN", ["--prompt", "Cezanne"], "image folder"),
        ("FMN", ["--prompt", "Van Gogh", "--iter_break", "0"], "--iterations 0: expected a positive integer"),
        ("Abconcept", ["--prompt", "Van Gogh", "--anchor_weight", "-1"], "--anchor_weight -1.0"),
        ("Abconcept", ["--prompt", "Van Gogh", "--devices", "0,1,2"], "--devices '0,1,2'"),
        ("Abconcept", ["--prompt", "Van Gogh", "--concept_template", "{} {}"], "--concept_template '{} {}'"),
        ("FMN", ["--prompt", "Van Gogh", "--concept_template", "a painting"], "--concept_template 'a painting'"),
    ],
)
def test_bad_input_refused_before_loading(
    script, argv, message, tiny_ckpt, data_dir, tmp_path, no_model_load, load_script
):
    module = load_script(f"train-scripts/{script}.py")
    extra = [] if script == "Esd" else ["--data_dir", str(data_dir)]
    args = module.parse_args(
        [*map(str, tiny_overrides(tiny_ckpt, 2)), *extra, "--output_dir", str(tmp_path / "run"), *argv]
    )
    with pytest.raises((ValueError, FileNotFoundError), match=re.escape(message)):
        module.main(args)
    assert not (tmp_path / "run").exists()


def test_cli_errors_are_one_line(tiny_ckpt, data_dir, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "losses.csv").write_text("iteration,loss\n")
    proc = run_script(
        "train-scripts/FMN.py",
        "--prompt",
        "Van Gogh",
        "--data_dir",
        data_dir,
        *tiny_overrides(tiny_ckpt, 2),
        "--output_dir",
        out,
        check=False,
    )
    assert_one_line_error(
        proc,
        f"FMN.py: error: --output_dir {out} is not empty; refusing to overwrite a run (pass --overwrite or choose "
        "another --output_dir)",
    )
    assert (out / "losses.csv").read_text() == "iteration,loss\n"
    proc = run_script("train-scripts/Esd.py", "--prompt", "Van Gogh", "--train_method", "xatn", check=False)
    assert proc.returncode == 2 and "invalid choice: 'xatn'" in proc.stderr
