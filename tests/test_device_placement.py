"""Device placement and mixed precision on a simulated CUDA device, without a GPU.

Most first runs on a GPU fail on a tensor made on the wrong device (a schedule buffer, noise, an index, a
generator) or on a float/half mismatch under autocast. These tests run the forward paths of the stack — text
encoder, UNet, autoencoder, every sampler, the erasure hooks, the losses, record application, the two-device
hand-off — with every parameter and input on ``cuda``, on a machine that has no GPU.

How: a simulated device rather than ``FakeTensorMode`` or ``meta``. Those carry shapes, not values, so they stop
at every legitimate host read that GPU code does — ``.item()``, ``float(loss)``, the sampler schedules computed
from ``alphas_cumprod.to("cpu")`` with numpy — and a ``torch.Generator("cuda")`` cannot be built without a driver.
Here every "cuda" tensor is a :class:`SimTensor`: a wrapper subclass that reports ``device='cuda:N'`` and holds a
real CPU tensor. :class:`SimulatedCuda`, a ``TorchDispatchMode``, sees every aten call, applies the CUDA backend's
device rules and raises as it would (all tensor arguments on one device, except 0-dim CPU scalars, CPU index
tensors for indexing, and copies; a generator of the result's device type; no ``.numpy()`` of a device tensor),
then runs the op on the CPU and wraps the result on its device. Values are real, so the results are compared
with the same model on the CPU. Autocast is the real thing: the wrappers carry the CUDA dispatch keys, so
``torch.autocast("cuda", ...)`` applies CUDA's own op lists (its availability checks are patched for the test).

Limits: no backward (the autograd engine needs a real device, so training is checked up to the loss), gradient
checkpointing is switched off (it saves the CUDA RNG state), kernels are the CPU ones, and the process-wide
"CUDA initialised" flag stays set once the first test ran (no real CUDA call is possible here anyway).
"""

from __future__ import annotations

import contextlib
import copy

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

CUDA = torch.device("cuda", 0)
CUDA1 = torch.device("cuda", 1)
HALF_DTYPES = [torch.bfloat16, torch.float16]

# Ops whose tensor arguments may sit on different devices on a real GPU.
_COPIES = {"_to_copy", "copy_", "_copy_from", "_copy_from_and_resize", "lift_fresh", "lift_fresh_copy"}
# Advanced indexing accepts CPU index tensors for device tensors (they are moved).
_INDEXING = {"index", "index_put", "index_put_", "_index_put_impl_", "_unsafe_index", "_unsafe_index_put"}


def _device(d) -> torch.device:
    d = torch.device(d)
    return torch.device("cuda", 0) if d.type == "cuda" and d.index is None else d


class SimTensor(torch.Tensor):
    """A real CPU tensor (``elem``) presented as a tensor of a simulated CUDA device."""

    elem: torch.Tensor

    @staticmethod
    def __new__(cls, elem: torch.Tensor, device: torch.device):
        r = torch.Tensor._make_wrapper_subclass(
            cls,
            elem.shape,
            strides=elem.stride(),
            storage_offset=elem.storage_offset(),
            dtype=elem.dtype,
            layout=elem.layout,
            device=device,
            requires_grad=elem.requires_grad,
        )
        r.elem = elem.detach()
        return r

    def numpy(self, *, force: bool = False):
        raise TypeError(f"can't convert {self.device} device type tensor to numpy. Use Tensor.cpu() first.")

    def tolist(self):
        return self.elem.tolist()

    def __repr__(self) -> str:
        return f"SimTensor(device={self.device}, {self.elem!r})"

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return _dispatch(func, args, kwargs or {})


class SimGenerator(torch.Generator):
    """``torch.Generator(device)`` that accepts the simulated device: a CPU generator reporting that device.

    Aten calls receive a plain ``torch.Generator`` (the Python subclass is lost on the way), so
    :class:`GeneratorDevices` notes the device of the generator of the current torch call for the checks."""

    def __new__(cls, device="cpu"):
        gen = super().__new__(cls, "cpu")
        gen.sim_device = _device(device)
        return gen

    def __init__(self, device="cpu"):
        pass

    @property
    def device(self) -> torch.device:
        return self.sim_device


_generator_devices: list[torch.device] = []  # device of the generator passed to the torch call under way


class GeneratorDevices(TorchFunctionMode):
    """Notes the (simulated) device of a ``generator=`` argument while its torch call runs."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        generator = kwargs.get("generator")
        if generator is None:
            return func(*args, **kwargs)
        _generator_devices.append(_device(generator.device))
        try:
            return func(*args, **kwargs)
        finally:
            _generator_devices.pop()


def _leaves(obj):
    """The leaves of aten arguments (nested tuples, lists and dicts)."""
    if isinstance(obj, (tuple, list)):
        for o in obj:
            yield from _leaves(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _leaves(o)
    else:
        yield obj


def _map(fn, obj):
    if isinstance(obj, (tuple, list)):
        return type(obj)(_map(fn, o) for o in obj)
    if isinstance(obj, dict):
        return {k: _map(fn, v) for k, v in obj.items()}
    return fn(obj)


def _tensor_device(t: torch.Tensor) -> torch.device:
    return t.device if isinstance(t, SimTensor) else _device(t.device)


def _check_devices(func, args, kwargs) -> torch.device:
    """The CUDA backend's device rules for one aten call; returns the device of the result."""
    name = func.overloadpacket.__name__
    explicit = kwargs.get("device")
    explicit = None if explicit is None else _device(explicit)
    if name in _COPIES:
        return explicit or _tensor_device(args[0])
    checked = args[:1] + args[2:] if name in _INDEXING else args
    tensors = [a for a in _leaves((checked, kwargs)) if isinstance(a, torch.Tensor)]
    devices = []
    for t in tensors:
        d = _tensor_device(t)
        if not (t.dim() == 0 and d.type == "cpu") and d not in devices:  # CPU scalars go with any device
            devices.append(d)
    if len(devices) > 1:
        raise RuntimeError(
            f"Expected all tensors to be on the same device, but found at least two devices, {devices[0]} and "
            f"{devices[1]}! (when checking arguments of {func})"
        )
    result = explicit or (devices[0] if devices else (_tensor_device(tensors[0]) if tensors else torch.device("cpu")))
    if kwargs.get("generator") is not None:
        generator = _generator_devices[-1] if _generator_devices else _device(kwargs["generator"].device)
        if generator.type != result.type:
            raise RuntimeError(f"Expected a '{result.type}' device type for generator but found '{generator.type}'")
    return result


def _dispatch(func, args, kwargs):
    result_device = _check_devices(func, args, kwargs)
    wrappers = {id(a.elem): a for a in _leaves((args, kwargs)) if isinstance(a, SimTensor)}
    if kwargs.get("device") is not None:
        kwargs = dict(kwargs, device="cpu") if _device(kwargs["device"]).type == "cuda" else kwargs

    def unwrap(a):
        return a.elem if isinstance(a, SimTensor) else a

    out = func(*_map(unwrap, args), **_map(unwrap, kwargs))
    if result_device.type != "cuda":
        return out

    def wrap(o):
        if not isinstance(o, torch.Tensor):
            return o
        if id(o) in wrappers:  # an in-place op returns its own argument
            return wrappers[id(o)]
        return SimTensor(o, result_device)

    return _map(wrap, out)


class SimulatedCuda(TorchDispatchMode):
    """Routes every aten call (factories with ``device='cuda'`` included) through the device checks."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return _dispatch(func, args, kwargs or {})


@contextlib.contextmanager
def simulated_cuda():
    """The simulated device: lazy CUDA initialisation and autocast's availability checks patched out,
    ``torch.Generator`` accepting ``'cuda'``, ``module.to('cuda')`` swapping parameters for wrappers."""
    swap = torch.__future__.get_swap_module_params_on_conversion()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.cuda, "_lazy_init", lambda: None)
        mp.setattr(torch.cuda.amp.common, "amp_definitely_not_available", lambda: False)
        mp.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
        mp.setattr(torch, "Generator", SimGenerator)
        if hasattr(torch._C, "_ensureCUDADeviceGuardSet"):
            torch._C._ensureCUDADeviceGuardSet()
        torch.__future__.set_swap_module_params_on_conversion(True)
        lift_cpu = torch._C._only_lift_cpu_tensors()
        torch._C._set_only_lift_cpu_tensors(True)  # torch.tensor(data, device=...) copies through the mode
        try:
            with GeneratorDevices(), SimulatedCuda():
                yield
        finally:
            torch._C._set_only_lift_cpu_tensors(lift_cpu)
            torch.__future__.set_swap_module_params_on_conversion(swap)


def on_device(model: torch.nn.Module, device: torch.device = CUDA) -> torch.nn.Module:
    """A copy of ``model`` on the simulated ``device`` (gradient checkpointing off: see the module docstring)."""
    model = copy.deepcopy(model)
    unet = getattr(getattr(model, "model", None), "diffusion_model", None)
    if unet is not None:
        unet.set_gradient_checkpointing(False)
    with simulated_cuda():
        return model.to(device)


def assert_on(device: torch.device, *tensors: torch.Tensor) -> None:
    for t in tensors:
        assert isinstance(t, SimTensor) and t.device == device, f"tensor on {t.device}, expected {device}"


def host(t: torch.Tensor) -> torch.Tensor:
    """The CPU values of a (simulated) device tensor."""
    return t.elem if isinstance(t, SimTensor) else t


def assert_same(device_result: torch.Tensor, cpu_result: torch.Tensor, atol: float = 1e-5) -> None:
    torch.testing.assert_close(host(device_result), cpu_result, atol=atol, rtol=1e-4)


# ------------------------------------------------------------------------------------------- the harness itself
def test_planted_device_bugs_are_caught():
    """Proof that the checks have teeth: typical first-run CUDA bugs raise here as on a GPU."""

    def adds_cpu_tensor(x):
        return x + torch.ones(3)  # no device=: a CPU tensor

    def numpy_of_device_tensor(x):
        return np.asarray(x) * 2

    def noise_from_device_generator(x):
        return torch.randn(x.shape, generator=torch.Generator(x.device))  # noise made on the CPU

    def indexes_with_wrong_device(x, i):
        return x.gather(0, i)

    def mixes_two_gpus(x):
        return x + torch.ones(3, device="cuda:1")

    with simulated_cuda():
        x = torch.zeros(3, device="cuda")
        with pytest.raises(RuntimeError, match="same device, but found at least two devices, cuda:0 and cpu"):
            adds_cpu_tensor(x)
        with pytest.raises(TypeError, match="numpy"):
            numpy_of_device_tensor(x)
        with pytest.raises(RuntimeError, match="'cpu' device type for generator but found 'cuda'"):
            noise_from_device_generator(x)
        with pytest.raises(RuntimeError, match="same device"):
            indexes_with_wrong_device(x, torch.tensor([0, 1]))
        with pytest.raises(RuntimeError, match="cuda:0 and cuda:1"):
            mixes_two_gpus(x)
        with pytest.raises(RuntimeError, match="same dtype"):  # a float/half mismatch outside autocast
            torch.mm(torch.ones(2, 2, device="cuda").half(), torch.ones(2, 2, device="cuda"))


def test_legitimate_gpu_code_passes():
    """What real CUDA allows stays allowed (no false alarms): CPU scalars, CPU indices, copies, host reads."""
    with simulated_cuda():
        x = torch.arange(6.0, device="cuda")
        assert_on(CUDA, x, x * torch.tensor(2.0), x[torch.tensor([0, 2])], x.clone(), x.view(2, 3))
        y = x.to("cuda:1")
        assert_on(CUDA1, y, y + 1)
        assert float(x.sum()) == 15.0 and x.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
        assert x.cpu().numpy().sum() == 15.0 and type(x.cpu()) is torch.Tensor
        z = torch.empty(6)
        z.copy_(x)
        x.add_(1)
        assert_on(CUDA, x)
        assert z.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0] and host(x).tolist()[0] == 1.0
        g = torch.Generator("cuda").manual_seed(0)
        assert_on(CUDA, torch.randn(2, generator=g, device="cuda"))


# ------------------------------------------------------------------------------------------------- the ldm stack
@pytest.fixture(scope="module")
def gpu_model(compvis_tiny_model):
    """The CompVis tiny model (float32) on the simulated ``cuda:0``."""
    return on_device(compvis_tiny_model)


@pytest.fixture
def sim():
    with simulated_cuda(), torch.no_grad():
        yield


def to_cuda(*tensors: torch.Tensor, device: torch.device = CUDA):
    out = [t.to(device) for t in tensors]
    return out[0] if len(out) == 1 else out


def test_every_parameter_and_buffer_moves(gpu_model, sim):
    for name, t in [*gpu_model.named_parameters(), *gpu_model.named_buffers()]:
        assert isinstance(t, SimTensor) and t.device == CUDA, name
    assert gpu_model.device == CUDA and gpu_model.cond_stage_model.device == CUDA


def test_text_encoder_tokens_follow_the_module(gpu_model, golden, sim):
    cond = gpu_model.get_learned_conditioning(golden["prompts"])
    assert_on(CUDA, cond)
    assert_same(cond, golden["cond"], atol=1e-4)


def test_unet_and_ddpm_helpers(gpu_model, golden, sim):
    x, t, cond = to_cuda(golden["x_noisy"], golden["t"], golden["cond"])
    eps = gpu_model.apply_model(x, t, cond)
    assert_on(CUDA, eps)
    assert_same(eps, golden["eps"], atol=1e-4)
    z, qt, noise = to_cuda(golden["z"], golden["q_t"], golden["q_noise"])
    assert_same(gpu_model.q_sample(z, qt, noise=noise), golden["q_sample"], atol=1e-4)
    assert_on(CUDA, gpu_model.q_sample(z, qt), gpu_model.predict_start_from_noise(z, qt, noise))
    loss, log = gpu_model.p_losses(z, cond[:2], qt)  # noise drawn on the device; logvar indexed there
    assert_on(CUDA, loss, *log.values())


def test_autoencoder_encode_sample_decode(gpu_model, golden, sim):
    posterior = gpu_model.encode_first_stage(golden["image"].to(CUDA))
    assert_same(posterior.mean, golden["posterior_mean"], atol=1e-4)
    z = gpu_model.get_first_stage_encoding(posterior, generator=torch.Generator("cuda").manual_seed(0))
    assert_on(CUDA, z, gpu_model.get_first_stage_encoding(posterior), posterior.kl(), posterior.nll(z))
    decoded = gpu_model.decode_first_stage(golden["z"].to(CUDA))
    assert_on(CUDA, decoded)
    assert_same(decoded, golden["decoded"], atol=1e-4)


def test_compvis_ddim_sampler(gpu_model, golden, sim):
    from ldm.models.diffusion.ddim import DDIMSampler

    c = gpu_model.get_learned_conditioning(["a painting of Van Gogh"])
    uc = gpu_model.get_learned_conditioning([""])
    guided = dict(conditioning=c, batch_size=1, shape=[4, 8, 8], verbose=False, unconditional_conditioning=uc)
    sampler = DDIMSampler(gpu_model)
    x_T = golden["ddim_xT"].to(CUDA)
    samples, inter = sampler.sample(
        golden["ddim_S"], **guided, unconditional_guidance_scale=golden["ddim_scale"], x_T=x_T
    )
    assert_on(CUDA, samples, *inter["x_inter"], *inter["pred_x0"])
    assert_same(samples, golden["ddim_samples"], atol=1e-4)
    assert_on(CUDA, sampler.ddim_alphas, sampler.ddim_sigmas, sampler.ddim_sqrt_one_minus_alphas)
    drawn, _ = sampler.sample(4, conditioning=c, batch_size=1, shape=[4, 8, 8], verbose=False, eta=1.0)
    partial, _ = sampler.sample(4, **guided, eta=0.5, start_step=1, stop_after=2, x_T=x_T)  # ESD's "until t"
    assert_on(CUDA, drawn, partial)
    t = torch.full((1,), 1, dtype=torch.long, device="cuda")
    noisy = sampler.stochastic_encode(samples, t)
    assert_on(CUDA, noisy, sampler.stochastic_encode(samples, t, use_original_steps=True))
    assert_on(CUDA, sampler.decode(noisy, c, 2, 3.0, uc))


def test_plms_klms_dpmpp_and_guidance_wrapper_match_cpu(gpu_model, compvis_tiny_model, sim):
    """The functional samplers with the cfg wrapper give on the device what they give on the CPU."""
    from ldm.models.diffusion.plms import PLMSSampler
    from ldm.models.diffusion.sampling import (
        cfg,
        ddim_sample,
        dpmpp_2m_sample,
        klms_initial_latent,
        klms_sample,
        plms_sample,
    )

    c = gpu_model.get_learned_conditioning(["Picasso", "Picasso"])
    uc = gpu_model.get_learned_conditioning([""])  # a batch of 1, broadcast by cfg
    samples, _ = PLMSSampler(gpu_model).sample(
        4,
        conditioning=c,
        batch_size=2,
        shape=[4, 8, 8],
        verbose=False,
        unconditional_guidance_scale=3.0,
        unconditional_conditioning=uc,
    )
    assert_on(CUDA, samples)
    x_t = torch.randn(2, 4, 8, 8, generator=torch.Generator("cuda").manual_seed(1), device="cuda")
    runs = {
        "ddim": lambda m, x, a: ddim_sample(m, x, host_or(c, x), a, 4, eta=1.0, generator=gen(x, 2), stop_after=2),
        "plms": lambda m, x, a: plms_sample(m, x, host_or(c, x), a, 4, start_step=2),
        "klms": lambda m, x, a: klms_sample(m, klms_initial_latent(x, a), host_or(c, x), a, 4, stop_after=3),
        "dpmpp_2m": lambda m, x, a: dpmpp_2m_sample(m, x, host_or(c, x), a, 4),
    }
    for name, run in runs.items():
        out = run(cfg(gpu_model.apply_model, uc, 7.5), x_t, gpu_model.alphas_cumprod)
        assert_on(CUDA, out)
        cpu = compvis_tiny_model
        ref = run(cfg(cpu.apply_model, host(uc), 7.5), host(x_t), cpu.alphas_cumprod)
        torch.testing.assert_close(host(out), ref, atol=1e-4, rtol=1e-4, msg=lambda m, name=name: f"{name}: {m}")


def gen(x: torch.Tensor, seed: int) -> torch.Generator:
    """A generator on ``x``'s device (the simulated one's draws equal the CPU's: same kernels)."""
    return torch.Generator(x.device).manual_seed(seed)


def host_or(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``t`` as it is on the device, or its CPU values when ``like`` is a CPU tensor."""
    return t if isinstance(like, SimTensor) else host(t)


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=["bf16", "fp16"])
def test_autocast_forward_and_sampling(gpu_model, golden, sim, dtype):
    """Under CUDA autocast the networks compute in 16 bit (no float/half mismatch anywhere) while the sampler
    arithmetic and its latents stay float32, as CompVis' ``--precision autocast``."""
    from ldm.models.diffusion.sampling import cfg, ddim_sample, klms_initial_latent, klms_sample, plms_sample

    with torch.autocast("cuda", dtype=dtype):
        c = gpu_model.get_learned_conditioning(["Picasso"])
        uc = gpu_model.get_learned_conditioning([""])
        x, t = to_cuda(golden["x_noisy"][2:], golden["t"][2:])  # golden row 2 is "Picasso"
        eps = gpu_model.apply_model(x, t, c)
        assert eps.dtype == dtype
        posterior = gpu_model.encode_first_stage(golden["image"][:1, :, :16, :16].to(CUDA))  # small: CPU fp16 convs
        z = gpu_model.get_first_stage_encoding(posterior)
        image = gpu_model.decode_first_stage(z)
        assert_on(CUDA, c, eps, z, image)
        guided = cfg(gpu_model.apply_model, uc, 7.5)
        a = gpu_model.alphas_cumprod
        for out in (
            ddim_sample(guided, x, c, a, 2, eta=1.0),
            plms_sample(guided, x, c, a, 2),
            klms_sample(guided, klms_initial_latent(x, a), c, a, 2),
        ):
            assert_on(CUDA, out)
            assert out.dtype == torch.float32 and torch.isfinite(host(out)).all()
    # the 16-bit result is the float32 one up to 16-bit round-off
    assert_same(eps.float(), golden["eps"][2:], atol=0.03)


# --------------------------------------------------------------------------------------- erasure on the device
WIDE_CONCEPTS = ["VanGogh", "Picasso"]


@pytest.fixture(scope="module")
def wide_cpu(wide_ckpt):
    from sepce.modeling import load_model

    return load_model(wide_ckpt.parent / "config.yaml", wide_ckpt)


@pytest.fixture(scope="module")
def wide_gpu(wide_cpu):
    return on_device(wide_cpu)


@pytest.fixture(scope="module")
def wide_gpu1(wide_cpu):
    """A second copy on ``cuda:1`` (the frozen original of the released two-device layout)."""
    return on_device(wide_cpu, CUDA1)


@pytest.fixture
def inputs(wide_gpu):
    """Embeddings of "" and the concepts, and a noisy latent with its timestep, on ``cuda:0``."""
    with simulated_cuda(), torch.no_grad():
        prompts = ["", *WIDE_CONCEPTS]
        emb = wide_gpu.get_learned_conditioning(prompts)
        x = torch.randn(1, 4, 8, 8, generator=gen(emb, 0), device="cuda")
        t = torch.tensor([500], device="cuda")
    return {p: emb[i : i + 1] for i, p in enumerate(prompts)}, x, t


def increments_for(model, emb, seed: int = 0):
    """SepCE increments of both concepts on ``model`` with random (not zero) coefficients."""
    from sepce.increments import SeparableIncrements, basic_solution_sets

    sets = basic_solution_sets({c: emb[c] for c in WIDE_CONCEPTS}, {"": emb[""]})
    inc = SeparableIncrements(model, beta=1.0)
    g = torch.Generator().manual_seed(seed)
    for c in WIDE_CONCEPTS:
        for a in inc.add(c, sets[c].basis).values():
            with torch.no_grad():
                a.copy_(torch.randn(a.shape, generator=g) * 0.5)  # CPU values into device tensors
    return inc


def test_separable_increments_and_records(wide_gpu, wide_cpu, inputs, sim):
    """SepCE's hooks on attn2 k/v, merged deltas, leakage and records: on the device, equal to the CPU."""
    from sepce import records
    from sepce.increments import SeparableIncrements

    emb, x, t = inputs
    inc = increments_for(wide_gpu, emb)
    assert_on(CUDA, *inc.bases.values(), *inc.parameters(), *inc.deltas().values())
    ctx = torch.cat([emb["VanGogh"], emb["Picasso"], emb[""]])
    xs, ts = x.expand(3, -1, -1, -1), t.expand(3)
    with inc.using(["VanGogh"]):
        erased = wide_gpu.apply_model(xs, ts, ctx)
        leak = inc.leakage("VanGogh", {"": emb[""], "Picasso": emb["Picasso"]})
    base = wide_gpu.apply_model(xs, ts, ctx)
    assert_on(CUDA, erased, base)
    assert leak < 1e-4
    assert_same(erased[1:], host(base[1:]))  # separability: Picasso and "" unchanged
    assert not torch.allclose(host(erased[0]), host(base[0]))

    record = inc.to_record({"sha256": "test"})
    assert all(type(a) is torch.Tensor for c in record.coefs.values() for a in c.values())  # saved from the CPU
    cpu_inc = SeparableIncrements.from_record(wide_cpu, record)
    try:
        with cpu_inc.using(["VanGogh"]):
            assert_same(erased, wide_cpu.apply_model(host(xs), host(ts), host(ctx)), atol=1e-4)
    finally:
        cpu_inc.close()
    inc.close()
    originals = records.apply_record(wide_gpu, record, erase=["VanGogh"])  # merged weights written on the device
    try:
        assert_on(CUDA, *originals.values())
        assert_same(wide_gpu.apply_model(xs, ts, ctx), host(erased), atol=1e-4)
        plain = records.ErasureRecord("CiE", ["VanGogh"], {}, tensors={k: v.cpu() * 0 for k, v in originals.items()})
        records.apply_record(wide_gpu, plain, base=originals)  # a replaced-tensor record: CPU values copied in
        assert_on(CUDA, *(p for n, p in wide_gpu.named_parameters() if n in originals))
    finally:
        records.restore(wide_gpu, originals)
    assert_same(wide_gpu.apply_model(xs, ts, ctx), host(base))


def test_fmn_attention_capture(wide_gpu, wide_cpu, inputs, sim):
    from sepce.methods.fmn import fmn_loss
    from sepce.modeling import attn2_modules

    emb, x, t = inputs
    loss = fmn_loss(wide_gpu, x, t, emb["VanGogh"], emb[""], attn2_modules(wide_gpu))
    assert_on(CUDA, loss)
    cpu = fmn_loss(wide_cpu, host(x), host(t), host(emb["VanGogh"]), host(emb[""]), attn2_modules(wide_cpu))
    assert_same(loss, cpu, atol=1e-6)
    inc = increments_for(wide_gpu, emb)  # keys as the forward forms them: with the active increments
    try:
        with inc.using(WIDE_CONCEPTS):
            assert_on(CUDA, fmn_loss(wide_gpu, x, t, emb["VanGogh"], emb[""], attn2_modules(wide_gpu)))
            for dtype in HALF_DTYPES:
                with torch.autocast("cuda", dtype=dtype):
                    loss = fmn_loss(wide_gpu, x, t, emb["VanGogh"], emb[""], attn2_modules(wide_gpu))
                assert_on(CUDA, loss)
                assert torch.isfinite(host(loss))
    finally:
        inc.close()


def test_losses_with_the_frozen_original_on_a_second_device(wide_gpu, wide_gpu1, inputs, sim):
    """The released two-device layout: trained model on cuda:0, frozen original on cuda:1; every loss ends on
    cuda:0 (the reference's outputs come back to the trained model's device)."""
    from sepce.methods.ablation import ablating_loss
    from sepce.methods.cie import cie_objective
    from sepce.methods.esd import esd_loss, esd_sample_till_t
    from sepce.training import FrozenReference

    emb, x, t = inputs
    trained = {n: p for n, p in wide_gpu.named_parameters() if "attn2" in n}
    for reference in (FrozenReference.copy(wide_gpu1, trained), FrozenReference.substituted(wide_gpu, trained)):
        assert_on(CUDA, *reference.originals.values())
        cond = torch.cat([emb["VanGogh"], emb[""]])
        assert_on(CUDA, reference(x.expand(2, -1, -1, -1), t.expand(2), cond))
        loss, d, reg = cie_objective(wide_gpu, reference, x, t, cond, trained, reference.originals, 3e-5)
        assert_on(CUDA, loss, d, reg)
        z = esd_sample_till_t(wide_gpu, x, emb["VanGogh"], emb[""], t_enc=2, ddim_steps=4, start_guidance=3.0)
        e_0, e_p = reference(z, t, emb[""]), reference(z, t, emb["VanGogh"])
        e_n = wide_gpu.apply_model(z, t, emb["VanGogh"])
        e_pn, e_p0 = e_n, wide_gpu.apply_model(x, t, emb[""])
        assert_on(CUDA, z, esd_loss(e_n, e_0, e_p, 1.0), *ablating_loss(e_pn, e_p0, reference(x, t, emb[""])))


# ------------------------------------------------------------------------------------ training and generation
@pytest.fixture(scope="module")
def image_folders(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for c in WIDE_CONCEPTS:
        (root / c).mkdir()
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (72, 80, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def training_session(ckpt, data_dir, output_dir, precision: str, devices=(CUDA, CUDA1)):
    """A real :class:`~sepce.training.TrainingSession` of the tiny wide model on the simulated devices."""
    from sepce.training import TrainingSession, TrainingSettings

    settings = TrainingSettings(
        lr=1e-5,
        iterations=3,
        devices=tuple(devices),
        ckpt_path=ckpt,
        config_path=ckpt.parent / "config.yaml",
        data_dir=data_dir,
        output_dir=output_dir,
        ddim_steps=4,
        image_size=16,  # small: the autoencoder's 16-bit convolutions run on the CPU here
        gradient_checkpointing=False,
        precision=precision,
        progress=False,
    )
    return TrainingSession(settings, "SepCE", WIDE_CONCEPTS)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_training_steps_on_two_devices(wide_ckpt, image_folders, tmp_path, precision):
    """A training session on ``--devices 0,1`` up to the loss (backward needs a real GPU): the common step
    (image, posterior sample, timestep, forward noise), CiE's objective with the original copied to cuda:1, and
    SepCE's joint and one-at-a-time steps (original = increments switched off), each under the trainer's
    autocast; every loss on cuda:0 and finite."""
    from sepce.increments import SeparableIncrements, basic_solution_sets
    from sepce.methods.cie import cie_objective
    from sepce.methods.sepce import ConceptDirections, JointTraining, SequentialTraining
    from sepce.training import FrozenReference, select_parameters

    session = training_session(wide_ckpt, image_folders, tmp_path / "run", precision)  # checks files: host only
    with simulated_cuda():
        model = session.load_model()
        assert_on(CUDA, *model.parameters())
        _, t = session.timesteps()
        z = session.latent("VanGogh")
        x = session.noisy(z, t)
        assert_on(CUDA, t, z, x)
        with torch.no_grad():
            emb = {
                p: e[None] for p, e in zip(["", *WIDE_CONCEPTS], model.get_learned_conditioning(["", *WIDE_CONCEPTS]))
            }
        cond = torch.cat([emb["VanGogh"], emb[""]])

        trained = select_parameters(model, "attn2")
        reference = session.frozen_reference(model, trained)
        assert reference.kind == f"copy on {CUDA1}"
        trainer = session.trainer(trained)
        with trainer.autocast():
            loss, d, reg = cie_objective(model, reference, x, t, cond, trained, reference.originals, 3e-5)
        assert_on(CUDA, loss, d, reg)
        assert torch.isfinite(host(loss)) and loss.requires_grad
        for p in trained.values():
            p.requires_grad_(False)

        sets = basic_solution_sets({c: emb[c] for c in WIDE_CONCEPTS}, {"": emb[""]})
        inc = SeparableIncrements(model, 1e-4)
        for c in WIDE_CONCEPTS:
            inc.add(c, sets[c].basis)
        frozen = FrozenReference.switched_off(model, inc.disabled)  # SepCE's one-copy original
        directions = ConceptDirections(session, model, frozen, emb)
        joint = JointTraining(inc, WIDE_CONCEPTS, [0.0, 0.0], 3, 3e-5, directions)
        one_at_a_time = SequentialTraining(inc, WIDE_CONCEPTS, [0.0, 0.0], 3, 3e-5, directions)
        trainer = session.trainer(inc.parameters())
        try:
            inc.activate(WIDE_CONCEPTS)
            with trainer.autocast():
                steps = [joint.step(0)]
            inc.activate(["Picasso"])
            with trainer.autocast():
                steps.append(one_at_a_time._step("Picasso")(1))
        finally:
            inc.close()
        for step in steps:
            assert_on(CUDA, step.loss)
            assert torch.isfinite(host(step.loss)) and step.loss.requires_grad
            assert all(isinstance(v, (int, float, str)) for v in step.values.values())


@pytest.mark.parametrize("dtype", [torch.float32, *HALF_DTYPES], ids=["fp32", "bf16", "fp16"])
def test_image_sampler(gpu_model, compvis_tiny_model, sim, dtype):
    """generate-images' sampler: CPU start noise (the seed scheme), text encoder/UNet/decoder under autocast,
    float32 latents, uint8 images back on the host; fp32 gives the CPU's images."""
    from sepce.generation import ImageSampler, SamplingSettings, case_noise

    size = 64 if dtype == torch.float32 else 16  # 16-bit convolutions are slow on the CPU that runs them here
    settings = SamplingSettings(sampler="klms", steps=2, guidance_scale=7.5, image_size=size)
    noise = case_noise(0, 2, (4, size // 8, size // 8))
    sampler = ImageSampler(gpu_model, settings, CUDA, dtype)
    latents = sampler.sample_latents(["Picasso", "Picasso"], noise)
    assert_on(CUDA, latents)
    assert latents.dtype == torch.float32
    images = sampler.decode(latents)
    assert isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.shape == (2, size, size, 3)
    if dtype == torch.float32:
        cpu = ImageSampler(compvis_tiny_model, settings, torch.device("cpu"))(["Picasso", "Picasso"], noise)
        assert np.abs(images.astype(int) - cpu.astype(int)).max() <= 1


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=["bf16", "fp16"])
def test_image_sampler_with_16bit_weights(gpu_model, sim, dtype):
    """What generate-images runs for --precision fp16/bf16: the networks' weights cast to 16 bit and run natively
    (sepce.modeling.networks_to; no autocast), the schedule buffers still float32, no float/half mismatch anywhere
    (outside autocast the simulated device raises on one), float32 latents."""
    from sepce.generation import ImageSampler, SamplingSettings, case_noise
    from sepce.modeling import NETWORKS, networks_to

    model = networks_to(copy.deepcopy(gpu_model), dtype)
    assert model.alphas_cumprod.dtype == torch.float32 and gpu_model.alphas_cumprod.dtype == torch.float32
    for name in NETWORKS:
        assert {p.dtype for p in getattr(model, name).parameters()} == {dtype}, name
    settings = SamplingSettings(sampler="ddim", steps=2, guidance_scale=7.5, image_size=16)
    sampler = ImageSampler(model, settings, CUDA, dtype)
    assert sampler.native and not torch.is_autocast_enabled("cuda")
    latents = sampler.sample_latents(["Picasso", "a cat"], case_noise(0, 2, sampler.latent_shape))
    assert_on(CUDA, latents)
    assert latents.dtype == torch.float32 and bool(torch.isfinite(latents.elem).all())
    images = sampler.decode(latents)
    assert images.dtype == np.uint8 and images.shape == (2, 16, 16, 3)
