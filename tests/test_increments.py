"""Basic solution sets (null-space bases) and separable increments on cross-attention (sepce/increments.py).

The separability tests use a tiny model with a 256-wide text context (configs/tiny/v1-tiny-wide.yaml): with the
32-wide tiny model, 77 token embeddings already span the whole context space and every basis is empty."""

from __future__ import annotations

import copy

import pytest
import scipy.linalg
import torch

from sepce import records
from sepce.increments import SeparableIncrements, basic_solution_sets, null_space_basis, rank_tolerance

CONCEPTS = ["Van Gogh", "Cezanne", "Picasso"]


@pytest.fixture(scope="module")
def wide_model(wide_ckpt):
    from sepce.modeling import load_model

    return load_model(wide_ckpt.parent / "config.yaml", wide_ckpt)


@pytest.fixture(scope="module")
def embs(wide_model):
    prompts = [*CONCEPTS, "", "a watermark"]
    with torch.no_grad():
        e = wide_model.get_learned_conditioning(prompts)
    return {p: e[i : i + 1] for i, p in enumerate(prompts)}


def unet_out(model, prompts, embs, x=None, t=None):
    x = torch.randn(len(prompts), 4, 8, 8, generator=torch.Generator().manual_seed(0)) if x is None else x
    t = torch.full((len(prompts),), 400) if t is None else t
    with torch.no_grad():
        return model.apply_model(x, t, torch.cat([embs[p] for p in prompts]))


def random_coefs(inc, concept, seed, scale=0.5):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for a in inc.coefs[concept].values():
            a.copy_(torch.randn(a.shape, generator=g) * scale)


# ------------------------------------------------------------------------------------------------ null spaces
def test_null_space_basis_matches_scipy_and_counts_exact_duplicates_once():
    g = torch.Generator().manual_seed(0)
    low = torch.randn(6, 3, generator=g, dtype=torch.float64) @ torch.randn(3, 10, generator=g, dtype=torch.float64)
    E = torch.cat([low, low[:2]])  # duplicated rows add no rank
    sol = null_space_basis(E)
    assert (sol.rank, sol.n, sol.dim) == (3, 7, 10)
    torch.testing.assert_close(sol.basis @ sol.basis.T, torch.eye(7, dtype=torch.float64))
    assert (E @ sol.basis.T).abs().max() < 1e-12 * E.abs().max()
    ref = torch.from_numpy(scipy.linalg.null_space(E.numpy()))  # D x n, independent implementation
    torch.testing.assert_close(sol.basis.T @ sol.basis, ref @ ref.T)  # same subspace (projectors)
    assert sol.largest_dropped < sol.tol < sol.smallest_kept


def test_rank_tolerance_rule():
    assert rank_tolerance(2.0, (77, 768)) == pytest.approx(2.0 * 768 * torch.finfo(torch.float64).eps)
    assert rank_tolerance(2.0, (77, 768), rtol=1e-3) == pytest.approx(2e-3)
    E = torch.diag(torch.tensor([1.0, 1e-4, 1e-9], dtype=torch.float64))
    assert null_space_basis(E).rank == 3
    assert null_space_basis(E, rtol=1e-6).rank == 2


def test_basic_solution_sets_of_real_token_embeddings(embs):
    """n_c = D − rank(E_c): 77 independent rows for "" alone; with two other concepts 3·77 − 2 (the first-token
    embedding is the same for every prompt), as for SD v1.4 (691 and 539 of 768)."""
    D = embs[""].shape[-1]
    alone = basic_solution_sets({"Van Gogh": embs["Van Gogh"]}, {"": embs[""]})["Van Gogh"]
    assert alone.n == D - 77
    sets = basic_solution_sets({c: embs[c] for c in CONCEPTS}, {"": embs[""]})
    for c, sol in sets.items():
        assert sol.n == D - (3 * 77 - 2) and sol.excluded == ["", *[o for o in CONCEPTS if o != c]]
        E = torch.cat([embs[p][0] for p in sol.excluded]).double()
        assert (sol.basis @ E.T).abs().max() < 1e-10 * E.abs().max()  # ‖S_c E_cᵀ‖ at round-off
        own = (sol.basis @ embs[c][0].double().T).abs().max()
        assert own > 1e-3 * embs[c].abs().max()  # the concept's own embedding is NOT annihilated


def test_empty_basis_is_an_error(tiny_model):
    with torch.no_grad():
        e = tiny_model.get_learned_conditioning(["Van Gogh", ""])
    with pytest.raises(ValueError, match=r"n_c = 0.*32 context dimensions"):
        basic_solution_sets({"Van Gogh": e[:1]}, {"": e[1:]})


# ------------------------------------------------------------------------------------------------ increments
@pytest.fixture()
def inc(wide_model, embs):
    """Van Gogh and Cezanne exclude each other, "" and the preserved watermark prompt; Picasso is added later
    (as with ``--add_to``): its basis excludes "", Van Gogh and Cezanne, theirs do not exclude Picasso."""
    sets = basic_solution_sets({c: embs[c] for c in CONCEPTS[:2]}, {"": embs[""], "a watermark": embs["a watermark"]})
    sets.update(basic_solution_sets({c: embs[c] for c in CONCEPTS}, {"": embs[""]}, which=["Picasso"]))
    out = SeparableIncrements(wide_model, beta=1.0)
    for c in CONCEPTS:
        out.add(c, sets[c].basis)
    yield out
    out.close()


def test_zero_initialised_increments_change_nothing(wide_model, embs, inc):
    prompts = [*CONCEPTS, ""]
    base = unet_out(wide_model, prompts, embs)
    inc.activate(CONCEPTS)
    assert all(torch.equal(a, torch.zeros_like(a)) for a in inc.parameters())
    assert torch.equal(unet_out(wide_model, prompts, embs), base)


def test_separability_and_exact_restoration(wide_model, embs, inc):
    """With concept c's increment added, outputs for "", the other concepts and the preserved prompt are unchanged
    to round-off while c's output changes; removing it returns bit-identical outputs."""
    prompts = ["", "Van Gogh", "Cezanne", "Picasso", "a watermark"]
    base = unet_out(wide_model, prompts, embs)
    for c in CONCEPTS[:2]:
        random_coefs(inc, c, seed=len(c))
    with inc.using(["Van Gogh"]):
        one = unet_out(wide_model, prompts, embs)
    scale = base.abs().max()
    for j, p in enumerate(prompts):
        diff = (one[j] - base[j]).abs().max() / scale
        if p in ("Van Gogh", "Picasso"):  # Picasso came later: Van Gogh's basis does not exclude it
            assert diff > 1e-3
        else:
            assert diff < 2e-6, p
    with inc.using(["Cezanne"]):
        only_c = unet_out(wide_model, prompts, embs)
    with inc.using(["Van Gogh", "Cezanne"]):
        both = unet_out(wide_model, prompts, embs)
    torch.testing.assert_close(both[2], only_c[2], rtol=0, atol=2e-6 * scale)  # Van Gogh's ΔW vanishes on Cezanne
    torch.testing.assert_close(both[1], one[1], rtol=0, atol=2e-6 * scale)
    with inc.using(["Cezanne"]):  # restore Van Gogh = drop its increment: exactly the earlier outputs
        assert torch.equal(unet_out(wide_model, prompts, embs), only_c)
    assert inc.active == ()
    assert torch.equal(unet_out(wide_model, prompts, embs), base)
    assert inc.leakage("Van Gogh", {p: embs[p] for p in ["", "Cezanne", "a watermark"]}) < 1e-5
    assert inc.leakage("Van Gogh", {"Picasso": embs["Picasso"]}) > 1e-3


def test_increment_applies_to_every_batch_element(wide_model, embs, inc):
    random_coefs(inc, "Van Gogh", seed=3)
    prompts = ["Van Gogh", "Van Gogh", "Cezanne"]
    x = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([100, 700, 300])
    with inc.using(["Van Gogh"]):
        batched = unet_out(wide_model, prompts, embs, x, t)
        single = torch.cat([unet_out(wide_model, [p], embs, x[j : j + 1], t[j : j + 1]) for j, p in enumerate(prompts)])
    base = unet_out(wide_model, prompts, embs, x, t)
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-6)
    assert (batched[1] - base[1]).abs().max() > 1e-3 * base.abs().max()  # element 1 edited too, not only 0


def test_merged_weights_equal_on_the_fly_increments(wide_model, embs, inc, tmp_path):
    for c in CONCEPTS:
        random_coefs(inc, c, seed=10 + len(c), scale=0.3)
    prompts = ["", "Van Gogh", "Picasso"]
    subset = ["Van Gogh", "Picasso"]
    with inc.using(subset):
        hooked = unet_out(wide_model, prompts, embs)
    base = unet_out(wide_model, prompts, embs)
    record = inc.to_record({"path": "x", "sha256": "0"}, meta={"note": 1})
    path = records.save_record(tmp_path / "erasure.safetensors", record)
    loaded = records.load_record(path)
    assert loaded.concepts == CONCEPTS and loaded.beta == 1.0 and loaded.meta == {"note": 1}
    for c in CONCEPTS:
        assert torch.equal(loaded.bases[c], inc.bases[c])
        assert all(torch.equal(loaded.coefs[c][k], a.detach()) for k, a in inc.coefs[c].items())
    deltas = inc.deltas(subset)
    for k, d in loaded.increments(subset).items():
        torch.testing.assert_close(d, deltas[k])
    model = copy.deepcopy(wide_model)
    originals = records.apply_record(model, loaded, erase=subset)
    merged = unet_out(model, prompts, embs)
    torch.testing.assert_close(merged, hooked, rtol=1e-4, atol=1e-5 * hooked.abs().max())
    records.restore(model, originals)
    assert torch.equal(unet_out(model, prompts, embs), base)
    again = SeparableIncrements.from_record(model, loaded)
    with again.using(subset):
        torch.testing.assert_close(unet_out(model, prompts, embs), hooked, rtol=0, atol=0)
    again.close()


def test_training_moves_only_coefficients(wide_model, embs, inc):
    before = {k: v.detach().clone() for k, v in wide_model.named_parameters()}
    for p in wide_model.parameters():
        p.requires_grad_(False)
    inc.activate(["Van Gogh"])
    opt = torch.optim.Adam(inc.parameters(["Van Gogh"]), lr=1e-2)
    x = torch.randn(1, 4, 8, 8)
    out = wide_model.apply_model(x, torch.tensor([500]), embs["Van Gogh"])
    out.square().mean().backward()
    assert all(a.grad is not None and a.grad.abs().sum() > 0 for a in inc.parameters(["Van Gogh"]))
    assert all(a.grad is None for a in inc.parameters(["Cezanne", "Picasso"]))
    opt.step()
    assert all(torch.equal(v, before[k]) for k, v in wide_model.named_parameters())
    snap = inc.snapshot("Van Gogh")
    assert all(torch.equal(snap[k], a.detach()) and snap[k] is not a for k, a in inc.coefs["Van Gogh"].items())


def test_add_validates_shapes(wide_model, inc):
    with pytest.raises(ValueError, match="already"):
        inc.add("Van Gogh", inc.bases["Van Gogh"])
    with pytest.raises(ValueError, match="expected n x 256"):
        inc.add("Monet", torch.zeros(3, 32))
    with pytest.raises(ValueError, match="unknown concept"):
        inc.activate(["Monet"])
