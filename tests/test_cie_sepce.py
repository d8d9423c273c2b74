"""CiE and SepCE (issue 3): loss sign convention and formulas, the momentum stopping rule, the seed commands end to
end on tiny models, NaN handling, one- vs two-copy frozen originals, separability of trained increments, the
compose command (erase a subset, restore one), adding a concept to an existing run, and bad input."""

from __future__ import annotations

import copy
import csv
import json
import math

import numpy as np
import pytest
import torch
from conftest import one_line_error, run_script
from ldm.checkpoint import read_state_dict
from PIL import Image

from sepce import cli, records, training
from sepce.increments import SeparableIncrements
from sepce.methods.cie import cie_loss
from sepce.methods.common import MomentumStop, concept_direction, direction_term, l1_drift
from sepce.methods.sepce import (
    JointTraining,
    SepCESettings,
    SequentialTraining,
    balance_weights,
    coefficient_l1,
    run_sepce,
    sepce_loss,
)
from sepce.modeling import load_model
from sepce.training import FrozenReference, ParameterTrainer, select_parameters

FOLDERS = ["Van Gogh", "VanGogh", "Cezanne", "Picasso"]


@pytest.fixture(scope="module")
def cie_script(load_script):
    return load_script("train-scripts/CiE.py")


@pytest.fixture(scope="module")
def sepce_script(load_script):
    return load_script("train-scripts/SepCE.py")


@pytest.fixture(scope="module")
def compose_script(load_script):
    return load_script("train-scripts/compose_erasure.py")


@pytest.fixture(scope="module")
def wide_model(wide_ckpt):
    return load_model(wide_ckpt.parent / "config.yaml", wide_ckpt)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A working folder with ./data/<prompt>/ image folders, as the seed README expects."""
    root = tmp_path_factory.mktemp("work")
    rng = np.random.default_rng(0)
    for name in FOLDERS:
        (root / "data" / name).mkdir(parents=True)
        for i in range(2):
            img = rng.integers(0, 256, (72, 80, 3), dtype=np.uint8)
            Image.fromarray(img).save(root / "data" / name / f"{i}.png")
    return root


def model_args(ckpt):
    return ["--ckpt_path", str(ckpt), "--config_path", str(ckpt.parent / "config.yaml"), "--devices", "cpu"]


def placed(workdir, run):
    """One iteration, images from ``workdir/data``, the run in ``run`` (the default run folder, under the
    repository's models/, is tested in test_training_harness.py)."""
    return ["--iterations", "1", "--data_dir", str(workdir / "data"), "--output_dir", str(run)]


def small(workdir, out, ckpt, *extra):
    """Arguments of a quick in-process run: 64 px images, explicit data and output folders."""
    return [
        *model_args(ckpt),
        "--data_dir",
        str(workdir / "data"),
        "--image_size",
        "64",
        "--output_dir",
        str(workdir / out),
        *extra,
    ]


def unet_out(model, prompts, seed=0):
    x = torch.randn(len(prompts), 4, 8, 8, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        c = model.get_learned_conditioning(prompts)
        return model.apply_model(x, torch.full((len(prompts),), 300), c)


# ------------------------------------------------------------------------------------------------ formulas
def test_cie_direction_term_is_a_signed_mean_of_products():
    g = torch.Generator().manual_seed(0)
    r_o = torch.randn(1, 4, 8, 8, generator=g)
    assert direction_term(r_o, r_o) == pytest.approx(float(r_o.square().mean()))
    assert direction_term(-r_o, r_o) < 0  # can go below zero: not a norm
    r_m = torch.randn(1, 4, 8, 8, generator=g, requires_grad=True)
    direction_term(r_m, r_o).backward()
    torch.testing.assert_close(r_m.grad, r_o / r_o.numel())  # minimising pushes r(θ) against r(θ_orig)
    torch.testing.assert_close(concept_direction(r_o, 2 * r_o), -r_o)


def test_cie_loss_at_the_original_and_one_descent_step(tiny_model):
    """At θ = θ_orig the direction term is mean(r²) > 0 (r from two separate forwards of the original); one
    gradient step on the CiE loss lowers it for the same x_t, t."""
    model = copy.deepcopy(tiny_model)
    params = select_parameters(model, "attn2")
    ref = FrozenReference.substituted(model, params)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1)).expand(2, -1, -1, -1)  # same x_t
    t = torch.tensor([250, 250])
    cond = model.get_learned_conditioning(["Van Gogh", ""])
    with torch.no_grad():
        r_ref = tiny_model.apply_model(x[:1], t[:1], cond[:1]) - tiny_model.apply_model(x[:1], t[:1], cond[1:])

    def direction():
        e_c, e_u = model.apply_model(x, t, cond).chunk(2)
        o_c, o_u = ref(x, t, cond).chunk(2)
        return cie_loss(e_c - e_u, o_c - o_u, params, ref.originals, reg_beta=3e-5)

    loss, d, reg = direction()
    torch.testing.assert_close(d, r_ref.square().mean(), rtol=1e-4, atol=0)
    assert float(reg.detach()) == 0.0 and float(d.detach()) > 0
    loss.backward()
    with torch.no_grad():
        for p in params.values():
            p.sub_(1e-3 * p.grad / p.grad.norm().clamp_min(1e-30))
    _, d2, reg2 = direction()
    assert float(d2.detach()) < float(d.detach()) and float(reg2.detach()) > 0


def test_regularisers_weights_and_sepce_total_against_direct_formulas():
    g = torch.Generator().manual_seed(2)
    params = {"a": torch.randn(3, 4, generator=g), "b": torch.randn(5, generator=g)}
    orig = {k: v + torch.randn(v.shape, generator=g) for k, v in params.items()}
    expected = ((params["a"] - orig["a"]).abs().sum() + (params["b"] - orig["b"]).abs().sum()) / 2
    torch.testing.assert_close(l1_drift(params, orig), expected)
    torch.testing.assert_close(coefficient_l1(params), params["a"].abs().mean() + params["b"].abs().mean())
    prods = [torch.randn(4, 4, generator=g) for _ in range(3)]
    w = balance_weights(prods)
    assert float(w[0]) == 1.0
    for p, wc in zip(prods[1:], w[1:]):
        assert float(wc) == pytest.approx(float(prods[0].norm() / p.norm()), rel=1e-6)
    d = [torch.tensor(0.5), torch.tensor(-1.0), torch.tensor(2.0)]
    regs = [torch.tensor(10.0), torch.tensor(20.0), torch.tensor(30.0)]
    total = sepce_loss(d, w, regs, [True, False, True], reg_beta=0.1)
    torch.testing.assert_close(total, ((0.5 + 0.1 * 10) + (w[2] * 2.0 + 0.1 * 30)) / 2)
    with pytest.raises(ValueError, match="stopped"):
        sepce_loss(d, w, regs, [False] * 3, 0.1)


def test_momentum_statistic_and_stopping_rule_on_scripted_losses():
    stop = MomentumStop(threshold=0.0, max_iterations=100)
    seq = [1.0, -1.0, -1.0, -1.0]
    expected, m = [], None
    for v in seq:
        m = v if m is None else 0.9 * m + 0.1 * v
        expected.append(m)
    assert [stop.update(v) for v in seq] == [None] * 4  # below 0 from i=3 on, but i ≤ 10 never stops
    assert stop.history == pytest.approx(expected)
    for _ in range(7):  # i = 4..10
        assert stop.update(-1.0) is None
    reason = stop.update(-1.0)  # i = 11 > 10 and m < 0
    assert reason and "threshold" in reason and "iteration 11" in reason
    capped = MomentumStop(threshold=-5.0, max_iterations=13)
    reasons = [capped.update(1.0) for _ in range(13)]
    assert reasons[:12] == [None] * 12 and "cap" in reasons[12]
    never = MomentumStop(threshold=0.5)
    assert all(never.update(1.0) is None for _ in range(50))


# ------------------------------------------------------------------------------------------------ seed commands
def test_cie_seed_command_runs_as_written(wide_ckpt, workdir):
    seed = ["--threshold", "0", "--lr", "1e-6", "--reg_beta", "3e-5", "--prompt", "Van Gogh", "--devices", "0,1"]
    run = workdir / "models" / "CiE-VanGogh"
    proc = run_script("train-scripts/CiE.py", *seed, *model_args(wide_ckpt), *placed(workdir, run), cwd=workdir)
    assert "1 iterations" in proc.stdout
    assert {p.name for p in run.iterdir()} >= {
        "args.json",
        "losses.csv",
        "summary.json",
        "loss.png",
        "erasure.safetensors",
    }
    args = json.loads((run / "args.json").read_text())
    assert args["lr"] == 1e-6 and args["reg_beta"] == 3e-5 and args["ddim_steps"] == 50 and args["zero_grad"] is False
    summary = json.loads((run / "summary.json").read_text())
    assert summary["iterations"] == 1 and summary["ok"] and summary["reference"] == "substituted"
    rows = list(csv.DictReader((run / "losses.csv").open()))
    assert len(rows) == 1 and {"loss", "direction", "reg", "momentum"} <= set(rows[0])
    rec = records.load_record(run)
    base = read_state_dict(wide_ckpt)
    assert rec.method == "CiE" and rec.concepts == ["Van Gogh"] and not rec.separable
    assert sorted(rec.tensors) == sorted(k for k in base if k.startswith("model.diffusion_model.") and "attn2" in k)
    assert rec.base["sha256"] == records.file_digest(wide_ckpt)
    assert any(not torch.equal(v, base[k]) for k, v in rec.tensors.items())  # one Adam step moved them


def test_sepce_seed_command_runs_as_written(wide_ckpt, workdir):
    seed = ["--lr", "1e-2", "--scale_factor", "1e-4", "--reg_beta", "3e-5", "--devices", "0,1"]
    run = workdir / "models" / "SepCE-VanGogh+Cezanne+Picasso"
    run_script("train-scripts/SepCE.py", *seed, *model_args(wide_ckpt), *placed(workdir, run), cwd=workdir)
    rec = records.load_record(run)
    assert rec.method == "SepCE" and rec.concepts == ["VanGogh", "Cezanne", "Picasso"] and rec.beta == 1e-4
    assert all(rec.bases[c].shape == (256 - (3 * 77 - 2), 256) for c in rec.concepts)
    meta = rec.meta["concepts"]
    assert [meta[c]["threshold"] for c in rec.concepts] == [0.0, 1.5e-4, 0.0]
    assert all(meta[c]["iterations"] == 1 and "cap" in meta[c]["stop_reason"] for c in rec.concepts)
    n_layers = 2 * sum(1 for k in read_state_dict(wide_ckpt) if k.endswith("attn2.to_k.weight"))
    assert all(len(rec.coefs[c]) == n_layers for c in rec.concepts)
    header = next(csv.reader((run / "losses.csv").open()))
    assert {"d[VanGogh]", "m[Cezanne]", "w[Picasso]", "flag[Cezanne]"} <= set(header)


# ------------------------------------------------------------------------------------------------ CiE modes
def test_nan_loss_stops_keeps_the_last_good_state_and_says_so(tiny_ckpt, workdir, capsys, cie_script):
    argv = ["--prompt", "Van Gogh", "--lr", "1e30", "--iterations", "5", *small(workdir, "nan-run", tiny_ckpt)]
    with pytest.raises(SystemExit) as info:
        cli.run(cie_script.parse_args, cie_script.main, argv)  # what `python train-scripts/CiE.py ...` runs
    err = capsys.readouterr().err
    assert info.value.code == cli.EXIT_STOPPED_EARLY and "non-finite loss" in err and "warning" in err
    summary = json.loads((workdir / "nan-run" / "summary.json").read_text())
    assert not summary["ok"] and "non-finite loss" in summary["stop_reason"] and summary["iterations"] == 0
    base = read_state_dict(tiny_ckpt)
    rec = records.load_record(workdir / "nan-run")
    assert all(torch.equal(v, base[k]) for k, v in rec.tensors.items())  # rolled back to finite weights


def test_one_copy_and_two_copy_frozen_originals_train_the_same(tiny_ckpt, workdir, monkeypatch, cie_script):
    common = ["--prompt", "Van Gogh", "--iterations", "3", "--lr", "1e-4", "--seed", "5"]
    one = cie_script.main(cie_script.parse_args([*common, *small(workdir, "one-copy", tiny_ckpt), "--save_full"]))
    monkeypatch.setattr(training.TrainingSession, "two_devices", property(lambda self: True))
    two = cie_script.main(
        cie_script.parse_args([*common, *small(workdir, "two-copy", tiny_ckpt), "--devices", "cpu,cpu"])
    )
    assert one["reference"] == "substituted" and two["reference"] == "copy on cpu"
    rows = [list(csv.DictReader((workdir / d / "losses.csv").open())) for d in ("one-copy", "two-copy")]
    for a, b in zip(*rows):
        assert float(a["direction"]) == pytest.approx(float(b["direction"]), rel=1e-4, abs=1e-12)
    ra, rb = records.load_record(workdir / "one-copy"), records.load_record(workdir / "two-copy")
    for k in ra.tensors:
        torch.testing.assert_close(ra.tensors[k], rb.tensors[k], rtol=1e-5, atol=1e-7)
    full, base = read_state_dict(workdir / "one-copy" / "CiE-VanGogh.ckpt"), read_state_dict(tiny_ckpt)
    assert full.keys() == base.keys()
    assert all(torch.equal(full[k], ra.tensors[k] if k in ra.tensors else base[k]) for k in base)


# ------------------------------------------------------------------------------------------------ SepCE
@pytest.fixture(scope="module")
def joint_run(wide_ckpt, workdir, sepce_script):
    """Van Gogh + Cezanne trained jointly, a preserved watermark prompt, β = 1 so the increments are visible."""
    argv = [
        "--prompts",
        "VanGogh",
        "Cezanne",
        "--preserve",
        "a watermark",
        "--scale_factor",
        "1",
        "--lr",
        "1e-2",
        "--iterations",
        "12",
        "--save_full",
        *small(workdir, "joint", wide_ckpt),
    ]
    summary = sepce_script.main(sepce_script.parse_args(argv))
    return workdir / "joint", summary


def test_trained_increments_are_separable(joint_run, wide_ckpt):
    run, summary = joint_run
    rec = records.load_record(run)
    assert rec.concepts == ["VanGogh", "Cezanne"] and rec.meta["preserve"] == ["a watermark"]
    for c in rec.concepts:
        info = rec.meta["concepts"][c]
        assert info["basis"]["n"] == 256 - (3 * 77 - 2) and "a watermark" in info["basis"]["excluded"]
        assert info["iterations"] >= 11 and info["max_relative_leak_on_excluded"] < 1e-5
    model = load_model(wide_ckpt.parent / "config.yaml", wide_ckpt)
    prompts = ["", "VanGogh", "Cezanne", "a watermark"]
    base = unet_out(model, prompts)
    inc = SeparableIncrements.from_record(model, rec)
    scale = base.abs().max()
    for j, c in enumerate(["VanGogh", "Cezanne"], start=1):
        with inc.using([c]):
            out = unet_out(model, prompts)
        change = (out - base).abs().amax(dim=(1, 2, 3)) / scale
        assert change[j] > 1e-4, c  # the erased concept's output changed
        others = [k for k in range(len(prompts)) if k != j]
        assert change[others].max() < 2e-6, c  # "", the other concept and the preserved prompt did not
    with inc.using(["VanGogh", "Cezanne"]):
        inc.activate(["Cezanne"])  # restore VanGogh
        assert torch.equal(unet_out(model, prompts), _only(model, inc, "Cezanne", prompts))
    inc.close()
    assert torch.equal(unet_out(model, prompts), base)


def _only(model, inc, concept, prompts):
    with inc.using([concept]):
        return unet_out(model, prompts)


def test_compose_command_erases_a_subset_and_restores_one(joint_run, wide_ckpt, tiny_ckpt, workdir, compose_script):
    run, _ = joint_run
    out = workdir / "composed"
    run_script(
        "train-scripts/compose_erasure.py",
        "--record",
        run,
        "--erase",
        "VanGogh",
        "Cezanne",
        "--ckpt_path",
        wide_ckpt,
        "--output",
        out / "both.ckpt",
    )
    compose_script.main(
        compose_script.parse_args(
            [
                "--record",
                str(run),
                "--erase",
                "VanGogh",
                "Cezanne",
                "--restore",
                "VanGogh",
                "--ckpt_path",
                str(wide_ckpt),
                "--output",
                str(out / "cezanne.ckpt"),
            ]
        )
    )
    both, cez = read_state_dict(out / "both.ckpt"), read_state_dict(out / "cezanne.ckpt")
    full_both = read_state_dict(run / "SepCE-VanGogh+Cezanne.ckpt")
    full_cez = read_state_dict(run / "SepCE-Cezanne.ckpt")
    base = read_state_dict(wide_ckpt)
    assert all(torch.equal(both[k], full_both[k]) for k in base)
    assert all(torch.equal(cez[k], full_cez[k]) for k in base)
    rec = records.load_record(run)
    inc = rec.increments(["Cezanne"])
    for k in base:
        expected = base[k] + inc[k] if k in inc else base[k]
        torch.testing.assert_close(cez[k], expected, rtol=0, atol=0)
    assert json.loads((out / "cezanne.ckpt.json").read_text())["erased"] == ["Cezanne"]
    assert {p.name for p in run.iterdir()} >= {f"SepCE-{s}.ckpt" for s in ("VanGogh", "Cezanne", "VanGogh+Cezanne")}
    with pytest.raises(ValueError, match="was made for base checkpoint"):
        compose_script.main(
            compose_script.parse_args(
                ["--record", str(run), "--ckpt_path", str(tiny_ckpt), "--output", str(out / "wrong.ckpt")]
            )
        )
    assert not (out / "wrong.ckpt").exists()
    with pytest.raises(ValueError, match="'Monet' is not a concept"):
        compose_script.main(
            compose_script.parse_args(["--record", str(run), "--erase", "Monet", "--ckpt_path", str(wide_ckpt)])
        )
    with pytest.raises(FileExistsError):
        compose_script.main(
            compose_script.parse_args(
                ["--record", str(run), "--ckpt_path", str(wide_ckpt), "--output", str(out / "both.ckpt")]
            )
        )


def test_sequential_run_and_adding_a_concept_later(wide_ckpt, workdir, sepce_script):
    first = sepce_script.main(
        sepce_script.parse_args(
            [
                "--prompts",
                "VanGogh",
                "--sequential",
                "--scale_factor",
                "1",
                "--iterations",
                "3",
                *small(workdir, "seq", wide_ckpt),
            ]
        )
    )
    assert first["concepts"]["VanGogh"]["mode"] == "sequential"
    rows = list(csv.DictReader((workdir / "seq" / "losses.csv").open()))
    assert [r["concept"] for r in rows] == ["VanGogh"] * 3
    with pytest.raises(ValueError, match="already erases"):
        sepce_script.main(
            sepce_script.parse_args(
                [
                    "--prompts",
                    "VanGogh",
                    "--add_to",
                    str(workdir / "seq"),
                    "--scale_factor",
                    "1",
                    *small(workdir, "x1", wide_ckpt),
                ]
            )
        )
    with pytest.raises(ValueError, match="differs from beta"):
        sepce_script.main(
            sepce_script.parse_args(
                ["--prompts", "Cezanne", "--add_to", str(workdir / "seq"), *small(workdir, "x2", wide_ckpt)]
            )
        )
    sepce_script.main(
        sepce_script.parse_args(
            [
                "--prompts",
                "Cezanne",
                "--add_to",
                str(workdir / "seq"),
                "--scale_factor",
                "1",
                "--iterations",
                "12",
                *small(workdir, "added", wide_ckpt),
            ]
        )
    )
    old, new = records.load_record(workdir / "seq"), records.load_record(workdir / "added")
    assert new.concepts == ["VanGogh", "Cezanne"] and new.meta["added_to"].endswith("erasure.safetensors")
    assert torch.equal(new.bases["VanGogh"], old.bases["VanGogh"])
    assert all(torch.equal(new.coefs["VanGogh"][k], v) for k, v in old.coefs["VanGogh"].items())
    assert new.meta["concepts"]["Cezanne"]["basis"]["excluded"] == ["", "VanGogh"]
    model = load_model(wide_ckpt.parent / "config.yaml", wide_ckpt)
    prompts = ["", "VanGogh", "Cezanne"]
    base = unet_out(model, prompts)
    inc = SeparableIncrements.from_record(model, new)
    with inc.using(["Cezanne"]):
        change = (unet_out(model, prompts) - base).abs().amax(dim=(1, 2, 3)) / base.abs().max()
    inc.close()
    assert change[2] > 1e-4 and change[:2].max() < 2e-6  # the new increment leaves "" and VanGogh exact


# ------------------------------------------------------------------------------------------------ SepCE library
class ScriptedDirections:
    """A stand-in for ConceptDirections: d_c = v_c(i) + 1e-2 · ΣA_c (so the coefficients get gradients), v_c read
    from a script per call; records the coefficients and active increments each call saw."""

    def __init__(self, inc, script):
        self.inc, self.script, self.calls = inc, script, []

    def __call__(self, batch):
        i = len(self.calls)
        self.calls.append({"batch": list(batch), "active": self.inc.active, "coefs": self.inc.snapshot("a")})
        ds = [self.script[c](i) + 1e-2 * sum(x.sum() for x in self.inc.coefs[c].values()) for c in batch]
        return [d * torch.ones(2, 2) for d in ds], ds


def scripted_increments(tiny_model, concepts):
    model = copy.deepcopy(tiny_model)
    inc = SeparableIncrements(model, beta=1.0)
    g = torch.Generator().manual_seed(0)
    for c in concepts:
        inc.add(c, torch.linalg.qr(torch.randn(inc.context_dim, 4, generator=g))[0].T)  # 4 orthonormal rows
    return inc


def plain_trainer(iterations):
    return lambda params, desc: ParameterTrainer(params, lr=0.05, iterations=iterations, desc=desc, progress=False)


def test_joint_training_stops_concepts_one_by_one_and_saves_their_snapshots(tiny_model):
    """'a' stops by its momentum after iteration 11 (first index > 10 with m < 0), 'b' (threshold -inf) at the
    iteration cap of 15; training ends when every flag is 0. 'a' stays in the batch (it sets the weights) but out
    of the loss, and its saved coefficients are the snapshot taken when it stopped — Adam's accumulated gradients
    keep moving the live ones."""
    inc = scripted_increments(tiny_model, ["a", "b"])
    inc.activate(["a", "b"])
    directions = ScriptedDirections(inc, {"a": lambda i: -1.0, "b": lambda i: 1.0})
    joint = JointTraining(inc, ["a", "b"], [0.0, -math.inf], 15, 0.0, directions)
    (result,) = joint.fit(plain_trainer(100))
    assert result.ok and result.stop_reason == "every concept stopped" and result.iterations == 15
    assert joint.info["a"]["iterations"] == 12 and "threshold" in joint.info["a"]["stop_reason"]
    assert joint.info["b"]["iterations"] == 15 and "cap" in joint.info["b"]["stop_reason"]
    assert not any(joint.flags.values())
    assert [c["batch"] for c in directions.calls] == [["a", "b"]] * 15  # the first concept stays for the weights
    assert all(c["active"] == ("a", "b") for c in directions.calls)
    after_stop = directions.calls[12]["coefs"]  # what iteration 12 saw: the coefficients after iteration 11's step
    assert all(torch.equal(joint.snapshots["a"][k], v) for k, v in after_stop.items())
    assert any(not torch.equal(joint.snapshots["a"][k], v) for k, v in inc.coefs["a"].items())  # live ones moved on
    record = inc.to_record({}, ["a", "b"], coefs=joint.snapshots)
    assert all(torch.equal(record.coefs["a"][k], v) for k, v in joint.snapshots["a"].items())
    assert all(torch.equal(record.coefs["b"][k], v.detach()) for k, v in inc.coefs["b"].items())


def test_joint_training_with_every_concept_stopping_at_once_ends_after_that_step(tiny_model):
    inc = scripted_increments(tiny_model, ["a", "b"])
    inc.activate(["a", "b"])
    joint = JointTraining(
        inc, ["a", "b"], [0.0, 0.0], 100, 3e-5, ScriptedDirections(inc, {c: lambda i: -1.0 for c in "ab"})
    )
    (result,) = joint.fit(plain_trainer(100))
    assert result.iterations == 12 and result.stop_reason == "every concept stopped"
    assert joint.info == {c: {"iterations": 12, "stop_reason": joint.info[c]["stop_reason"]} for c in "ab"}


def test_sequential_training_one_concept_at_a_time(tiny_model):
    inc = scripted_increments(tiny_model, ["a", "b"])
    directions = ScriptedDirections(inc, {"a": lambda i: 1.0, "b": lambda i: -1.0})
    seq = SequentialTraining(inc, ["a", "b"], [0.0, 0.0], 5, 0.0, directions)
    trainers = []

    def make(params, desc):
        trainers.append((desc, len(params)))
        return plain_trainer(100)(params, desc)

    results = seq.fit(make)
    n_layers = len(inc.layer_keys())
    assert trainers == [("SepCE a", n_layers), ("SepCE b", n_layers)]  # a fresh optimizer over one concept each
    assert [r.iterations for r in results] == [5, 5] and all("cap" in r.stop_reason for r in results)
    assert [c["batch"] for c in directions.calls] == [["a"]] * 5 + [["b"]] * 5
    assert [c["active"] for c in directions.calls] == [("a",)] * 5 + [("b",)] * 5  # only its own increment
    for c in "ab":
        assert all(torch.equal(seq.snapshots[c][k], v.detach()) for k, v in inc.coefs[c].items())
        assert seq.info[c]["iterations"] == 5


def test_sepce_settings_resolve_and_validate():
    assert SepCESettings().resolved_thresholds() == [0.0, 1.5e-4, 0.0]  # the released concepts and thresholds
    assert SepCESettings(concepts=("x", "y")).resolved_thresholds() == [0.0, 0.0]
    assert SepCESettings(concepts=("x", "y"), thresholds=(0.5,)).resolved_thresholds() == [0.5, 0.5]
    with pytest.raises(ValueError, match="--rank_rtol 2"):
        SepCESettings(concepts=("x",), rank_rtol=2)
    with pytest.raises(ValueError, match="--reg_beta -1"):
        SepCESettings(concepts=("x",), reg_beta=-1)


def test_train_sepce_on_a_session_joint_then_added(wide_ckpt, workdir):
    """The library entry point without the script: a joint run of two concepts, then one added to it (trained
    alone, the earlier concepts copied)."""
    from sepce.training import TrainingSettings

    def common(out, iterations):
        return TrainingSettings(
            lr=1e-2,
            iterations=iterations,
            devices=(torch.device("cpu"),),
            ckpt_path=wide_ckpt,
            config_path=wide_ckpt.parent / "config.yaml",
            data_dir=workdir / "data",
            output_dir=workdir / out,
            image_size=64,
            progress=False,
        )

    first = run_sepce(common("lib-joint", 2), SepCESettings(concepts=("VanGogh", "Picasso"), scale_factor=1.0))
    assert first["settings"]["mode"] == "joint" and first["iterations"] == 2
    assert {c: v["iterations"] for c, v in first["concepts"].items()} == {"VanGogh": 2, "Picasso": 2}
    added = run_sepce(
        common("lib-added", 2), SepCESettings(concepts=("Cezanne",), scale_factor=1.0, add_to=workdir / "lib-joint")
    )
    assert added["settings"]["mode"] == "sequential" and added["settings"]["added_to"].endswith("erasure.safetensors")
    old, new = records.load_record(workdir / "lib-joint"), records.load_record(workdir / "lib-added")
    assert new.concepts == ["VanGogh", "Picasso", "Cezanne"]
    assert all(torch.equal(new.coefs["Picasso"][k], v) for k, v in old.coefs["Picasso"].items())
    assert new.meta["concepts"]["Cezanne"]["basis"]["excluded"] == ["", "VanGogh", "Picasso"]


# ------------------------------------------------------------------------------------------------ one ending
def test_every_method_ends_with_the_same_summary_schema(wide_ckpt, workdir, load_script):
    """CiE, SepCE, ESD, FMN and Ablating Concepts, 2 iterations each: summary.json has the same keys
    (training.SUMMARY_KEYS), the devices and per-folder data included, and the record's metadata holds the common
    facts too."""
    runs = {
        "CiE": ["--prompt", "Van Gogh"],
        "SepCE": ["--prompts", "VanGogh", "Cezanne"],
        "Esd": ["--prompt", "Van Gogh", "--ddim_steps", "4"],
        "FMN": ["--prompt", "Van Gogh"],
        "Abconcept": ["--prompt", "Van Gogh"],
    }
    summaries = {}
    for script, argv in runs.items():
        module = load_script(f"train-scripts/{script}.py")
        out = workdir / f"schema-{script}"
        common = small(workdir, out.name, wide_ckpt, "--iterations", "2")
        if script == "Esd":  # no training images
            at = common.index("--data_dir")
            del common[at : at + 2]
        summaries[script] = module.main(module.parse_args([*argv, *common]))
        assert json.loads((out / "summary.json").read_text()) == summaries[script]
        meta = records.load_record(out).meta
        assert {"iterations", "stop_reason", "ok", "lr", "reference", "concepts"} <= set(meta)
    for script, summary in summaries.items():
        assert set(summary) == set(training.SUMMARY_KEYS), script
        assert summary["devices"] == ["cpu"] and summary["iterations"] == 2 and summary["ok"], script
        assert all({"iterations", "stop_reason"} <= set(v) for v in summary["concepts"].values()), script
    assert summaries["CiE"]["data"]["Van Gogh"]["images"] == 2 and summaries["Esd"]["data"] == {}
    assert set(summaries["SepCE"]["data"]) == {"VanGogh", "Cezanne"}


# ------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "argv, message",
    [
        (["--prompts", "VanGogh", "Cezanne", "--thresholds", "0", "1", "2"], "3 values for 2 concepts"),
        (["--prompts", "Van.Gogh"], "--prompts 'Van.Gogh' contains '.'"),
        (["--prompts", "VanGogh", "VanGogh"], "more than once"),
        (["--prompts", "VanGogh", "--preserve", "VanGogh"], "--preserve"),
        (["--prompts", "Monet"], "does not exist"),
        (["--prompts", "VanGogh", "--scale_factor", "0"], "--scale_factor"),
        (["--prompts", "A", "B", "C", "D", "E", "--save_full"], "31 full checkpoints"),
    ],
)
def test_sepce_bad_input_fails_before_the_model_loads(wide_ckpt, workdir, monkeypatch, argv, message, sepce_script):
    monkeypatch.setattr(training.session, "load_model", lambda *a, **k: pytest.fail("model loaded before validation"))
    with pytest.raises((ValueError, FileNotFoundError)) as info:
        sepce_script.main(sepce_script.parse_args([*argv, *small(workdir, "bad", wide_ckpt)]))
    assert message in str(info.value) and "\n" not in str(info.value)
    assert not (workdir / "bad").exists()


def test_bad_input_is_one_line_and_nonzero_from_the_command_line(tiny_ckpt, workdir, capsys, cie_script):
    argv = ["--prompt", "Monet", *small(workdir, "bad-cli", tiny_ckpt)]
    with one_line_error(capsys, "CiE.py: error: image folder", "Monet"):
        cli.run(cie_script.parse_args, cie_script.main, argv, prog="CiE.py")
    assert not (workdir / "bad-cli").exists()
