"""UCE, the closed-form erasure baseline (sepce/methods/uce.py; docs/method.md "UCE"): the edit solves its
least-squares objective (normal equations), erased concepts' keys/values go to their guides' original ones as
λ → 0, preserved concepts move less the larger their scale, last-word token positions, validation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import one_line_error

from sepce.methods import uce
from sepce.methods.uce import UCESettings, closed_form_edit, kv_weights, last_word_embedding, uce_edit
from sepce.training import SUMMARY_KEYS

ERASE = ["Van Gogh", "Cezanne"]
GUIDES = ["", "art"]
PRESERVE = ["Picasso", "Monet", "a photo of a cat"]


def objective(w, w_old, ce, cg, cp, s_e, s_p, lamb):
    """λ‖W − W_old‖²_F + s_e Σ_i ‖W c_{e_i} − W_old c_{g_i}‖² + s_p Σ_j ‖W c_{p_j} − W_old c_{p_j}‖², written
    term by term (independently of the closed form)."""
    total = lamb * (w - w_old).square().sum()
    total = total + s_e * sum((w @ e - w_old @ g).square().sum() for e, g in zip(ce, cg))
    return total + s_p * sum((w @ p - w_old @ p).square().sum() for p in cp)


def gradient(w, *args):
    w = w.detach().clone().requires_grad_(True)
    return torch.autograd.grad(objective(w, *args), w)[0]


@pytest.fixture(scope="module")
def embeddings(tiny_model):
    ce = last_word_embedding(tiny_model, ERASE)
    cg = last_word_embedding(tiny_model, GUIDES)
    cp = last_word_embedding(tiny_model, PRESERVE)
    return ce, cg, cp


def key_value_residual(tiny_model, tensors, inputs, targets) -> float:
    """sqrt(Σ_layers ‖W_new x − W_old t‖²) / sqrt(Σ_layers ‖W_old t‖²) over every edited to_k/to_v, from the
    layers' own outputs: the new key/value of ``inputs`` against the ORIGINAL key/value of ``targets``."""
    num = den = 0.0
    for key, w_old in kv_weights(tiny_model).items():
        target = F.linear(targets.double(), w_old.double())
        num += float((F.linear(inputs.double(), tensors[key].double()) - target).square().sum())
        den += float(target.square().sum())
    return (num / den) ** 0.5


# ------------------------------------------------------------------------------------------------ (a) optimality
@pytest.mark.parametrize("s_e, s_p, lamb", [(1.0, 1.0, 0.5), (3.0, 0.2, 0.05), (0.5, 10.0, 2.0)])
def test_edit_satisfies_the_normal_equations_of_its_objective(tiny_model, embeddings, s_e, s_p, lamb):
    ce, cg, cp = (x.double() for x in embeddings)
    weights = {k: w.detach().double() for k, w in kv_weights(tiny_model).items()}
    new = closed_form_edit(weights, ce, cg, cp, erase_scale=s_e, preserve_scale=s_p, lamb=lamb)
    assert new.keys() == weights.keys()
    worst = 0.0
    for key, w_old in weights.items():
        args = (w_old, ce, cg, cp, s_e, s_p, lamb)
        g_old = gradient(w_old, *args)
        assert g_old.norm() > 1e-3  # the original weights are not already optimal
        ratio = float(gradient(new[key], *args).norm() / g_old.norm())
        worst = max(worst, ratio)
        # the objective's value at the solution is below its value at W_old and at nearby perturbations
        f_new = objective(new[key], *args)
        assert f_new < objective(w_old, *args)
        bump = torch.randn(w_old.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 1e-3
        assert f_new < objective(new[key] + bump, *args)
    assert worst < 1e-10, worst  # float64: the gradient vanishes to round-off


def test_model_edit_in_float32_returns_new_float32_tensors_and_leaves_the_model_alone(tiny_model, embeddings):
    before = {k: w.detach().clone() for k, w in kv_weights(tiny_model).items()}
    settings = UCESettings(tuple(ERASE), tuple(GUIDES), tuple(PRESERVE))
    result = uce_edit(tiny_model, settings)
    ce, cg, cp = (x.double() for x in embeddings)
    assert sorted(result.tensors) == sorted(
        k for k in tiny_model.state_dict() if ".attn2.to_k." in k or ".attn2.to_v." in k
    )
    assert len(result.tensors) == 14  # 7 cross-attention layers of the tiny UNet, to_k and to_v each
    for key, w_old in kv_weights(tiny_model).items():
        assert torch.equal(w_old, before[key])  # unchanged
        new = result.tensors[key]
        assert new.dtype == w_old.dtype == torch.float32 and new.shape == w_old.shape and new is not w_old
        args = (w_old.double(), ce, cg, cp, 1.0, 1.0, 0.5)
        assert float(gradient(new.double(), *args).norm() / gradient(w_old.double(), *args).norm()) < 1e-4


def test_no_explicit_inverse_is_formed(tiny_model, embeddings, monkeypatch):
    def refuse(*_, **__):
        raise AssertionError("explicit inverse")

    monkeypatch.setattr(torch.linalg, "inv", refuse)
    monkeypatch.setattr(torch, "inverse", refuse)
    ce, cg, cp = embeddings
    closed_form_edit(kv_weights(tiny_model), ce, cg, cp)


def test_closed_form_equals_the_formula_per_layer(tiny_model, embeddings):
    """One stacked solve for all layers = W_new = A · M⁻¹ layer by layer (M⁻¹ here only as an oracle)."""
    ce, cg, cp = (x.double() for x in embeddings)
    s_e, s_p, lamb = 2.0, 0.5, 0.3
    weights = kv_weights(tiny_model)
    new = closed_form_edit(weights, ce, cg, cp, erase_scale=s_e, preserve_scale=s_p, lamb=lamb)
    eye = torch.eye(ce.shape[1], dtype=torch.float64)
    m = lamb * eye + s_e * sum(torch.outer(e, e) for e in ce) + s_p * sum(torch.outer(p, p) for p in cp)
    for key, w in weights.items():
        w = w.double()
        a = lamb * w + s_e * sum(torch.outer(w @ g, e) for e, g in zip(ce, cg))
        a = a + s_p * sum(torch.outer(w @ p, p) for p in cp)
        torch.testing.assert_close(new[key].double(), a @ torch.linalg.inv(m), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------ (b) erasure
def test_erased_key_value_approaches_the_guides_original_as_lambda_shrinks(tiny_model):
    lambdas = [1.0, 0.1, 0.01, 1e-3]
    residuals = {c: [] for c in ERASE}
    for lamb in lambdas:
        result = uce_edit(tiny_model, UCESettings(tuple(ERASE), tuple(GUIDES), tuple(PRESERVE), lamb=lamb))
        for c, g in zip(ERASE, GUIDES):
            ce, cg = last_word_embedding(tiny_model, [c]), last_word_embedding(tiny_model, [g])
            r = key_value_residual(tiny_model, result.tensors, ce, cg)
            assert r == pytest.approx(result.erase_residual[c], rel=1e-6)  # the reported diagnostic is this
            residuals[c].append(r)
    for c, rs in residuals.items():
        assert all(a > b for a, b in zip(rs, rs[1:])), (c, rs)  # monotone in λ
        # for small λ the residual is proportional to λ: ×0.1 in λ → ×0.1 in the residual (within 5 %)
        assert rs[3] / rs[2] == pytest.approx(0.1, rel=0.05) and rs[2] / rs[1] == pytest.approx(0.1, rel=0.05)
        assert rs[-1] < 1e-3, (c, rs)  # tight: 0.1 % of the guide's key/value norm at λ = 1e-3
    # and the erased concept's key/value really moved: before the edit it is far from the guide's
    for c, g in zip(ERASE, GUIDES):
        ce, cg = last_word_embedding(tiny_model, [c]), last_word_embedding(tiny_model, [g])
        assert key_value_residual(tiny_model, kv_weights(tiny_model), ce, cg) > 0.3


def test_one_shared_guide_is_used_for_every_erased_concept(tiny_model):
    shared = uce_edit(tiny_model, UCESettings(tuple(ERASE), ("art",)))
    explicit = uce_edit(tiny_model, UCESettings(tuple(ERASE), ("art", "art")))
    default = uce_edit(tiny_model, UCESettings(tuple(ERASE)))
    blank = uce_edit(tiny_model, UCESettings(tuple(ERASE), ("", "")))
    for key in shared.tensors:
        assert torch.equal(shared.tensors[key], explicit.tensors[key])
        assert torch.equal(default.tensors[key], blank.tensors[key])  # default guide: the blank prompt
        assert not torch.equal(shared.tensors[key], default.tensors[key])


# ------------------------------------------------------------------------------------------------ (c) preservation
def test_preserved_concepts_move_less_with_a_larger_preserve_scale(tiny_model):
    scales = [0.0, 0.1, 1.0, 10.0, 100.0]
    cp = last_word_embedding(tiny_model, PRESERVE).double()
    weights = kv_weights(tiny_model)
    moved = []  # Σ_j Σ_l ‖W_new c_pj − W_old c_pj‖²: the preserve term of the objective
    drift = []
    for s_p in scales:
        result = uce_edit(tiny_model, UCESettings(tuple(ERASE), tuple(GUIDES), tuple(PRESERVE), preserve_scale=s_p))
        deltas = [result.tensors[k].double() - w.double() for k, w in weights.items()]
        moved.append(sum(float((cp @ d.T).square().sum()) for d in deltas))
        drift.append(result.preserve_drift)
    assert all(a > b for a, b in zip(moved, moved[1:])), moved
    assert moved[-1] < 1e-4 * moved[0], moved
    for p in PRESERVE:
        per_concept = [d[p] for d in drift]
        assert all(a > b for a, b in zip(per_concept, per_concept[1:])), (p, per_concept)


# ------------------------------------------------------------------------------------------------ (d) positions
def test_last_word_positions_and_embeddings(tiny_model):
    tokenizer = uce.tokenizer_of(tiny_model)
    prompts = ["Van Gogh", "", "a photo of a cat"]
    assert uce.last_word_positions(tokenizer, prompts) == [2, 0, 5]
    ids = tokenizer(prompts)  # tests/fixtures/README.md: the ids the CLIP tokenizer gives
    assert ids[0, :4].tolist() == [49406, 2451, 19697, 49407]
    assert ids[2, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert [int(ids[i, p]) for i, p in enumerate([2, 0, 5])] == [19697, 49406, 2368]  # "gogh", start, "cat"
    emb = last_word_embedding(tiny_model, prompts)
    with torch.no_grad():
        full = tiny_model.get_learned_conditioning(prompts)
    assert emb.shape == (3, full.shape[-1])
    for i, p in enumerate([2, 0, 5]):
        assert torch.equal(emb[i], full[i, p])
    long = " ".join(["cat"] * 100)  # truncated to 75 word tokens: the last kept one is at 75
    assert uce.last_word_positions(tokenizer, [long]) == [75]


def test_result_reports_positions_and_residuals(tiny_model):
    result = uce_edit(tiny_model, UCESettings(("Van Gogh",), preserve_concepts=("a photo of a cat",)))
    summary = result.summary()
    assert summary["positions"] == {"Van Gogh": 2, "": 0, "a photo of a cat": 5}
    assert summary["layers"] == 14 and 0 < summary["weight_change"] < 1
    assert set(summary["erase_residual"]) == {"Van Gogh"} and set(summary["preserve_drift"]) == {"a photo of a cat"}
    ce, cg, cp = (last_word_embedding(tiny_model, [p]).double() for p in ("Van Gogh", "", "a photo of a cat"))
    weights = kv_weights(tiny_model)
    before = sum(float(objective(w.double(), w.double(), ce, cg, cp, 1.0, 1.0, 0.5)) for w in weights.values())
    after = sum(
        float(objective(result.tensors[k].double(), w.double(), ce, cg, cp, 1.0, 1.0, 0.5)) for k, w in weights.items()
    )
    assert summary["objective_before"] == pytest.approx(before, rel=1e-9)
    assert summary["objective_after"] == pytest.approx(after, rel=1e-6) and after < 0.1 * before


# ------------------------------------------------------------------------------------------------ validation
def test_split_concepts():
    assert uce.split_concepts("Van Gogh; Picasso") == ["Van Gogh", "Picasso"]
    assert uce.split_concepts("") == [""]
    assert uce.split_concepts("art;") == ["art", ""]
    assert uce.split_concepts("", keep_blank=False) == []
    assert uce.split_concepts(None) == []


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"lamb": 0.0}, "lamb 0.0: expected a finite number > 0"),
        ({"lamb": -1.0}, "lamb -1.0"),
        ({"lamb": float("nan")}, "lamb nan"),
        ({"erase_scale": -0.5}, "erase_scale -0.5: expected a finite number >= 0"),
        ({"preserve_scale": float("inf")}, "preserve_scale inf"),
        ({"guide_concepts": ("a", "b", "c")}, r"guide_concepts \['a', 'b', 'c'\]: expected 1 guide or one per"),
        ({"preserve_concepts": ("Picasso", "Van Gogh")}, "'Van Gogh' is both an edit concept and a preserve"),
        ({"edit_concepts": ()}, "edit_concepts is empty"),
        ({"edit_concepts": ("Van Gogh", " ")}, "item 1 is blank"),
        ({"edit_concepts": ("Van Gogh", "Van Gogh")}, "'Van Gogh' is named more than once"),
        ({"edit_concepts": "Van Gogh"}, "expected a sequence of prompts, not one string"),
    ],
)
def test_bad_settings_are_one_line_errors(kwargs, message):
    base = {"edit_concepts": ("Van Gogh", "Cezanne")}
    with pytest.raises(ValueError, match=message) as info:
        UCESettings(**{**base, **kwargs})
    assert "\n" not in str(info.value)


def test_closed_form_edit_checks_its_inputs(tiny_model, embeddings):
    ce, cg, cp = embeddings
    weights = kv_weights(tiny_model)
    with pytest.raises(ValueError, match="lamb 0"):
        closed_form_edit(weights, ce, cg, cp, lamb=0)
    with pytest.raises(ValueError, match="expected two N x D matrices"):
        closed_form_edit(weights, ce, cg[:1], cp)
    with pytest.raises(ValueError, match="preserve embeddings"):
        closed_form_edit(weights, ce, cg, cp[:, :5])
    with pytest.raises(ValueError, match="expected d_out x 32"):
        closed_form_edit({"w": torch.zeros(4, 7)}, ce, cg)


# ------------------------------------------------------------------------------------------------ the script
def script_args(ckpt, *extra) -> list[str]:
    return ["--ckpt_path", str(ckpt), "--config_path", str(ckpt.parent / "config.yaml"), "--devices", "cpu", *extra]


def test_script_writes_the_common_record_and_generate_images_takes_it(tiny_ckpt, tiny_model, tmp_path, load_script):
    from conftest import run_script
    from ldm.checkpoint import read_state_dict
    from PIL import Image

    from sepce import cli, records

    models = tmp_path / "models"
    run = models / "UCE-VanGogh+Cezanne"
    flags = [
        "--edit_concepts",
        "Van Gogh;Cezanne",
        "--guide_concepts",
        "art",
        "--preserve_concepts",
        "Picasso; a photo of a cat",
        "--lamb",
        "0.3",
        "--erase_scale",
        "2",
        "--preserve_scale",
        "5",
    ]
    proc = run_script("train-scripts/UCE.py", *flags, *script_args(tiny_ckpt, "--output_dir", run, "--save_full"))
    assert "UCE 'Van Gogh': 1 iterations, closed form" in proc.stdout and f"saved {run}" in proc.stdout
    assert {p.name for p in run.iterdir()} == {
        "args.json",
        "losses.csv",
        "loss.png",
        "summary.json",
        "erasure.safetensors",
        "UCE-VanGogh+Cezanne.ckpt",
    }
    rec = records.load_record(run)
    assert rec.method == "UCE" and rec.concepts == ["Van Gogh", "Cezanne"] and not rec.separable
    assert rec.base["sha256"] == records.file_digest(tiny_ckpt)
    settings = UCESettings(("Van Gogh", "Cezanne"), ("art",), ("Picasso", "a photo of a cat"), 2.0, 5.0, 0.3)
    expected = uce_edit(tiny_model, settings).tensors
    assert sorted(rec.tensors) == sorted(expected)  # only the changed tensors
    for key, value in expected.items():
        torch.testing.assert_close(rec.tensors[key], value, rtol=1e-5, atol=1e-7)
    assert rec.meta["guides"] == ["art", "art"] and rec.meta["preserve"] == ["Picasso", "a photo of a cat"]
    assert rec.meta["lamb"] == 0.3 and rec.meta["positions"]["a photo of a cat"] == 5 and "lr" not in rec.meta
    assert rec.meta["iterations"] == 1 and rec.meta["stop_reason"] == "closed form"
    full = read_state_dict(run / "UCE-VanGogh+Cezanne.ckpt")
    base = read_state_dict(tiny_ckpt)
    assert full.keys() == base.keys()
    assert all(torch.equal(full[k], rec.tensors[k]) for k in rec.tensors)
    assert all(torch.equal(full[k], v) for k, v in base.items() if k not in rec.tensors)
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary) == set(SUMMARY_KEYS)  # the schema of every training run
    assert summary["method"] == "UCE" and summary["iterations"] == 1 and summary["stop_reason"] == "closed form"
    assert summary["ok"] and summary["wall_time_s"] > 0 and summary["cpu_peak_rss_bytes"] > 0
    assert summary["devices"] == ["cpu"] and summary["data"] == {} and summary["output_dir"] == str(run)
    assert summary["concepts"]["Cezanne"] == {
        "iterations": 1,
        "stop_reason": "closed form",
        "guide": "art",
        "erase_residual": pytest.approx(rec.meta["erase_residual"]["Cezanne"]),
    }
    assert summary["settings"]["objective_after"] < summary["settings"]["objective_before"]
    assert summary["settings"]["edit_seconds"] > 0
    args = json.loads((run / "args.json").read_text())
    assert args["method"] == "UCE" and args["edit_concepts"] == "Van Gogh;Cezanne" and args["lamb"] == 0.3
    assert args["resolved"] == {
        "edit": ["Van Gogh", "Cezanne"],
        "guides": ["art", "art"],
        "preserve": rec.meta["preserve"],
    }
    rows = (run / "losses.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[0].startswith("iteration,loss,loss_before")

    # generate-images takes the run by --model_name, like any other method's
    generate = load_script("eval-scripts/generate-images.py")
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("case_number,prompt,evaluation_seed,class\n0,Van Gogh,7,0\n")
    common = ["--prompts_path", prompts, "--save_path", tmp_path / "eval", "--num_samples", 1, "--models_dir", models]
    common += script_args(tiny_ckpt)[:4] + ["--image_size", 64, "--ddim_steps", 3, "--device", "cpu", "--quiet"]
    for name in ("UCE-VanGogh+Cezanne", "SD-v1-4"):
        cli.run(generate.parse_args, generate.main, [str(a) for a in ["--model_name", name, *common]])
    erased, original = (
        np.asarray(Image.open(tmp_path / "eval" / n / "0_0.png"), dtype=np.int16)
        for n in ("UCE-VanGogh+Cezanne", "SD-v1-4")
    )
    assert erased.shape == (64, 64, 3) and (erased != original).any()  # the edit was applied
    made = json.loads((tmp_path / "eval" / "UCE-VanGogh+Cezanne" / "generation.json").read_text())["settings"]["model"]
    assert made["kind"] == "record" and made["method"] == "UCE" and made["erase"] == ["Van Gogh", "Cezanne"]


def test_script_default_run_folder_and_parsing(tiny_ckpt, load_script):
    from sepce.paths import MODELS_DIR
    from sepce.training import TrainingSession

    script = load_script("train-scripts/UCE.py")
    args = script.parse_args(["--edit_concepts", "Van Gogh; Cezanne", *script_args(tiny_ckpt)])
    settings = script.uce_settings(args)
    assert settings == UCESettings(("Van Gogh", "Cezanne"), ("",), (), 1.0, 1.0, 0.5)  # the documented defaults
    session = TrainingSession(script.run_settings(args), "UCE", settings.edit_concepts, images=False)
    assert session.output_dir == MODELS_DIR / "UCE-VanGogh+Cezanne"
    args = script.parse_args(["--edit_concepts", "A;B", "--guide_concepts", "x;", "--preserve_concepts", ""])
    settings = script.uce_settings(args)
    assert settings.guides == ("x", "") and settings.preserve_concepts == ()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--lamb", "0"], "lamb 0.0: expected a finite number > 0"),
        (["--erase_scale", "-1"], "erase_scale -1.0: expected a finite number >= 0"),
        (["--preserve_scale", "nan"], "preserve_scale nan"),
        (
            ["--guide_concepts", "a;b;c"],
            "guide_concepts ['a', 'b', 'c']: expected 1 guide or one per erased concept (2)",
        ),
        (["--preserve_concepts", "Picasso;Cezanne"], "'Cezanne' is both an edit concept and a preserve concept"),
        (["--edit_concepts", "Van Gogh;;Cezanne"], "item 1 is blank"),
        (["--edit_concepts", "St. Ives"], "--edit_concepts 'St. Ives' contains '.'"),
        (["--devices", "0,1,2"], "--devices '0,1,2'"),
        (["--ckpt_path", "missing.ckpt"], "checkpoint missing.ckpt does not exist"),
    ],
)
def test_bad_flags_are_refused_before_loading(argv, message, tiny_ckpt, tmp_path, no_model_load, load_script, capsys):
    from sepce import cli

    script = load_script("train-scripts/UCE.py")
    out = tmp_path / "run"
    full = ["--edit_concepts", "Van Gogh;Cezanne", *script_args(tiny_ckpt, "--output_dir", str(out)), *argv]
    with one_line_error(capsys, "UCE.py: error: ", message):
        cli.run(script.parse_args, script.main, full, prog="UCE.py")
    assert not out.exists()


def test_script_refuses_a_used_run_folder_without_overwrite(tiny_ckpt, tmp_path, no_model_load, load_script):
    script = load_script("train-scripts/UCE.py")
    out = tmp_path / "run"
    out.mkdir()
    (out / "summary.json").write_text("{}")
    args = script.parse_args(["--edit_concepts", "Van Gogh", *script_args(tiny_ckpt, "--output_dir", str(out))])
    with pytest.raises(FileExistsError, match="is not empty; refusing to overwrite"):
        script.main(args)
