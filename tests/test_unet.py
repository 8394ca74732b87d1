"""The U-Net ε_θ(x_t, t): sizes, dependence on t and on conditioning, padding-invariant cross-attention."""

from dataclasses import replace

import pytest
import torch

from trilemma.errors import TrilemmaError
from trilemma.nets import UNet, UNetConfig, count_parameters, preset
from trilemma.nets.layers import sinusoidal_embedding


def randomise_output(model):
    """Residual branches and the output are zero-initialised (the net starts as a near-identity that
    predicts 0); give every zero weight matrix random values so each input can show its effect."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1 and not p.any():
                p.normal_(std=0.1)
    return model


@pytest.mark.parametrize("size", [28, 32, 64])
@pytest.mark.parametrize("channels", [1, 3])
def test_shapes_round_trip(size, channels):
    model = UNet(preset("tiny", size, channels))
    x = torch.randn(2, channels, size, size)
    assert model(x, torch.tensor([1, 1000])).shape == x.shape


def test_odd_sizes_round_trip_through_every_level():
    config = replace(preset("tiny", 28, 1), channel_mults=(1, 1, 2, 2), attn_resolutions=(7,))
    assert config.resolutions == (28, 14, 7, 4)
    model = UNet(config)
    assert model(torch.randn(1, 1, 28, 28), torch.tensor([5])).shape == (1, 1, 28, 28)


def test_output_depends_on_t():
    model = randomise_output(UNet(preset("tiny", 28, 1))).eval()
    x = torch.randn(2, 1, 28, 28)
    a = model(x, torch.tensor([10, 10]))
    b = model(x, torch.tensor([900, 900]))
    assert (a - b).abs().mean() > 1e-3 * a.abs().mean()
    torch.testing.assert_close(a, model(x, torch.tensor([10, 10])))   # and is a function of (x, t)


def test_sinusoidal_embedding_is_the_transformer_encoding():
    emb = sinusoidal_embedding(torch.tensor([0, 3]), 8)
    torch.testing.assert_close(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    freqs = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(4) / 4)
    torch.testing.assert_close(emb[1], torch.cat([torch.cos(3 * freqs), torch.sin(3 * freqs)]))


def test_zero_init_output_and_base_preset_size():
    model = UNet(preset("tiny", 32, 1))
    assert model(torch.randn(1, 1, 32, 32), torch.tensor([3])).abs().max() == 0
    base = UNet(preset("base", 32, 3))
    # Ho et al. (2020) report 35.7M parameters for their CIFAR-10 model.
    assert abs(count_parameters(base) - 35.7e6) / 35.7e6 < 0.01


def test_class_conditioning_and_null_label():
    config = replace(preset("tiny", 28, 1), num_classes=10)
    model = randomise_output(UNet(config)).eval()
    x, t = torch.randn(3, 1, 28, 28), torch.tensor([50, 50, 50])
    with torch.no_grad():
        torch.nn.init.normal_(model.class_emb.weight)
        a = model(x, t, y=torch.tensor([1, 1, 1]))
        b = model(x, t, y=torch.tensor([7, 7, 7]))
        assert not torch.allclose(a, b)
        torch.testing.assert_close(model(x, t, y=torch.tensor([-1, -1, -1])), model(x, t))


def test_cross_attention_ignores_padding():
    config = replace(preset("tiny", 16, 1), context_dim=12)
    model = randomise_output(UNet(config)).eval()
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([100, 100])
    g = torch.Generator().manual_seed(0)
    context = torch.randn(2, 6, 12, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    with torch.no_grad():
        a = model(x, t, context=context, context_mask=mask)
        changed = context.clone()
        changed[~mask] = torch.randn(int((~mask).sum()), 12, generator=g) * 10   # only padded tokens change
        b = model(x, t, context=changed, context_mask=mask)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        changed[0, 0] += 1.0                                                    # a real token changes
        c = model(x, t, context=changed, context_mask=mask)
        assert not torch.allclose(a[0], c[0], atol=1e-5)
        torch.testing.assert_close(a[1], c[1], atol=1e-5, rtol=1e-5)          # the other sample is untouched


def test_bad_configs_fail_clearly():
    with pytest.raises(TrilemmaError, match="preset"):
        preset("huge", 28, 1)
    with pytest.raises(TrilemmaError):
        UNetConfig(channel_mults=())
