from __future__ import annotations

import pytest
import torch
from torch import nn

from lesionuq.config import UNetConfig
from lesionuq.segmentation.unet import UNet3D, enable_mc_dropout


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: OpenMP threads only contend on a busy machine
    yield
    torch.set_num_threads(n)


def _net(**kw) -> UNet3D:
    torch.manual_seed(0)
    return UNet3D(UNetConfig(channels=(4, 8, 16), **kw))


def test_output_shape_any_input_size():
    net = _net(in_channels=2).eval()
    with torch.no_grad():
        out = net(torch.randn(2, 2, 20, 18, 17))
    assert out.shape == (2, 2, 20, 18, 17)
    assert net.divisor == 4


def test_one_dropout3d_per_block_at_its_end():
    net = _net(dropout=0.3)
    blocks = list(net.encoders) + list(net.decoders)
    assert len(net.encoders) == 3 and len(net.decoders) == 2
    all_drop = [m for m in net.modules() if isinstance(m, nn.Dropout | nn.Dropout3d)]
    assert len(all_drop) == len(blocks) == 5
    assert all(type(m) is nn.Dropout3d and m.p == 0.3 for m in all_drop)
    assert net.dropout_layers() == [b.dropout for b in blocks]
    for block in blocks:
        drops = [m for m in block.modules() if isinstance(m, nn.Dropout3d)]
        assert drops == [list(block.children())[-1]]

    # execution order: within every block, the dropout is the last leaf module to run
    order: list[nn.Module] = []
    leaves = [m for m in net.modules() if not list(m.children())]
    handles = [m.register_forward_hook(lambda m, i, o: order.append(m)) for m in leaves]
    with torch.no_grad():
        net.eval()(torch.randn(1, 1, 8, 8, 8))
    for h in handles:
        h.remove()
    for block in blocks:
        inside = set(block.modules())
        ran = [m for m in order if m in inside]
        assert ran[-1] is block.dropout and ran.count(block.dropout) == 1
    assert order[-1] is net.head.conv.conv  # nothing but the 1x1 head after the last dropout


def test_mc_mode_keeps_norm_in_eval_and_dropout_stochastic():
    net = _net(norm="batch")
    net.train()
    enable_mc_dropout(net)
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm3d)]
    assert norms and not any(m.training for m in norms)
    assert all(m.training for m in net.dropout_layers())
    before = [m.running_mean.clone() for m in norms]
    x = torch.randn(1, 1, 12, 12, 12)
    with torch.no_grad():
        a, b = net(x), net(x)
    assert not torch.allclose(a, b)  # dropout active
    for m, r in zip(norms, before, strict=True):
        torch.testing.assert_close(m.running_mean, r, rtol=0, atol=0)  # eval: stats untouched
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(net(x), net(x), rtol=0, atol=0)


def test_rejects_bad_dropout():
    with pytest.raises(ValueError, match="dropout"):
        UNet3D(UNetConfig(dropout=1.0))
