"""The fused CPU kernel SiLU(GroupNorm(x)·(1 + s) + b) (trilemma/nets/kernels, docs/methods.md §5.7).

Checked against PyTorch's own GroupNorm, SiLU and autograd: values and every gradient (x, γ, β, the
per-sample scale and shift), float32 and bf16, odd widths and sizes; that threads do not change a
bit; that NaN and extreme inputs behave; that the U-Net gives the same values and gradients with the
kernel and without it; and that a missing or broken compiler, or TRILEMMA_KERNELS=0, only turns it off.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from trilemma.nets import UNet, kernels, preset
from trilemma.nets.kernels import fused_norm_silu

CL = torch.channels_last
HAVE_CC = bool(os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc"))
needs_kernel = pytest.mark.skipif(not kernels.available(), reason="no C compiler: the fused kernels are off")


def test_the_kernel_builds_wherever_a_c_compiler_is_installed():
    if os.environ.get("TRILEMMA_KERNELS", "1") == "0":
        pytest.skip("switched off by TRILEMMA_KERNELS=0")
    assert kernels.available() == HAVE_CC


def reference(x, weight, bias, scale, shift, groups, eps):
    """The plain layers, in float32 (bf16 input widened, the result rounded once)."""
    h = F.group_norm(x.float(), groups, weight, bias, eps)
    if scale is not None:
        h = h * (1 + scale.float()) + shift.float()
    return F.silu(h).to(x.dtype)


def inputs(N, C, H, W, groups, dtype, scale_shift, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (2 * torch.randn(N, C, H, W, generator=g) + 0.5).to(dtype).contiguous(memory_format=CL).requires_grad_(True)
    weight = (1 + 0.5 * torch.randn(C, generator=g)).requires_grad_(True)
    bias = torch.randn(C, generator=g).requires_grad_(True)
    scale = shift = None
    if scale_shift:
        scale = (0.3 * torch.randn(N, C, 1, 1, generator=g)).requires_grad_(True)
        shift = (0.3 * torch.randn(N, C, 1, 1, generator=g)).requires_grad_(True)
    return x, weight, bias, scale, shift


SHAPES = [(4, 32, 8, 8, 8), (3, 64, 5, 7, 16), (2, 96, 16, 16, 24), (1, 12, 3, 3, 3), (5, 16, 1, 1, 4)]


@needs_kernel
@pytest.mark.parametrize("scale_shift", [False, True])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_float32_values_and_gradients_match_pytorch(shape, scale_shift):
    N, C, H, W, G = shape
    x, weight, bias, scale, shift = inputs(N, C, H, W, G, torch.float32, scale_shift)
    leaves = [v for v in (x, weight, bias, scale, shift) if v is not None]
    y = fused_norm_silu(x, weight, bias, scale, shift, G, 1e-6)
    assert y.dtype == torch.float32 and y.is_contiguous(memory_format=CL)
    y_ref = reference(x, weight, bias, scale, shift, G, 1e-6)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(3))
    got = torch.autograd.grad(y, leaves, dy)
    want = torch.autograd.grad(y_ref, leaves, dy)
    for name, a, b in zip(["x", "weight", "bias", "scale", "shift"], got, want):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()), msg=name)


@needs_kernel
@pytest.mark.parametrize("scale_shift", [False, True])
def test_bf16_is_the_float32_computation_rounded_once(scale_shift):
    """bf16 in, bf16 out: the kernel widens x, computes in float32 and rounds the result once."""
    x, weight, bias, scale, shift = inputs(4, 64, 8, 8, 16, torch.bfloat16, scale_shift)
    y = fused_norm_silu(x, weight, bias, scale, shift, 16, 1e-6)
    assert y.dtype == torch.bfloat16
    exact = reference(x.detach().float().contiguous(memory_format=CL), weight, bias, scale, shift, 16, 1e-6)
    # one rounding to bf16 (8 significant bits): within half an ulp of the float32 result, plus float noise
    assert ((y.float() - exact).abs() <= exact.abs() * 2.0 ** -8 + 1e-6).all()
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16)
    leaves = [v for v in (x, weight, bias, scale, shift) if v is not None]
    got = torch.autograd.grad(y, leaves, dy)
    want = torch.autograd.grad(reference(x, weight, bias, scale, shift, 16, 1e-6), leaves, dy)
    assert got[0].dtype == torch.bfloat16 and got[1].dtype == torch.float32
    for a, b in zip(got, want):
        torch.testing.assert_close(a.float(), b.float(), rtol=3e-2, atol=3e-2 * float(b.float().abs().max()))


@needs_kernel
def test_bf16_scale_and_shift_from_autocast_get_bf16_gradients():
    x, weight, bias, scale, shift = inputs(2, 32, 4, 4, 8, torch.bfloat16, True)
    s16 = scale.detach().to(torch.bfloat16).requires_grad_(True)
    b16 = shift.detach().to(torch.bfloat16).requires_grad_(True)
    y = fused_norm_silu(x, weight, bias, s16, b16, 8, 1e-6)
    gs, gb = torch.autograd.grad(y.float().sum(), (s16, b16))
    assert gs.dtype == gb.dtype == torch.bfloat16 and gs.shape == s16.shape


@needs_kernel
def test_threads_do_not_change_a_bit():
    x, weight, bias, scale, shift = inputs(6, 32, 8, 8, 8, torch.float32, True)
    dy = torch.randn(6, 32, 8, 8).contiguous(memory_format=CL)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            y = fused_norm_silu(x, weight, bias, scale, shift, 8, 1e-6)
            results.append((y, *torch.autograd.grad(y, (x, weight, bias, scale, shift), dy)))
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*results):
        assert torch.equal(a, b)


@needs_kernel
def test_nan_propagates_and_extreme_inputs_stay_finite():
    x = torch.zeros(2, 16, 4, 4).contiguous(memory_format=CL)
    x[0, 0, 0, 0] = float("nan")
    x[1] = torch.linspace(-1, 1, 16 * 16).reshape(16, 4, 4)
    weight, bias = torch.full((16,), 500.0), torch.zeros(16)          # u reaches about ±870
    y = fused_norm_silu(x, weight, bias, None, None, 4, 1e-6)
    assert torch.isnan(y[0, :4]).all()                                  # the NaN's group
    assert torch.isfinite(y[1]).all()
    torch.testing.assert_close(y[1], reference(x[1:], weight, bias, None, None, 4, 1e-6)[0], rtol=1e-4, atol=1e-4)


@needs_kernel
def test_a_second_derivative_is_refused():
    x, weight, bias, _, _ = inputs(2, 16, 4, 4, 4, torch.float32, False)
    (g,) = torch.autograd.grad(fused_norm_silu(x, weight, bias, None, None, 4, 1e-6).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError):
        g.sum().backward()


def test_supports_only_channels_last_float_cpu_input_of_an_affine_norm():
    norm = torch.nn.GroupNorm(4, 16)
    x = torch.randn(2, 16, 4, 4)
    assert not kernels.supports(x, norm)                                             # NCHW
    assert kernels.supports(x.contiguous(memory_format=CL), norm) == kernels.available()
    assert not kernels.supports(x.double().contiguous(memory_format=CL), norm)
    assert not kernels.supports(x.contiguous(memory_format=CL), torch.nn.GroupNorm(4, 16, affine=False))


def unet_case():
    net = UNet(preset("tiny", 16, 1))
    x, t = torch.randn(3, 1, 16, 16), torch.tensor([1, 500, 999])
    return net, lambda: net(x, t)


def autoencoder_case():
    from trilemma.autoencoder.config import preset as ae_preset
    from trilemma.autoencoder.networks import Autoencoder

    ae = Autoencoder(ae_preset("tiny", 16, 1, factor=4))
    x = torch.randn(3, 1, 16, 16)
    return ae, lambda: ae.decode(ae.encode(x)[0])


def ddgan_generator_case():
    """Its adaptive GroupNorm (γ = 1, β = 0, per-sample scale and shift from [e_t, w]) runs in the kernel too."""
    from trilemma.ddgan.config import preset as ddgan_preset
    from trilemma.ddgan.networks import DDGANGenerator

    G = DDGANGenerator(ddgan_preset("tiny", 16, 1), z_dim=8)
    x, z, t = torch.randn(3, 1, 16, 16), torch.randn(3, 8), torch.tensor([1, 2, 4])
    return G, lambda: G(x, z, t)


@needs_kernel
@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", [unet_case, autoencoder_case, ddgan_generator_case], ids=lambda c: c.__name__[:-5])
def test_networks_give_the_same_values_and_gradients_with_and_without_the_kernel(monkeypatch, case, bf16):
    torch.manual_seed(0)
    model, forward = case()
    with torch.no_grad():
        for p in model.parameters():                   # the zero-initialised layers too
            p.add_(0.05 * torch.randn(p.shape))

    def run(bf16=bf16):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            y = forward()
        y.float().square().mean().backward()
        return y.detach().float(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    calls = []
    real = kernels.fused_norm_silu
    monkeypatch.setattr(kernels, "fused_norm_silu", lambda *a: calls.append(1) or real(*a))
    y_k, g_k = run()
    assert calls, "the network did not use the kernel"
    assert y_k.is_contiguous()                                      # NCHW out, as before
    monkeypatch.setattr(kernels, "supports_input", lambda *a: False)
    monkeypatch.setattr(kernels, "supports", lambda *a: False)
    y_p, g_p = run()
    tol = 5e-2 if bf16 else 1e-4
    torch.testing.assert_close(y_k, y_p, rtol=tol, atol=tol * float(y_p.abs().max()))
    assert g_k.keys() == g_p.keys()
    if not bf16:
        for name in g_p:
            scale = float(g_p[name].abs().max()) + 1e-12
            torch.testing.assert_close(g_k[name], g_p[name], rtol=tol, atol=tol * scale, msg=name)
        return
    # bf16: both paths round, differently, and PyTorch's own bf16 gradients depend on the CPU (on an
    # AVX2-only AMD EPYC a GroupNorm weight's was 7% of its largest value off the fp32 one, the
    # kernel's 2.6%). So each is measured against the fp32 gradients (PyTorch's path): the kernel's
    # error must stay within 10% of the gradient's scale, or within 1.5× PyTorch's own bf16 error.
    _, g_ref = run(bf16=False)
    for name in g_ref:
        scale = float(g_ref[name].abs().max()) + 1e-12
        err_k = float((g_k[name] - g_ref[name]).abs().max()) / scale
        err_p = float((g_p[name] - g_ref[name]).abs().max()) / scale
        assert err_k <= max(0.1, 1.5 * err_p), (name, err_k, err_p)


@pytest.mark.parametrize("env", [{"TRILEMMA_KERNELS": "0"}, {"CC": "/bin/false"}, {"TRILEMMA_CACHE": "FILE"}],
                         ids=["switched-off", "broken-cc", "cache-not-a-folder"])
def test_without_a_working_compiler_the_kernel_is_off_and_the_unet_still_trains(tmp_path, env):
    if env.get("TRILEMMA_CACHE") == "FILE":
        (tmp_path / "a-file").write_text("not a folder")
        env = {"TRILEMMA_CACHE": str(tmp_path / "a-file")}
    code = ("import torch; from trilemma.nets import kernels, UNet, preset\n"
            "net = UNet(preset('tiny', 16, 1)); y = net(torch.randn(2, 1, 16, 16), torch.tensor([1, 2]))\n"
            "y.square().mean().backward(); print(kernels.available())")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TRILEMMA_CACHE": str(tmp_path / "cache"), **env})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "False"
