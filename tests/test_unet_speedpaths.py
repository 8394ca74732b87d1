"""The U-Net's speed paths compute the same function as the plain formulas.

channels-last activations on the CPU, the upsampling as one transposed convolution, GroupNorm and
attention in fp32/matmuls under bf16 autocast: each is checked against a straightforward NCHW
reference (values and gradients), and the parameters, state dict and weight files stay as before.
"""

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trilemma.nets import UNet, preset
from trilemma.nets.layers import (
    GroupNorm,
    ResBlock,
    SelfAttention,
    Upsample,
    attention,
    group_norm,
    norm_silu,
    sinusoidal_embedding,
    upsample2x_conv3x3,
)
from trilemma.run import load_weights, save_weights

CL = torch.channels_last


def randomised(model: nn.Module) -> nn.Module:
    """Give the zero-initialised layers random weights, so that every branch shows in the output."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model


# --------------------------------------------------------------------------- a plain NCHW reference

def ref_group_norm(norm: nn.GroupNorm, x):
    return F.group_norm(x.contiguous(), norm.num_groups, norm.weight, norm.bias, norm.eps)


def ref_resblock(b: ResBlock, x, emb):
    h = b.conv1(F.silu(ref_group_norm(b.norm1, x)))
    e = b.emb_proj(F.silu(emb))[:, :, None, None]
    if b.scale_shift:
        scale, shift = e.chunk(2, dim=1)
        h = ref_group_norm(b.norm2, h) * (1 + scale) + shift
    else:
        h = ref_group_norm(b.norm2, h + e)
    return b.skip(x) + b.conv2(F.silu(h))


def ref_self_attention(a: SelfAttention, x):
    B, C, H, W = x.shape
    tokens = ref_group_norm(a.norm, x).reshape(B, C, H * W).transpose(1, 2)
    q, k, v = (z.reshape(B, H * W, a.num_heads, -1).transpose(1, 2)
               for z in F.linear(tokens, a.qkv.weight.flatten(1), a.qkv.bias).chunk(3, dim=2))
    h = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, H * W, C)
    h = F.linear(h, a.proj.weight.flatten(1), a.proj.bias)
    return x + h.transpose(1, 2).reshape(B, C, H, W)


def ref_unet(m: UNet, x, t):
    """UNet.forward as it was written before the speed paths: NCHW, interpolate + conv, SDPA."""
    emb = m.embed(t, None)
    h = m.conv_in(x.contiguous())
    skips = [h]
    for level, blocks in enumerate(m.down):
        for res_block, attn in blocks:
            h = ref_resblock(res_block, h, emb)
            if not isinstance(attn, nn.Identity):
                h = ref_self_attention(attn, h)
            skips.append(h)
        if level < len(m.downsample):
            h = m.downsample[level](h)
            skips.append(h)
    h = ref_resblock(m.mid2, ref_self_attention(m.mid_attn, ref_resblock(m.mid1, h, emb)), emb)
    for level, blocks in enumerate(m.up):
        for res_block, attn in blocks:
            h = ref_resblock(res_block, torch.cat([h, skips.pop()], dim=1), emb)
            if not isinstance(attn, nn.Identity):
                h = ref_self_attention(attn, h)
        if level < len(m.upsample):
            h = m.upsample[level].conv(F.interpolate(h, size=skips[-1].shape[-2:], mode="nearest"))
    return m.conv_out(F.silu(ref_group_norm(m.norm_out, h)))


# --------------------------------------------------------------------------- the layers

@pytest.mark.parametrize("size", [(7, 6), (4, 4), (1, 3)])
def test_upsample_as_one_transposed_conv_is_nearest_then_conv(size):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, *size, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(3, 5, 3, 3, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, generator=g, requires_grad=True)
    fast = upsample2x_conv3x3(x, w, b)
    ref = F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), w, b, padding=1)
    torch.testing.assert_close(fast, ref, rtol=1e-12, atol=1e-12)
    grad = torch.randn(ref.shape, dtype=torch.float64, generator=g)
    for a, r in zip(torch.autograd.grad(fast, (x, w, b), grad), torch.autograd.grad(ref, (x, w, b), grad)):
        torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-12)


def test_upsample_to_an_odd_size_still_interpolates():
    up = Upsample(4).double()
    x = torch.randn(1, 4, 4, 4, dtype=torch.float64)
    for size in [(7, 7), (8, 7), (8, 8)]:
        ref = up.conv(F.interpolate(x, size=size, mode="nearest"))
        torch.testing.assert_close(up(x, size=size), ref)


def test_bf16_attention_is_softmax_qk_v_with_mask():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, n, 8, generator=g) for n in (5, 6, 6))
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])[:, None, None, :]
    scores = (q @ k.transpose(-1, -2) / 8 ** 0.5).masked_fill(~mask, float("-inf"))
    exact = scores.softmax(-1) @ v
    torch.testing.assert_close(attention(q, k, v, attn_mask=mask), exact)      # fp32: PyTorch's SDPA
    low = attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), attn_mask=mask)  # bf16: the two matmuls
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), exact, rtol=0.05, atol=0.03)
    # padded keys get no weight at all: changing them changes nothing
    v2 = v.clone()
    v2[1, :, 4:] = 100.0
    torch.testing.assert_close(attention(q.bfloat16(), k.bfloat16(), v2.bfloat16(), attn_mask=mask), low)


def test_group_norm_keeps_its_parameters_and_normalises_bf16_in_fp32():
    norm = group_norm(32)
    assert isinstance(norm, nn.GroupNorm) and isinstance(norm, GroupNorm)
    assert set(norm.state_dict()) == set(nn.GroupNorm(8, 32).state_dict()) == {"weight", "bias"}
    with torch.no_grad():
        norm.weight.normal_(), norm.bias.normal_()
    x = torch.randn(2, 32, 5, 5).to(memory_format=CL)
    exact = F.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps)
    torch.testing.assert_close(norm(x), exact)
    low = norm(x.bfloat16())
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), F.group_norm(x.bfloat16().float(), norm.num_groups, norm.weight,
                                                         norm.bias, norm.eps).bfloat16().float())
    scale, shift = torch.randn(2, 2, 32, 1, 1).unbind(0)
    torch.testing.assert_close(norm_silu(norm, x, scale, shift), F.silu(exact * (1 + scale) + shift))


# --------------------------------------------------------------------------- the whole U-Net

def test_unet_equals_the_plain_nchw_computation_with_gradients():
    model = randomised(UNet(preset("tiny", 16, 3)))                     # attention at 8×8, one upsample
    assert model.config.resolutions == (16, 8) and len(model.upsample) == 1
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(3, 3, 16, 16, generator=g), torch.tensor([1, 500, 1000])
    grad = torch.randn(x.shape, generator=g)

    out = model(x, t)
    assert out.is_contiguous()
    fast = torch.autograd.grad(out, list(model.parameters()), grad)
    ref_out = ref_unet(model, x, t)
    ref = torch.autograd.grad(ref_out, list(model.parameters()), grad)
    torch.testing.assert_close(out, ref_out, rtol=1e-4, atol=1e-5)
    for (name, _), a, r in zip(model.named_parameters(), fast, ref):
        # fp32 sums in another order: errors ~1e-6 of the gradient's own scale
        assert (a - r).abs().max() <= 1e-5 * r.abs().max() + 1e-8, name


def test_every_convolution_sees_channels_last_activations_on_the_cpu():
    model = UNet(preset("small", 32, 1))
    seen = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and module is not model.conv_in:
            module.register_forward_pre_hook(lambda m, inp: seen.append(inp[0].is_contiguous(memory_format=CL)))
    for bf16 in (False, True):
        seen.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            model(torch.randn(2, 1, 32, 32), torch.tensor([3, 4]))
        assert seen and all(seen), f"bf16={bf16}: {seen.count(False)} of {len(seen)} convolutions got NCHW input"


def test_parameters_state_dict_and_weight_files_are_unchanged_by_training(tmp_path):
    """Only activations change layout: parameters, gradients and optimiser state stay contiguous
    NCHW, so state-dict keys and values, and weight files written before, load both ways."""
    torch.manual_seed(0)
    model = UNet(preset("tiny", 16, 1))
    keys = list(model.state_dict())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, t = torch.randn(4, 1, 16, 16), torch.tensor([1, 2, 3, 4])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, t)
    F.mse_loss(out.float(), torch.randn(x.shape)).backward()
    opt.step()
    assert list(model.state_dict()) == keys
    assert all(p.is_contiguous() and p.grad.is_contiguous() for p in model.parameters())
    assert all(s.is_contiguous() for state in opt.state.values() for s in state.values())

    save_weights(tmp_path / "model.safetensors", model, step=1)
    torch.manual_seed(1)
    other = UNet(preset("tiny", 16, 1))
    assert load_weights(tmp_path / "model.safetensors", other) == 1
    for (k, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), k
    model.eval(), other.eval()
    with torch.no_grad():
        torch.testing.assert_close(other(x, t), model(x, t), rtol=0, atol=0)


def test_a_training_step_is_bit_for_bit_repeatable():
    def run():
        torch.manual_seed(0)
        model = randomised(UNet(replace(preset("tiny", 16, 1), dropout=0.1)))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        g = torch.Generator().manual_seed(0)
        for _ in range(2):
            x = torch.randn(4, 1, 16, 16, generator=g)
            opt.zero_grad()
            F.mse_loss(model(x, torch.tensor([1, 10, 100, 1000])), torch.randn(x.shape, generator=g)).backward()
            opt.step()
        return [p.detach().clone() for p in model.parameters()]
    for a, b in zip(run(), run()):
        assert torch.equal(a, b)


def test_bf16_autocast_stays_close_to_fp32():
    model = randomised(UNet(preset("tiny", 16, 1))).eval()
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([5, 900])
    with torch.no_grad():
        exact = model(x, t)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x, t)
    assert low.shape == exact.shape
    assert (low.float() - exact).norm() / exact.norm() < 0.05


def test_sinusoidal_embedding_unchanged():
    # the embedding is untouched by the speed paths; a spot value guards accidental edits
    torch.testing.assert_close(sinusoidal_embedding(torch.tensor([0]), 4), torch.tensor([[1.0, 1.0, 0.0, 0.0]]))
