"""The adversarial-prompt attack (sepce/adversarial.py, eval-scripts/attack-adversarial-prompt.py) on the tiny
model: its gradient path, the straight-through projection, the script end to end with the world classifier."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import one_line_error, world_attack_argv, write_images

import sepce.adversarial as adv
from sepce.attack import text_encoder, token_table
from sepce.cli import run as run_cli
from sepce.training import ImageFolder

SCRIPT = "eval-scripts/attack-adversarial-prompt.py"


def run(module, *argv):
    return run_cli(module.parse_args, module.main, [str(a) for a in argv], prog=Path(module.__file__).name)


def test_prefix_conditioning_is_the_tokens_and_passes_gradients(tiny_model):
    """With the vocabulary rows of real tokens the prefixed conditioning equals the plain text's; gradients of a
    loss on it reach the prefix embeddings (and only them: the model stays frozen)."""
    model = tiny_model
    tokenizer = text_encoder(model).tokenizer
    table = token_table(model).weight
    ids = tokenizer.encode("red blue green")
    assert len(ids) == 3
    vectors = table[torch.tensor(ids)].detach().clone().requires_grad_(True)
    with torch.no_grad():
        reference = model.get_learned_conditioning(["red blue green a cat"])
    cond = adv.prefix_conditioning(model, ["a cat"], vectors, "thing")
    torch.testing.assert_close(cond, reference, rtol=0, atol=1e-6)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    cond.pow(2).sum().backward()
    assert vectors.grad is not None and vectors.grad.abs().sum() > 0 and torch.isfinite(vectors.grad).all()
    assert all(torch.equal(before[k], v) for k, v in model.named_parameters())


def test_projection_and_search_on_the_tiny_model(tiny_model, tmp_path):
    """Projection maps a token's own row to itself and never to the start/end tokens; the search runs its steps,
    keeps real tokens, and its ε-loss gradient moves the soft prefix."""
    model = tiny_model
    tokenizer = text_encoder(model).tokenizer
    table = token_table(model).weight.detach()
    candidates = adv.candidate_ids(tokenizer, table.shape[0])
    ids = torch.tensor(tokenizer.encode("red blue green"))
    assert torch.equal(adv.project(table[ids], table, candidates), ids)
    assert tokenizer.bos_token_id not in candidates and tokenizer.eos_token_id not in candidates
    images = ImageFolder(write_images(tmp_path / "Van Gogh", n=2), 64)
    preset = adv.AdversarialPreset(tokens=3, steps=4, batch_size=2, lr=0.5, seed=0, init_word="thing")
    prefix = adv.optimise_prefix(model, images, "Van Gogh", preset)
    assert len(prefix.ids) == 3 and len(prefix.losses) == 4 and all(map(torch.isfinite, torch.tensor(prefix.losses)))
    assert all(0 <= i < table.shape[0] and i in set(candidates.tolist()) for i in prefix.ids)
    assert prefix.meta["distinct_prefixes"] >= 2  # lr 0.5 moves the soft prefix off the init word
    compared = prefix.meta["compared"]
    assert compared[" ".join(map(str, prefix.ids))] == min(compared.values())  # the probe's best is kept
    again = adv.optimise_prefix(model, images, "Van Gogh", preset)
    assert again.ids == prefix.ids and again.losses == prefix.losses  # seeded
    world = adv.candidate_ids(tokenizer, table.shape[0], "world")
    words = {tokenizer.decode([i]) for i in world.tolist()}
    assert {"waves", "style", "circle", "in", "an"} <= words and len(words) < 40
    with pytest.raises(ValueError, match="--adv_tokens 0"):
        adv.AdversarialPreset(0, 1, 1, 0.1, 0, "thing").validate()


def test_script_world_classifier_end_to_end(tmp_path, tiny_ckpt, load_script, capsys):
    """The script on the tiny model with the world classifier: a prefix, plain and adversarial images of the
    concept's rows, ASR before/after with Wilson intervals and the judge in the results; reuse; bad input."""
    from sepce.stats import wilson
    from sepce.world.concept_classifier import SHIPPED_CLASSIFIER

    script = load_script(SCRIPT)
    argv = world_attack_argv(tmp_path, tiny_ckpt, "--attack_steps", "2", "--attack_batch_size", "2")
    out = script.main(script.parse_args(argv))
    folder = tmp_path / "out" / "original"
    assert sorted(p.name for p in (folder / "adversarial").glob("*.png")) == ["0_0.png", "0_1.png"]
    assert sorted(p.name for p in (folder / "adversarial" / "plain").glob("*.png")) == ["0_0.png", "0_1.png"]
    stored = json.loads((folder / "results" / "adversarial.json").read_text())
    assert stored["classifier"]["kind"] == "world" and len(stored["classifier"]["sha256"]) == 64
    waves = stored["concepts"]["waves"]
    assert waves["adversarial_prompt"].endswith("in the style of waves")
    assert len(waves["ids"]) == adv.PRESETS["world"].tokens
    row = out["row"]
    assert row["images"] == 2 and row["after"] == sum(a == 3 for _, a in waves["predictions"].values())
    assert row["after_low_pct"] == pytest.approx(100 * wilson(row["after"], 2).low)
    prompt_file = json.loads((folder / "adversarial" / "prompt-waves.json").read_text())
    assert prompt_file["ids"] == waves["ids"] and prompt_file["meta"]["preset"]["steps"] == 2
    again = script.main(script.parse_args(argv))
    assert not again["searched"] and again["row"] == row
    with one_line_error(capsys, "nudenet takes no --classifier"):
        run(script, *argv[:-3], "--classifier_kind", "nudenet", "--classifier", SHIPPED_CLASSIFIER)
    with one_line_error(capsys, "--classifier_kind artist:", "holds a world classifier"):
        run(script, *argv, "--classifier_kind", "artist")
    with one_line_error(capsys, "--adv_tokens 0"):
        run(script, *argv, "--adv_tokens", "0")


def test_world_benchmark_plans_the_adversarial_attack(tmp_path):
    """--attacks adversarial adds, beside concept inversion, one adversarial-prompt step per attacked style and
    model (the original: the ceiling); the default plan is unchanged."""
    from sepce.world.benchmark import ATTACK_SCRIPTS, FORMS, benchmark_layout, plan_benchmark, single_cells

    lay = benchmark_layout(tmp_path / "work")
    cells = single_cells(["CiE"], "waves", ["waves", "dots", "rings"])
    default = [s for s in plan_benchmark(lay, FORMS["full"], cells).steps if s.stage == "attack"]
    both = [s for s in plan_benchmark(lay, FORMS["full"], cells, attacks=("inversion", "adversarial")).steps]
    both = [s for s in both if s.stage == "attack"]
    adversarial = [s for s in both if s.argv[0] == ATTACK_SCRIPTS["adversarial"]]
    assert [s.argv[0] for s in default] == [ATTACK_SCRIPTS["inversion"]] * len(default)
    assert len(adversarial) == len(default) and len(both) == 2 * len(default)
    assert {s.argv[s.argv.index("--output_name") + 1] for s in adversarial} == {"default", "CiE-waves-seed0"}
    assert all(s.argv[s.argv.index("--classifier") + 1] == str(lay.classifier) for s in adversarial)
