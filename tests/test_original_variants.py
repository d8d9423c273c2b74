"""The original Forget-Me-Not and Ablating Concepts (``--variant original`` of train-scripts/FMN.py and
Abconcept.py; docs/method.md, "The original FMN and Ablating Concepts"): the losses against independent
computations on the tiny model, the concept token positions, which parameters train, and both scripts end to end."""

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
from PIL import Image

from sepce.methods.ablation import (
    ABLATING_VARIANTS,
    ablating_original_loss,
    model_based_ablation_loss,
    prior_preservation_loss,
)
from sepce.methods.fmn import (
    FMN_VARIANTS,
    AttentionCapture,
    attention_probabilities,
    concept_attention_loss,
    concept_token_positions,
    fmn_attention_loss,
    fmn_original_defaults,
)
from sepce.modeling import attn2_modules, tokenizer_from_config, unet_of
from sepce.records import load_record
from sepce.training import SUMMARY_KEYS, select_parameters

UNET = "model.diffusion_model."


def emb(model, prompt):
    with torch.no_grad():
        return model.get_learned_conditioning([prompt])


def tokenizer_of(model):
    return model.cond_stage_model.tokenizer


def noisy_input(seed, t=437):
    return torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(seed)), torch.tensor([t])


# ---------------------------------------------------------------------------------------------- concept positions
def test_concept_positions_of_a_multi_token_concept(tiny_model, tiny_ckpt):
    tok = tokenizer_of(tiny_model)
    prompt = "a painting of Van Gogh"
    ids = tok([prompt])[0].tolist()
    positions = concept_token_positions(tok, prompt, "Van Gogh")
    assert positions == [4, 5]  # 0 start, 1 a, 2 painting, 3 of, 4-5 van gogh, 6 end
    assert [tok.decode([ids[i]]) for i in positions] == ["van", "gogh"]
    assert ids[0] == tok.bos_token_id and ids[6] == tok.eos_token_id
    # the concept's own tokens, whatever the template: every occurrence, several tokens each
    assert concept_token_positions(tok, "Van Gogh by Van Gogh", "Van Gogh") == [1, 2, 4, 5]
    assert concept_token_positions(tok, "Van Gogh's painting", "Van Gogh") == [1, 2]
    # use_pooler: the end token and its padding copies (SD's tokenizer pads with it)
    pooled = concept_token_positions(tok, prompt, "Van Gogh", use_pooler=True)
    assert pooled == [4, 5, *range(6, len(ids))] and len(ids) == tok.max_length
    assert all(ids[i] == tok.eos_token_id for i in pooled[2:])
    # the tokenizer built from the config before the model loads gives the same positions
    assert concept_token_positions(tokenizer_from_config(tiny_ckpt.parent / "config.yaml"), prompt, "Van Gogh") == [
        4,
        5,
    ]


@pytest.mark.parametrize(
    "prompt, concept",
    [("a painting of Van Goghs", "Van Gogh"), ("a painting of " + "word " * 80 + "Van Gogh", "Van Gogh")],
)
def test_concept_not_found_is_a_one_line_error(tiny_model, prompt, concept):
    with pytest.raises(ValueError, match=re.escape(f"--prompt {concept!r} (2 CLIP tokens)") + ".*--concept_template"):
        concept_token_positions(tokenizer_of(tiny_model), prompt, concept)


# ---------------------------------------------------------------------------------------------- FMN original loss
def independent_concept_attention(model, x_t, t, context, positions):
    """‖[softmax(q_h k_hᵀ/√d)[:, positions] for every attn2 layer and head h]‖₂ from the to_q/to_k outputs of the
    forward (torch forward hooks, nothing of sepce's capture), computed in float64."""
    layers = attn2_modules(model)
    seen = projection_outputs(model, x_t, t, context, ("to_q", "to_k"))
    picked = []
    for name, mod in layers.items():
        q, k = seen[(name, "to_q")].double(), seen[(name, "to_k")].double()  # B N inner, B M inner
        d = q.shape[-1] // mod.heads
        for h in range(mod.heads):
            qh, kh = q[..., h * d : (h + 1) * d], k[..., h * d : (h + 1) * d]
            probs = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(d), dim=-1)  # B N M
            picked.append(probs[..., positions].reshape(-1))
    return torch.cat(picked).norm().item(), torch.cat(picked).mean().item()


@pytest.mark.parametrize("use_pooler", [False, True])
def test_fmn_original_loss_is_the_norm_of_the_concept_attention(tiny_model, use_pooler):
    m = tiny_model
    prompt = "a painting of Van Gogh"
    positions = concept_token_positions(tokenizer_of(m), prompt, "Van Gogh", use_pooler)
    context = emb(m, prompt)
    x_t, t = noisy_input(5)
    with torch.no_grad():
        loss, mean = fmn_attention_loss(m, x_t, t, context, positions, attn2_modules(m))
    expected, expected_mean = independent_concept_attention(m, x_t, t, context, positions)
    assert 0 < expected
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert mean.item() == pytest.approx(expected_mean, rel=1e-5)
    # other positions give another value: the loss reads exactly the positions it is given
    other, _ = independent_concept_attention(m, x_t, t, context, [1, 2, 3])
    assert abs(other - expected) > 1e-3 * expected
    assert all(mod.attention_hook is None for mod in attn2_modules(m).values())


def test_attention_at_other_positions_does_not_change_the_loss(tiny_model):
    m = tiny_model
    prompt = "a painting of Van Gogh"
    positions = concept_token_positions(tokenizer_of(m), prompt, "Van Gogh")
    x_t, t = noisy_input(6)
    with torch.no_grad(), AttentionCapture(attn2_modules(m)) as capture:
        m.apply_model(x_t, t, emb(m, prompt))
    probs = [attention_probabilities(r) for r in capture.records]
    assert all(torch.allclose(p.sum(-1), torch.ones(())) for p in probs)  # post-softmax
    loss, _ = concept_attention_loss(probs, positions)
    g = torch.Generator().manual_seed(0)
    others = [i for i in range(probs[0].shape[-1]) if i not in positions]
    changed = []
    for p in probs:
        q = p.clone()
        q[..., others] = torch.rand(q[..., others].shape, generator=g)  # any attention elsewhere
        changed.append(q)
    assert torch.equal(concept_attention_loss(changed, positions)[0], loss)
    bumped = [p.clone() for p in probs]
    bumped[3][..., positions[1]] += 0.01  # attention to "gogh" in one layer
    assert concept_attention_loss(bumped, positions)[0] > loss


def test_fmn_original_gradients_with_and_without_gradient_checkpointing(tiny_model):
    """The whole UNet receives gradient up to the last attn2 layer; checkpointed blocks recompute consistently."""
    model = copy.deepcopy(tiny_model)
    model.train()
    params = select_parameters(model, FMN_VARIANTS["original"].parameter_rule)
    positions = concept_token_positions(tokenizer_of(model), "a painting of Van Gogh", "Van Gogh")
    context = emb(model, "a painting of Van Gogh")
    x_t, t = noisy_input(7, 123)
    grads = []
    for flag in (True, False):
        unet_of(model).set_gradient_checkpointing(flag)
        model.zero_grad(set_to_none=True)
        loss, _ = fmn_attention_loss(model, x_t, t, context, positions, attn2_modules(model))
        loss.backward()
        grads.append({n: torch.zeros_like(p) if p.grad is None else p.grad.clone() for n, p in params.items()})
    reached = {n for n, g in grads[0].items() if g.abs().sum() > 0}
    assert any(".attn1." in n for n in reached) and any("time_embed" in n for n in reached)
    assert any(n.startswith(UNET + "input_blocks.0.") for n in reached)  # the first conv, far below any attn2
    assert not any(n.startswith(UNET + "out.") for n in reached)  # after the last attn2: no gradient
    for n in params:
        torch.testing.assert_close(grads[0][n], grads[1][n], atol=1e-8, rtol=1e-5)


def test_fmn_original_trains_the_whole_unet_or_attn2(tiny_model):
    model = copy.deepcopy(tiny_model)
    unet_names = {n for n, _ in model.named_parameters() if n.startswith(UNET)}
    whole = fmn_original_defaults()
    assert (whole.parameters, whole.optimizer, whole.weight_decay, whole.lr, whole.iterations) == (
        "unet",
        "AdamW",
        0.01,
        2e-6,
        35,
    )
    assert set(select_parameters(model, whole.parameter_rule)) == unet_names
    assert not any(p.requires_grad for n, p in model.named_parameters() if not n.startswith(UNET))
    attn2 = fmn_original_defaults(only_cross_attention=True)
    assert attn2.parameters == "attn2" and attn2.max_grad_norm == 1.0
    chosen = set(select_parameters(model, attn2.parameter_rule))
    assert chosen == {n for n in unet_names if ".attn2." in n} and chosen
    assert FMN_VARIANTS["authors"].parameters == "attn2" and FMN_VARIANTS["authors"].optimizer == "Adam"


def test_variant_optimizers(tiny_model):
    """AdamW with weight decay 0.01 for the originals; with max_grad_norm the gradient is clipped before each
    step."""
    p = torch.nn.Parameter(torch.ones(4))
    opt = ABLATING_VARIANTS["original"].optimizer_for([p], 2e-6)
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["weight_decay"] == 0.01
    assert opt.param_groups[0]["lr"] == 2e-6
    opt = fmn_original_defaults(only_cross_attention=True).optimizer_for([p], 1.0)
    p.grad = torch.full((4,), 10.0)
    opt.step()
    assert p.grad.norm().item() == pytest.approx(1.0)
    assert type(FMN_VARIANTS["authors"].optimizer_for([p], 1e-5)) is torch.optim.Adam


# ---------------------------------------------------------------------------------------------- AC original loss
def test_ablation_target_carries_no_gradient():
    e_concept = torch.randn(1, 4, 8, 8, requires_grad=True)
    e_anchor = torch.randn(1, 4, 8, 8, requires_grad=True)
    loss = model_based_ablation_loss(e_concept, e_anchor)
    torch.testing.assert_close(loss, ((e_concept - e_anchor) ** 2).mean())
    g_concept, g_anchor = torch.autograd.grad(loss, [e_concept, e_anchor], allow_unused=True)
    assert g_anchor is None
    torch.testing.assert_close(g_concept, 2 * (e_concept - e_anchor).detach() / e_concept.numel())


def test_ablating_original_loss_backpropagates_through_the_concept_branch_only(tiny_model):
    """Gradients of the loss equal those of MSE(concept branch, a constant holding the anchor branch's values)."""
    model = copy.deepcopy(tiny_model)
    model.train()
    params = select_parameters(model, ABLATING_VARIANTS["original"].parameter_rule)
    concept, anchor = emb(model, "Van Gogh painting"), emb(model, "painting")
    x_t, t = noisy_input(8, 600)
    loss = ablating_original_loss(model, x_t, t, concept, anchor)
    grads = torch.autograd.grad(loss, list(params.values()))
    with torch.no_grad():
        target = model.apply_model(x_t, t, anchor).clone()
    direct = F.mse_loss(model.apply_model(x_t, t, concept), target)
    assert loss.item() == pytest.approx(direct.item(), rel=1e-6) and loss.item() > 0
    for g, g_direct in zip(grads, torch.autograd.grad(direct, list(params.values()))):
        torch.testing.assert_close(g, g_direct)
    # with a branch that kept its graph, the anchor term would add gradient: the two differ
    both = F.mse_loss(model.apply_model(x_t, t, concept), model.apply_model(x_t, t, anchor))
    g_both = torch.autograd.grad(both, list(params.values()))
    assert any(not torch.allclose(a, b) for a, b in zip(grads, g_both))


def test_prior_term_is_the_plain_noise_prediction_mse(tiny_model):
    m = tiny_model
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(9))
    t = torch.tensor([321])
    cond = emb(m, "painting")
    with torch.no_grad():
        loss = prior_preservation_loss(m, z, t, cond, torch.Generator().manual_seed(10))
        noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(10))
        ac = m.alphas_cumprod[321]
        x_t = ac.sqrt() * z + (1 - ac).sqrt() * noise
        expected = ((m.apply_model(x_t, t, cond) - noise) ** 2).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-7)


def test_variant_defaults():
    ac = ABLATING_VARIANTS["original"]
    assert (ac.label, ac.lr, ac.iterations, ac.parameters, ac.optimizer, ac.zero_grad) == (
        "AC (original)",
        2e-6,
        110,
        "attn2_kv",
        "AdamW",
        True,
    )
    assert [ABLATING_VARIANTS["authors"].label, FMN_VARIANTS["authors"].label, FMN_VARIANTS["original"].label] == [
        "AC (authors' variant)",
        "FMN (authors' variant)",
        "FMN (original)",
    ]


# ------------------------------------------------------------------------------------------------- scripts
def write_images(folder, n, seed):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for k in range(n):
        Image.fromarray(rng.integers(0, 256, (72, 90, 3), dtype=np.uint8)).save(folder / f"{k}.png")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Concept images (``Van Gogh``), anchor images (``painting``) and images of the blank prompt (``blank``,
    generate-data.py's folder for ``""``)."""
    root = tmp_path_factory.mktemp("data")
    for seed, name in enumerate(("Van Gogh", "painting", "blank")):
        write_images(root / name, 3, seed)
    return root


def tiny_flags(tiny_ckpt, iterations, data_dir):
    cfg = tiny_ckpt.parent / "config.yaml"
    return ["--ckpt_path", str(tiny_ckpt), "--config_path", str(cfg), "--devices", "cpu", "--image_size", "64"] + [
        "--iterations",
        str(iterations),
        "--data_dir",
        str(data_dir),
    ]


def changed_keys(record, base):
    return sorted(k for k, v in record.tensors.items() if not torch.equal(v, base[k]))


def test_fmn_original_end_to_end(tiny_ckpt, tiny_model, data_dir, tmp_path, load_script, monkeypatch):
    """Default run folder ``FMN-VanGogh-original``, the common summary schema, the positions and defaults in the
    record; the whole UNet is recorded and moves; the losses.csv loss is the norm of the concept attention."""
    import sepce.training.session

    monkeypatch.setattr(sepce.training.session, "MODELS_DIR", tmp_path / "models")
    fmn = load_script("train-scripts/FMN.py")
    argv = ["--variant", "original", "--prompt", "Van Gogh", *tiny_flags(tiny_ckpt, 2, data_dir)]
    assert fmn.parse_args(argv).lr == 2e-6
    args = fmn.parse_args([*argv, "--lr", "1e-3"])  # large enough for the tiny model's weights to move visibly
    assert not hasattr(args, "neutral_prompt") and not hasattr(args, "zero_grad")
    summary = fmn.main(args)
    out = tmp_path / "models" / "FMN-VanGogh-original"
    assert summary["output_dir"] == str(out) and set(summary) == set(SUMMARY_KEYS)
    assert summary["method"] == "FMN" and summary["iterations"] == 2 and summary["ok"] is True
    settings = summary["settings"]
    expected = {
        "variant": "original",
        "label": "FMN (original)",
        "concept_prompt": "a painting of Van Gogh",
        "concept_positions": [4, 5],
        "concept_tokens": ["van", "gogh"],
        "use_pooler": False,
        "trained_parameters": "unet",
        "optimizer": "AdamW",
        "weight_decay": 0.01,
        "zero_grad": True,
    }
    assert expected.items() <= settings.items()
    assert settings["variant_defaults"]["lr"] == 2e-6 and settings["variant_defaults"]["iterations"] == 35
    assert "not implemented" in settings["textual_inversion"]
    record = load_record(out)
    assert expected.items() <= record.meta.items() and record.meta["lr"] == 1e-3
    unet_keys = sorted(k for k, _ in tiny_model.named_parameters() if k.startswith(UNET))
    assert sorted(record.tensors) == unet_keys
    moved = changed_keys(record, read_state_dict(tiny_ckpt))
    assert any("attn2" not in k for k in moved) and any("attn2" in k for k in moved)
    rows = list(csv.DictReader((out / "losses.csv").open()))
    assert len(rows) == 2 and all(float(r["loss"]) > 0 and 0 < float(r["concept_attention"]) < 1 for r in rows)
    assert json.loads((out / "args.json").read_text())["concept_positions"] == [4, 5]


def test_fmn_original_only_cross_attention_with_pooler(tiny_ckpt, tiny_model, data_dir, tmp_path, load_script):
    fmn = load_script("train-scripts/FMN.py")
    argv = ["--variant", "original", "--prompt", "Van Gogh", "--only_cross_attention", "--use_pooler"]
    out = tmp_path / "run"
    summary = fmn.main(fmn.parse_args([*argv, *tiny_flags(tiny_ckpt, 1, data_dir), "--output_dir", str(out)]))
    settings = summary["settings"]
    assert settings["trained_parameters"] == "attn2" and settings["max_grad_norm"] == 1.0
    assert settings["concept_positions"][:3] == [4, 5, 6] and len(settings["concept_positions"]) == 77 - 4
    attn2 = sorted(k for k, _ in tiny_model.named_parameters() if k.startswith(UNET) and ".attn2." in k)
    assert sorted(load_record(out).tensors) == attn2


def test_abconcept_original_end_to_end_on_blank_anchor_images(tiny_ckpt, data_dir, tmp_path, load_script):
    """Anchor images from ``<data_dir>/blank/`` for the empty anchor; only to_k/to_v change; loss = 1·abl + 0.2·prior
    (logged terms); the common summary and the record hold the prompts, folder, weights and defaults."""
    ac = load_script("train-scripts/Abconcept.py")
    out = tmp_path / "ac"
    argv = ["--variant", "original", "--prompt", "Van Gogh", "--concept_template", "{}", "--anchor_prompt", ""]
    args = ac.parse_args([*argv, *tiny_flags(tiny_ckpt, 2, data_dir), "--output_dir", str(out), "--lr", "1e-3"])
    assert not hasattr(args, "anchor_weight") and (args.ablation_weight, args.prior_weight) == (1.0, 0.2)
    summary = ac.main(args)
    assert set(summary) == set(SUMMARY_KEYS) and summary["ok"] is True and summary["iterations"] == 2
    assert summary["data"] == {"blank": {"folder": str(data_dir / "blank"), "images": 3, "skipped_unreadable": 0}}
    expected = {
        "variant": "original",
        "label": "AC (original)",
        "concept_prompt": "Van Gogh",
        "anchor_prompt": "",
        "anchor_folder": "blank",
        "ablation_weight": 1.0,
        "prior_weight": 0.2,
        "trained_parameters": "attn2_kv",
        "optimizer": "AdamW",
        "zero_grad": True,
    }
    assert expected.items() <= summary["settings"].items()
    record = load_record(out)
    assert expected.items() <= record.meta.items() and record.meta["variant_defaults"]["iterations"] == 110
    base = read_state_dict(tiny_ckpt)
    kv = sorted(k for k in base if k.startswith(UNET) and (".attn2.to_k." in k or ".attn2.to_v." in k))
    assert sorted(record.tensors) == kv == changed_keys(record, base)
    rows = list(csv.DictReader((out / "losses.csv").open()))
    for r in rows:
        assert float(r["loss"]) == pytest.approx(float(r["ablation_mse"]) + 0.2 * float(r["prior_mse"]), rel=1e-5)
    assert float(rows[0]["ablation_mse"]) > 0


def test_abconcept_original_without_prior_term(tiny_ckpt, data_dir, tmp_path, load_script):
    ac = load_script("train-scripts/Abconcept.py")
    argv = ["--variant", "original", "--prompt", "Van Gogh", "--prior_weight", "0", "--ablation_weight", "2"]
    summary = ac.main(ac.parse_args([*argv, *tiny_flags(tiny_ckpt, 1, data_dir), "--output_dir", str(tmp_path)]))
    assert summary["settings"]["anchor_folder"] == "painting"
    (row,) = csv.DictReader((tmp_path / "losses.csv").open())
    assert "prior_mse" not in row and float(row["loss"]) == pytest.approx(2 * float(row["ablation_mse"]), rel=1e-6)


def test_variant_defaults_and_flags_on_the_command_line(load_script, capsys):
    fmn, ac = load_script("train-scripts/FMN.py"), load_script("train-scripts/Abconcept.py")
    assert (fmn.parse_args(["--prompt", "x"]).lr, fmn.parse_args(["--prompt", "x"]).iterations) == (1e-5, 10)
    args = fmn.parse_args(["--prompt", "x", "--variant", "original"])
    assert (args.lr, args.iterations, args.use_pooler, args.only_cross_attention) == (2e-6, 35, False, False)
    assert fmn.parse_args(["--variant", "original", "--prompt", "x", "--lr", "1e-4"]).lr == 1e-4
    assert (ac.parse_args(["--prompt", "x"]).lr, ac.parse_args(["--prompt", "x"]).iterations) == (1e-5, 50)
    args = ac.parse_args(["--prompt", "x", "--variant", "original"])
    assert (args.lr, args.iterations, args.zero_grad if hasattr(args, "zero_grad") else None) == (2e-6, 110, None)
    with pytest.raises(SystemExit):
        fmn.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "authors: FMN (authors' variant), Adam, lr 1e-05, 10 iterations" in text
    assert "original: FMN (original), AdamW (weight decay 0.01), lr 2e-06, 35 iterations, the whole UNet" in text
    assert "textual- inversion pre-stage is not implemented" in text or "textual-inversion pre-stage is NOT" in text
    with pytest.raises(SystemExit):
        ac.parse_args(["--variant", "original", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "AC (original), AdamW (weight decay 0.01), lr 2e-06, 110 iterations, attn2 to_k/to_v only" in text
    assert "--prior_weight" in text and "(default: 2e-06)" in text
    for script, argv in (
        (fmn, ["--use_pooler"]),
        (ac, ["--prior_weight", "1"]),
        (ac, ["--variant", "original", "--anchor_weight", "1"]),
    ):
        with pytest.raises(SystemExit):
            script.parse_args(["--prompt", "x", *argv])  # a flag of the other variant: argparse's usage error
    assert "unrecognized arguments" in capsys.readouterr().err


@pytest.mark.parametrize(
    "script, argv, message",
    [
        ("Abconcept", ["--anchor_prompt", "a sketch"], "anchor image folder"),
        ("Abconcept", ["--anchor_prompt", "../x"], "--anchor_prompt '../x' cannot name an image folder"),
        ("Abconcept", ["--prior_weight", "nan"], "--prior_weight nan: expected a finite number >= 0"),
        ("Abconcept", ["--ablation_weight", "0"], "--ablation_weight 0.0: expected a number > 0"),
        ("FMN", ["--concept_template", "{}s"], "does not occur as whole words"),
        ("FMN", ["--prompt", "Cezanne"], "image folder"),
    ],
)
def test_bad_input_refused_before_loading(
    script, argv, message, tiny_ckpt, data_dir, tmp_path, no_model_load, load_script
):
    module = load_script(f"train-scripts/{script}.py")
    base = ["--variant", "original", "--prompt", "Van Gogh", *tiny_flags(tiny_ckpt, 1, data_dir)]
    args = module.parse_args([*base, "--output_dir", str(tmp_path / "run"), *argv])
    with pytest.raises((ValueError, FileNotFoundError), match=re.escape(message)):
        module.main(args)
    assert not (tmp_path / "run").exists()


def test_missing_anchor_folder_is_one_line_on_the_command_line(tiny_ckpt, data_dir, tmp_path):
    argv = ["--variant", "original", "--prompt", "Van Gogh", "--anchor_prompt", "", "--output_dir", tmp_path / "run"]
    empty = tmp_path / "data"
    write_images(empty / "Van Gogh", 1, 0)
    proc = run_script(
        "train-scripts/Abconcept.py", *argv, *tiny_flags(tiny_ckpt, 1, empty)[:-2], "--data_dir", empty, check=False
    )
    assert_one_line_error(
        proc,
        f"Abconcept.py: error: anchor image folder {empty / 'blank'} does not exist: the original Ablating Concepts "
        f"trains on images of the anchor prompt '' (eval-scripts/generate-data.py --prompt '' --save_path {empty})",
    )
    assert not (tmp_path / "run").exists()
