"""The image UNet (nets/unet.py): shapes, exact parameter counts, conditioning, channels_last."""

from __future__ import annotations

import pytest
import torch

from multistep.nets.unet import UNet

pytestmark = pytest.mark.usefixtures("one_thread_module")


UNET_CASES = [  # (kwargs, exact parameter count) from tiny to small
    (dict(base_ch=4, ch_mult=(1,), time_dim=8), 2777),
    (dict(base_ch=4, ch_mult=(1, 1), time_dim=8), 4589),
    (dict(base_ch=8, ch_mult=(1, 2), time_dim=16), 40745),
    (dict(base_ch=8, ch_mult=(1, 2), time_dim=16, num_classes=10), 40745 + 11 * 32),
    (dict(base_ch=8, ch_mult=(1, 2), time_dim=16, attn_resolutions=(4,)), None),
    (
        dict(
            base_ch=8,
            ch_mult=(1, 2, 2),
            num_res_blocks=2,
            attn_resolutions=(8, 4),
            resolution=16,
            in_ch=3,
            num_classes=10,
            dropout=0.1,
        ),
        None,
    ),
]


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _randomise(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():  # undo the zero init so outputs depend on every input
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return net.eval()


@pytest.mark.parametrize("kw,count", UNET_CASES)
def test_unet_shapes_counts_conditioning_channels_last(kw, count):
    torch.manual_seed(0)
    net = UNet(**kw)
    if count is not None:
        assert n_params(net) == count
    res, c = kw.get("resolution", 8), kw.get("in_ch", 1)
    z, t = torch.randn(5, c, res, res), torch.rand(5)
    assert torch.equal(net(z, t), torch.zeros_like(z))  # zero-initialised output layer: v = 0 at init
    _randomise(net)
    v = net(z, t)
    assert v.shape == z.shape and v.dtype == torch.float32 and torch.isfinite(v).all()
    assert not torch.allclose(v, net(z, (t + 0.3) % 1))  # depends on t
    net_cl = net.to(memory_format=torch.channels_last)
    assert torch.allclose(net_cl(z.to(memory_format=torch.channels_last), t), v, atol=1e-5)
    if kw.get("num_classes"):
        y = torch.arange(5) % 10
        assert not torch.allclose(net(z, t, y), net(z, t, (y + 1) % 10))  # depends on the label
        assert torch.equal(net(z, t), net(z, t, torch.full((5,), net.null_class)))  # y=None is the null class


def test_unet_sizes_attention_and_conditioning_parameters():
    base = dict(base_ch=8, ch_mult=(1, 2), time_dim=16)
    plain, attn = UNet(**base), UNet(**base, attn_resolutions=(4,))
    # attention at 4x4 (16 channels): 1 down + 2 up blocks + middle, each GN(32) + qkv(16*48+48) + proj(16*16+16)
    assert n_params(attn) - n_params(plain) == 4 * (32 + 16 * 48 + 48 + 16 * 16 + 16)
    assert n_params(UNet(**base, attn_resolutions=(2,))) == n_params(plain)  # a resolution never reached adds nothing
    assert 2000 < n_params(UNet(base_ch=4, ch_mult=(1,), time_dim=8)) < 5000  # a few thousand parameters on 8x8
    with pytest.raises(ValueError, match="not divisible"):
        UNet(resolution=6, ch_mult=(1, 2, 2))
