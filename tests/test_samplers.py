"""Sampler tests: DDIM/K-LMS/DPM-Solver++(2M) against diffusers' schedulers (test-only oracle), PLMS against its
defining Adams-Bashforth combinations, exactness on a point-mass data distribution, the guidance wrapper, partial
runs and the CompVis-style sampler classes. Dummy eps models only; the file runs in seconds on CPU."""

import logging

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, LMSDiscreteScheduler
from ldm.models.diffusion import sampling as S
from ldm.models.diffusion.ddim import DDIMSampler, model_device
from ldm.models.diffusion.plms import PLMSSampler

# diffusers' LMS scheduler calls np.array on a tensor; newer numpy warns about the copy keyword (not ours)
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SHAPE = (2, 4, 6, 6)
SCHED_KW = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)


def toy_eps(x, t, cond):
    """A smooth, nonlinear dummy eps model of (x, t, cond); cond is (B, tokens, dim)."""
    tt = (t.to(torch.float32) / 1000.0).view(-1, 1, 1, 1)
    c = cond.mean(dim=(1, 2)).view(-1, 1, 1, 1)
    return torch.tanh(0.8 * x + tt + c) * (1.0 + 0.1 * torch.cos(x * (1.0 + c)))


@pytest.fixture
def inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(SHAPE, generator=g)
    cond = torch.randn(SHAPE[0], 3, 5, generator=g)
    uncond = torch.randn(1, 3, 5, generator=g)
    return x, cond, uncond


@pytest.fixture(scope="module")
def alphas():
    return S.make_alphas_cumprod()


def ddim_oracle(**kw):
    return DDIMScheduler(clip_sample=False, set_alpha_to_one=False, steps_offset=1, **SCHED_KW, **kw)


def recorder():
    steps = []
    return steps, steps.append


# ------------------------------------------------------------------------------------------------ schedules
def test_alphas_cumprod_compvis_and_diffusers_styles():
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
    expected = np.cumprod(1 - betas).astype(np.float32)
    compvis = S.make_alphas_cumprod(style="compvis")
    assert compvis.dtype == torch.float32 and compvis.shape == (1000,)
    assert torch.equal(compvis, torch.from_numpy(expected))
    diffusers_style = S.make_alphas_cumprod(style="diffusers")
    assert torch.equal(diffusers_style, LMSDiscreteScheduler(**SCHED_KW).alphas_cumprod)
    torch.testing.assert_close(compvis, diffusers_style, rtol=2e-6, atol=0)
    with pytest.raises(ValueError, match="style='bogus'"):
        S.make_alphas_cumprod(style="bogus")


@pytest.mark.parametrize("steps", [1, 10, 50, 100, 250, 500])
def test_ddim_timesteps_match_diffusers_leading_spacing(steps):
    oracle = ddim_oracle()
    oracle.set_timesteps(steps)
    ts = S.ddim_timesteps(steps)
    assert ts.dtype == np.int64
    np.testing.assert_array_equal(ts[::-1], oracle.timesteps.numpy())


def test_ddim_timesteps_compvis_quirks():
    np.testing.assert_array_equal(S.ddim_timesteps(50)[:3], [1, 21, 41])
    # 1000 // 30 = 33, so range(0, 1000, 33) has 31 entries (as CompVis)
    assert len(S.ddim_timesteps(30)) == 31
    for bad in (0, 501, 2.5):
        with pytest.raises(ValueError, match="num_steps"):
            S.ddim_timesteps(bad)
    # T // S dividing T - 1 puts the last step at T (CompVis: IndexError); every other S <= T // 2 is in range
    refused = [s for s in range(1, 501) if (999 % (1000 // s)) == 0]
    assert refused == [3, 9, 27, 36, 37, *range(101, 112), *range(251, 334)]
    for s in refused:
        with pytest.raises(
            ValueError, match=rf"num_steps={s}: .* end at 1000, outside the T=1000 DDPM steps; use e.g."
        ):
            S.ddim_timesteps(s)
    with pytest.raises(ValueError, match="use e.g. 2 or 4"):
        S.ddim_timesteps(3)
    assert all(S.ddim_timesteps(s)[-1] < 1000 for s in range(1, 501) if s not in refused)


def test_ddim_schedule_against_diffusers_variance(alphas):
    sched = S.ddim_schedule(alphas, 20, eta=1.0)
    a = alphas.numpy()
    np.testing.assert_array_equal(sched.alphas.numpy(), a[sched.timesteps])
    assert sched.alphas_prev[0] == alphas[0]
    np.testing.assert_array_equal(sched.alphas_prev[1:].numpy(), sched.alphas[:-1].numpy())
    oracle = DDIMScheduler(clip_sample=False, set_alpha_to_one=False, steps_offset=1, **SCHED_KW)
    oracle.alphas_cumprod = alphas
    oracle.final_alpha_cumprod = alphas[0]
    oracle.set_timesteps(20)
    for index, t in enumerate(sched.timesteps):
        variance = oracle._get_variance(int(t), int(t) - 50)
        # diffusers evaluates 1 - a_t / a_prev in float32 (cancellation); CompVis and we do it in float64
        torch.testing.assert_close(sched.sigmas[index], variance.sqrt(), rtol=5e-5, atol=0)
    assert torch.all(S.ddim_schedule(alphas, 20, eta=0.0).sigmas == 0)


# ----------------------------------------------------------------------------------------- DDIM vs diffusers
@pytest.mark.parametrize("steps", [10, 50])
def test_ddim_eta0_matches_diffusers_step_by_step(inputs, steps):
    x, cond, _ = inputs
    oracle = ddim_oracle()
    oracle.set_timesteps(steps)
    steps_seen, cb = recorder()
    out = S.ddim_sample(toy_eps, x, cond, oracle.alphas_cumprod, steps, callback=cb)
    ref = x.clone()
    for k, t in enumerate(oracle.timesteps):
        step = oracle.step(toy_eps(ref, t.expand(x.shape[0]), cond), t, ref, eta=0.0)
        ref = step.prev_sample
        assert steps_seen[k]["t"] == int(t) and steps_seen[k]["i"] == k
        torch.testing.assert_close(steps_seen[k]["x"], ref, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(steps_seen[k]["pred_x0"], step.pred_original_sample, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)


def test_ddim_eta_positive_matches_diffusers_with_same_noise(inputs):
    x, cond, _ = inputs
    oracle = ddim_oracle()
    oracle.set_timesteps(20)
    out = S.ddim_sample(
        toy_eps, x, cond, oracle.alphas_cumprod, 20, eta=0.7, generator=torch.Generator().manual_seed(7)
    )
    gen = torch.Generator().manual_seed(7)
    ref = x.clone()
    for t in oracle.timesteps:
        ref = oracle.step(toy_eps(ref, t.expand(x.shape[0]), cond), t, ref, eta=0.7, generator=gen).prev_sample
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out, S.ddim_sample(toy_eps, x, cond, oracle.alphas_cumprod, 20))


# ---------------------------------------------------------------------------------------- K-LMS vs diffusers
@pytest.mark.parametrize("steps", [100, 10])
def test_klms_with_guidance_matches_diffusers_lms_pipeline_loop(inputs, steps):
    x, cond, uncond = inputs
    scale = 7.5
    oracle = LMSDiscreteScheduler(**SCHED_KW)
    oracle.set_timesteps(steps)
    sched = S.klms_schedule(oracle.alphas_cumprod, steps)
    np.testing.assert_array_equal(sched.timesteps, oracle.timesteps.numpy())
    np.testing.assert_array_equal(sched.sigmas, oracle.sigmas.numpy())
    assert S.klms_init_noise_sigma(oracle.alphas_cumprod) == float(oracle.init_noise_sigma)

    latents = x * oracle.init_noise_sigma
    start = S.klms_initial_latent(x, oracle.alphas_cumprod)
    assert torch.equal(start, latents)
    steps_seen, cb = recorder()
    out = S.klms_sample(S.cfg(toy_eps, uncond, scale), start, cond, oracle.alphas_cumprod, steps, callback=cb)

    # the diffusers StableDiffusionPipeline loop, with the guidance written out
    uncond_b = uncond.expand_as(cond)
    for k, t in enumerate(oracle.timesteps):
        model_in = oracle.scale_model_input(torch.cat([latents] * 2), t)
        e_u, e_c = toy_eps(model_in, t.expand(2 * x.shape[0]), torch.cat([uncond_b, cond])).chunk(2)
        latents = oracle.step(e_u + scale * (e_c - e_u), t, latents).prev_sample
        assert steps_seen[k]["t"] == float(t)
        torch.testing.assert_close(steps_seen[k]["x"], latents, rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(out, latents, rtol=1e-5, atol=2e-5)


# ------------------------------------------------------------------------------- DPM-Solver++(2M) vs diffusers
def dpm_oracle():
    """diffusers' DPM-Solver++(2M) with the settings :func:`S.dpmpp_2m_sample` follows (its defaults, spelled out)."""
    return DPMSolverMultistepScheduler(
        **SCHED_KW,
        algorithm_type="dpmsolver++",
        solver_order=2,
        solver_type="midpoint",
        timestep_spacing="linspace",
        final_sigmas_type="zero",
        lower_order_final=True,
        prediction_type="epsilon",
    )


@pytest.mark.parametrize("steps", [10, 12, 15, 25, 50])
def test_dpmpp_2m_with_guidance_matches_diffusers_pipeline_loop(inputs, steps):
    x, cond, uncond = inputs
    scale = 7.5
    oracle = dpm_oracle()
    oracle.set_timesteps(steps)
    sched = S.dpm_schedule(oracle.alphas_cumprod, steps)
    np.testing.assert_array_equal(sched.timesteps, oracle.timesteps.numpy())
    np.testing.assert_array_equal(sched.sigmas, oracle.sigmas.numpy())
    assert float(oracle.init_noise_sigma) == 1.0  # the start latent is the unit noise itself, as DDIM's x_T
    steps_seen, cb = recorder()
    out = S.dpmpp_2m_sample(S.cfg(toy_eps, uncond, scale), x, cond, oracle.alphas_cumprod, steps, callback=cb)

    latents, uncond_b = x.clone(), uncond.expand_as(cond)
    for k, t in enumerate(oracle.timesteps):
        model_in = oracle.scale_model_input(torch.cat([latents] * 2), t)
        e_u, e_c = toy_eps(model_in, t.expand(2 * x.shape[0]), torch.cat([uncond_b, cond])).chunk(2)
        latents = oracle.step(e_u + scale * (e_c - e_u), t, latents).prev_sample
        assert steps_seen[k]["t"] == int(t) and steps_seen[k]["i"] == k
        torch.testing.assert_close(steps_seen[k]["x"], latents, rtol=1e-5, atol=1e-5)
    assert len(steps_seen) == steps
    torch.testing.assert_close(out, latents, rtol=1e-5, atol=1e-5)


def test_dpmpp_2m_schedule_and_argument_checks(alphas):
    sched = S.dpm_schedule(alphas, 10)
    assert sched.timesteps[0] == 999 and sched.timesteps.dtype == np.int64 and len(sched) == 10
    assert sched.sigmas[-1] == 0 and np.all(np.diff(sched.sigmas) < 0)
    assert len(set(S.dpm_schedule(alphas, 500).timesteps.tolist())) == 500  # no repeated timestep up to T/2
    for bad in (0, 501, 2.5):
        with pytest.raises(ValueError, match="num_steps"):
            S.dpm_schedule(alphas, bad)


def test_lms_coefficients_integrate_polynomials_exactly(alphas):
    sigmas = S.klms_schedule(alphas, 25).sigmas
    rng = np.random.default_rng(0)
    for i in (0, 1, 2, 3, 12, 24):
        for order in range(1, min(i + 1, 4) + 1):
            coeffs = S.lms_coefficients(sigmas, i, order)
            # a degree < order polynomial through the nodes is integrated exactly by the LMS weights
            poly = np.polynomial.Polynomial(rng.normal(size=order))
            exact = poly.integ()(float(sigmas[i + 1])) - poly.integ()(float(sigmas[i]))
            approx = sum(c * poly(float(sigmas[i - j])) for j, c in enumerate(coeffs))
            assert approx == pytest.approx(exact, rel=1e-9, abs=1e-12)
    assert S.lms_coefficients(sigmas, 5, 1) == pytest.approx([float(sigmas[6]) - float(sigmas[5])])
    with pytest.raises(ValueError, match="order=3"):
        S.lms_coefficients(sigmas, 1, 3)


# ------------------------------------------------------------------------------------------- PLMS arithmetic
def test_plms_uses_compvis_pseudo_euler_and_adams_bashforth(alphas):
    """With an x-independent model e(t) = p_k * v (k = step index), every PLMS step must be the DDIM
    update with e' = (p0 + p1)/2, (3p1 - p0)/2, (23p2 - 16p1 + 5p0)/12, then
    (55pk - 59pk-1 + 37pk-2 - 9pk-3)/24."""
    steps = 8
    ts = S.ddim_timesteps(steps)[::-1]
    p = torch.randn(steps, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    v = torch.randn(SHAPE, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    calls = []

    def model(x, t, cond):
        k = int(np.nonzero(ts == int(t[0]))[0][0])
        calls.append(k)
        return (p[k] * v).to(torch.float32)

    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(5))
    out = S.plms_sample(model, x_T, None, alphas, steps)
    assert calls == [0, 1] + list(range(1, steps))  # one extra model call (at t_next) in the first step

    a = alphas.double().numpy()
    expected = x_T.double()
    for k in range(steps):
        if k == 0:
            e = (p[0] + p[1]) / 2
        elif k == 1:
            e = (3 * p[1] - p[0]) / 2
        elif k == 2:
            e = (23 * p[2] - 16 * p[1] + 5 * p[0]) / 12
        else:
            e = (55 * p[k] - 59 * p[k - 1] + 37 * p[k - 2] - 9 * p[k - 3]) / 24
        a_t = a[ts[k]]
        a_prev = a[ts[k + 1]] if k + 1 < steps else a[0]
        pred_x0 = (expected - np.sqrt(1 - a_t) * e * v) / np.sqrt(a_t)
        expected = np.sqrt(a_prev) * pred_x0 + np.sqrt(1 - a_prev) * e * v
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------- point-mass data distribution
def exact_eps_model(x0, alphas, calls=None):
    """The exact eps of a data distribution that is the single point x0: (x_t - sqrt(a_t) x0) / sqrt(1 - a_t).
    Integer t index alpha_bar; fractional t (K-LMS) use the sigma linearly interpolated in t."""
    train_sigmas = ((1 - alphas.double()) / alphas.double()).sqrt().numpy()

    def model(x, t, cond):
        if t.dtype == torch.long:
            a_t = alphas.double()[t]
        else:
            sigma = torch.from_numpy(np.interp(t.double().numpy(), np.arange(len(train_sigmas)), train_sigmas))
            a_t = 1.0 / (1.0 + sigma**2)
        a_t = a_t.view(-1, 1, 1, 1)
        return ((x.double() - a_t.sqrt() * x0.double()) / (1 - a_t).sqrt()).to(x.dtype)

    return model


@pytest.mark.parametrize("sampler", ["ddim", "plms"])
def test_ddim_and_plms_are_exact_for_a_point_mass(alphas, sampler):
    x0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2))
    steps_seen, cb = recorder()
    fn = S.ddim_sample if sampler == "ddim" else S.plms_sample
    out = fn(exact_eps_model(x0, alphas), x_T, None, alphas, 25, callback=cb)
    for step in steps_seen:
        torch.testing.assert_close(step["pred_x0"], x0, rtol=0, atol=2e-5)
    # the deterministic trajectory keeps eps_hat = (x_T - sqrt(a_T) x0) / sqrt(1 - a_T) and ends at
    # alpha_bar[0] (CompVis' last step goes to alphas_cumprod[0], not to 1)
    a_T, a_0 = alphas[S.ddim_timesteps(25)[-1]], alphas[0]
    eps_hat = (x_T - a_T.sqrt() * x0) / (1 - a_T).sqrt()
    torch.testing.assert_close(out, a_0.sqrt() * x0 + (1 - a_0).sqrt() * eps_hat, rtol=0, atol=2e-5)


@pytest.mark.parametrize("steps", [100, 7])
def test_klms_is_exact_for_a_point_mass(alphas, steps):
    x0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2))
    x_T = x0 + S.klms_initial_latent(noise, alphas)
    out = S.klms_sample(exact_eps_model(x0, alphas), x_T, None, alphas, steps)
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-4)


@pytest.mark.parametrize("steps", [25, 5])
def test_dpmpp_2m_is_exact_for_a_point_mass(alphas, steps):
    # the data prediction is x0 at every step, so both the first- and the second-order updates keep the exact
    # trajectory x_t = alpha_t x0 + sigma_t eps_hat, and the last step (onto sigma = 0) returns x0
    x0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2))
    steps_seen, cb = recorder()
    out = S.dpmpp_2m_sample(exact_eps_model(x0, alphas), x_T, None, alphas, steps, callback=cb)
    for step in steps_seen:
        torch.testing.assert_close(step["pred_x0"], x0, rtol=0, atol=2e-5)
    torch.testing.assert_close(out, x0, rtol=0, atol=2e-5)


# --------------------------------------------------------------------------------------------------- guidance
def test_cfg_one_batched_call_and_arithmetic(inputs):
    x, cond, uncond = inputs
    t = torch.full((x.shape[0],), 500, dtype=torch.long)
    calls = []

    def model(xx, tt, cc):
        calls.append((xx, tt, cc))
        return toy_eps(xx, tt, cc)

    guided = S.cfg(model, uncond, 4.0)(x, t, cond)
    assert len(calls) == 1
    xx, tt, cc = calls[0]
    assert torch.equal(xx, torch.cat([x, x])) and torch.equal(tt, torch.cat([t, t]))
    assert torch.equal(cc, torch.cat([uncond.expand_as(cond), cond]))  # unconditional half first
    e_u, e_c = toy_eps(x, t, uncond.expand_as(cond)), toy_eps(x, t, cond)
    torch.testing.assert_close(guided, e_u + 4.0 * (e_c - e_u))


def test_cfg_scale_one_or_no_uncond_is_the_conditional_model(inputs):
    x, cond, uncond = inputs
    assert S.cfg(toy_eps, uncond, 1.0) is toy_eps
    assert S.cfg(toy_eps, None, 7.5) is toy_eps
    t = torch.full((x.shape[0],), 10, dtype=torch.long)
    torch.testing.assert_close(S.cfg(toy_eps, uncond, 0.0)(x, t, cond), toy_eps(x, t, uncond.expand_as(cond)))


def test_cfg_dict_conditioning_and_shape_errors(inputs):
    x, cond, uncond = inputs
    t = torch.zeros(x.shape[0], dtype=torch.long)
    model = lambda xx, tt, cc: toy_eps(xx, tt, cc["c_crossattn"][0])
    guided = S.cfg(model, {"c_crossattn": [uncond.expand_as(cond)]}, 2.0)(x, t, {"c_crossattn": [cond]})
    torch.testing.assert_close(guided, S.cfg(toy_eps, uncond, 2.0)(x, t, cond))
    with pytest.raises(ValueError, match="does not match"):
        S.cfg(toy_eps, torch.zeros(3, 3, 5), 2.0)(x, t, cond)


# ------------------------------------------------------------------------------------------ partial schedules
def test_ddim_split_runs_equal_full_run(inputs, alphas):
    x, cond, _ = inputs
    model = S.cfg(toy_eps, inputs[2], 3.0)
    full_steps, cb = recorder()
    full = S.ddim_sample(model, x, cond, alphas, 20, callback=cb)
    first = S.ddim_sample(model, x, cond, alphas, 20, stop_after=7)
    assert torch.equal(first, full_steps[6]["x"])  # stop_after=k returns the latent after k steps
    assert torch.equal(S.ddim_sample(model, first, cond, alphas, 20, start_step=7), full)
    assert torch.equal(S.ddim_sample(model, x, cond, alphas, 20, stop_after=0), x)

    gen = torch.Generator().manual_seed(11)
    full_eta = S.ddim_sample(model, x, cond, alphas, 20, eta=1.0, generator=gen)
    gen = torch.Generator().manual_seed(11)
    part = S.ddim_sample(model, x, cond, alphas, 20, eta=1.0, generator=gen, stop_after=12)
    assert torch.equal(S.ddim_sample(model, part, cond, alphas, 20, eta=1.0, generator=gen, start_step=12), full_eta)

    for bad in (dict(start_step=5, stop_after=4), dict(stop_after=21), dict(start_step=-1)):
        with pytest.raises(ValueError, match="start_step"):
            S.ddim_sample(model, x, cond, alphas, 20, **bad)


@pytest.mark.parametrize("fn", [S.plms_sample, S.klms_sample, S.dpmpp_2m_sample])
def test_multistep_stop_after_returns_intermediate_latent(inputs, alphas, fn):
    x, cond, _ = inputs
    steps_seen, cb = recorder()
    fn(toy_eps, x, cond, alphas, 10, callback=cb)
    assert [s["i"] for s in steps_seen] == list(range(10))
    assert torch.equal(fn(toy_eps, x, cond, alphas, 10, stop_after=5), steps_seen[4]["x"])


def test_compvis_rng_consumes_noise_without_changing_results(inputs, alphas):
    x, cond, _ = inputs
    for fn, draws in ((S.ddim_sample, 10), (S.plms_sample, 11)):
        plain = fn(toy_eps, x, cond, alphas, 10)
        torch.manual_seed(123)
        same = fn(toy_eps, x, cond, alphas, 10, compvis_rng=True)
        after = torch.randn(3)
        torch.manual_seed(123)
        for _ in range(draws):  # CompVis draws one noise tensor per DDIM update (PLMS: two in its first step)
            torch.randn(SHAPE)
        assert torch.equal(same, plain) and torch.equal(after, torch.randn(3))


# ------------------------------------------------------------------------------------ CompVis-style classes
class DummyLDM(torch.nn.Module):
    """The part of LatentDiffusion that the samplers use."""

    def __init__(self):
        super().__init__()
        self.register_buffer("alphas_cumprod", S.make_alphas_cumprod())
        self.num_timesteps = 1000
        self.gain = torch.nn.Parameter(torch.tensor(1.0))
        self.batch_sizes = []

    def apply_model(self, x, t, cond):
        self.batch_sizes.append(x.shape[0])
        return toy_eps(x, t, cond) * self.gain


def test_ddim_sampler_sample_matches_functional(inputs):
    x, cond, uncond = inputs
    model = DummyLDM()
    sampler = DDIMSampler(model)
    seen = []
    samples, inter = sampler.sample(
        S=50,
        batch_size=2,
        shape=SHAPE[1:],
        conditioning=cond,
        callback=seen.append,
        eta=0.0,
        x_T=x,
        verbose=False,
        log_every_t=10,
        unconditional_guidance_scale=5.0,
        unconditional_conditioning=uncond.expand_as(cond),
    )
    with torch.no_grad():
        expected = S.ddim_sample(S.cfg(toy_eps, uncond, 5.0), x, cond, model.alphas_cumprod, 50)
    assert torch.equal(samples, expected)
    assert seen == list(range(50)) and set(model.batch_sizes) == {4}  # guided: one batched call per step
    assert len(inter["x_inter"]) == len(inter["pred_x0"]) == 7  # x_T, index 49, then 40, 30, 20, 10, 0
    assert inter["x_inter"][0] is x and torch.equal(inter["x_inter"][-1], samples)

    np.testing.assert_array_equal(sampler.ddim_timesteps, S.ddim_timesteps(50))
    assert isinstance(sampler.ddim_alphas_prev, np.ndarray) and sampler.ddim_alphas_prev.dtype == np.float64
    assert torch.equal(sampler.ddim_alphas, model.alphas_cumprod[S.ddim_timesteps(50)])
    assert torch.all(sampler.ddim_sigmas == 0)
    assert model_device(model) == torch.device("cpu")


def test_ddim_sampler_draws_x_T_and_eta_noise_like_compvis(inputs):
    _, cond, _ = inputs
    model = DummyLDM()
    torch.manual_seed(42)
    samples, _ = DDIMSampler(model).sample(10, 2, SHAPE[1:], conditioning=cond, eta=0.5, verbose=False)
    torch.manual_seed(42)
    x_T = torch.randn(SHAPE)
    with torch.no_grad():
        expected = S.ddim_sample(model.apply_model, x_T, cond, model.alphas_cumprod, 10, eta=0.5)
    assert torch.equal(samples, expected)


def test_ddim_sampler_rejects_unsupported_options(inputs, caplog):
    x, cond, _ = inputs
    sampler = DDIMSampler(DummyLDM())
    with pytest.raises(NotImplementedError, match="mask"):
        sampler.sample(5, 2, SHAPE[1:], conditioning=cond, x_T=x, mask=torch.ones(SHAPE), verbose=False)
    with pytest.raises(NotImplementedError, match="temperature"):
        sampler.sample(5, 2, SHAPE[1:], conditioning=cond, x_T=x, temperature=0.5, verbose=False)
    with pytest.raises(TypeError, match="till_T"):
        sampler.sample(5, 2, SHAPE[1:], conditioning=cond, x_T=x, till_T=3, verbose=False)
    with caplog.at_level(logging.WARNING):
        sampler.sample(5, 2, SHAPE[1:], conditioning=cond, x_T=x, verbose=False, some_fork_option=1)
    assert "some_fork_option" in caplog.text


def test_ddim_sampler_stop_after_and_img2img(inputs):
    x, cond, _ = inputs
    model = DummyLDM()
    sampler = DDIMSampler(model)
    part, _ = sampler.sample(20, 2, SHAPE[1:], conditioning=cond, x_T=x, verbose=False, stop_after=6)
    with torch.no_grad():
        assert torch.equal(part, S.ddim_sample(model.apply_model, x, cond, model.alphas_cumprod, 20, stop_after=6))
        sampler.make_schedule(20, ddim_eta=0.0, verbose=False)
        noise = torch.randn(SHAPE)
        z = sampler.stochastic_encode(x, torch.tensor([8, 8]), noise=noise)
        a8 = model.alphas_cumprod[S.ddim_timesteps(20)[8]]
        torch.testing.assert_close(z, a8.sqrt() * x + (1 - a8).sqrt() * noise)
        decoded = sampler.decode(z, cond, 8)
        assert torch.equal(decoded, S.ddim_sample(model.apply_model, z, cond, model.alphas_cumprod, 20, start_step=12))
    with pytest.raises(ValueError, match="t_start"):
        sampler.decode(z, cond, 21)


def test_plms_sampler_sample_matches_functional(inputs):
    x, cond, uncond = inputs
    model = DummyLDM()
    sampler = PLMSSampler(model)
    seen = []
    samples, inter = sampler.sample(
        S=20,
        batch_size=2,
        shape=SHAPE[1:],
        conditioning=cond,
        img_callback=lambda pred_x0, i: seen.append(i),
        x_T=x,
        verbose=False,
        unconditional_guidance_scale=7.5,
        unconditional_conditioning=uncond,
    )
    with torch.no_grad():
        expected = S.plms_sample(S.cfg(toy_eps, uncond, 7.5), x, cond, model.alphas_cumprod, 20)
    assert torch.equal(samples, expected)
    assert seen == list(range(20)) and len(model.batch_sizes) == 21
    assert len(inter["x_inter"]) == 3  # x_T, the first step (index 19) and index 0
    with pytest.raises(ValueError, match="ddim_eta must be 0 for PLMS"):
        sampler.sample(20, 2, SHAPE[1:], conditioning=cond, x_T=x, eta=0.5, verbose=False)
