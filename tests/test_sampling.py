from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lesionuq.config import SamplingConfig, UNetConfig
from lesionuq.segmentation import sampling
from lesionuq.segmentation.sampling import dropout_masks, mc_sample, mc_sample_naive
from lesionuq.segmentation.unet import UNet3D
from lesionuq.uncertainty import RunningMoments

MAPS = ("prob", "entropy", "variance", "pcs")


pytestmark = pytest.mark.usefixtures("one_thread")


def _net(channels=(4, 8, 16), norm="instance", seed=0, in_channels=1) -> UNet3D:
    """A tiny net with non-trivial norm parameters (so that every term matters)."""
    torch.manual_seed(seed)
    net = UNet3D(UNetConfig(in_channels=in_channels, channels=channels, norm=norm))
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.InstanceNorm3d | nn.BatchNorm3d):
            m.weight.data = torch.rand(m.weight.shape, generator=g) + 0.5
            m.bias.data = torch.rand(m.bias.shape, generator=g) - 0.5
        if isinstance(m, nn.BatchNorm3d):
            m.running_mean = torch.randn(m.running_mean.shape, generator=g) * 0.1
            m.running_var = torch.rand(m.running_var.shape, generator=g) + 0.5
    return net.eval()


def _image(shape=(24, 20, 17), seed=0, channels=1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(channels, *shape)).astype(np.float32)


def test_masks_are_seeded_channel_scalars():
    net = _net()
    masks = dropout_masks(net, 200, seed=5)
    assert [tuple(m.shape) for m in masks] == [(200, c) for c in (4, 8, 16, 8, 4)]
    values = torch.unique(torch.cat([m.flatten() for m in masks]))
    torch.testing.assert_close(values, torch.tensor([0.0, 1.0 / 0.8]))
    keep = torch.cat([(m > 0).float().flatten() for m in masks]).mean().item()
    assert keep == pytest.approx(0.8, abs=0.02)
    again = dropout_masks(net, 200, seed=5)
    assert all(torch.equal(a, b) for a, b in zip(masks, again, strict=True))
    assert not torch.equal(masks[0], dropout_masks(net, 200, seed=6)[0])
    # sample t's masks do not depend on T (sample-major draw order)
    assert torch.equal(dropout_masks(net, 3, seed=5)[2], masks[2][:3])


@pytest.mark.parametrize(
    ("channels", "norm", "inputs"),
    [((4, 8, 16), "instance", 1), ((4, 8, 16), "batch", 1), ((4,), "instance", 1),
     ((4, 8, 16, 16), "instance", 2)],
)  # fmt: skip
def test_fast_path_equals_naive_path(channels, norm, inputs):
    net = _net(channels, norm, in_channels=inputs)
    img = _image((24, 20, 17) if len(channels) < 4 else (24, 16, 17), channels=inputs)
    cfg = SamplingConfig(n_samples=5, seed=3, precision="fp32")
    ref = mc_sample_naive(net, img, cfg, "cpu")
    fast = mc_sample(net, img, cfg, "cpu")
    assert ref.variance.max() > 1e-4  # the samples really differ
    for name in MAPS:
        np.testing.assert_allclose(getattr(fast, name), getattr(ref, name), atol=1e-5)
    np.testing.assert_array_equal(fast.seg, ref.seg)


def test_naive_path_is_mc_dropout():
    """With a mask of ones only in sample 0, the naive path is the eval-mode network."""
    net = _net()
    img = _image()
    ones = [torch.ones(1, m.shape[1]) for m in dropout_masks(net, 1, 0)]
    maps = mc_sample_naive(net, img, SamplingConfig(n_samples=1), "cpu", masks=ones)
    with torch.no_grad():
        p = torch.softmax(net(torch.as_tensor(img)[None]), 1)[0, 1].numpy()
    np.testing.assert_allclose(maps.prob, p, atol=1e-6)


def test_batched_fast_path_equals_naive():
    """The CUDA code path (batched samples, masks multiplied in), run on CPU."""
    net = _net()
    img = _image()
    masks = dropout_masks(net, 4, seed=1)
    ref = mc_sample_naive(net, img, SamplingConfig(n_samples=4), "cpu", masks=masks)
    fast = sampling._FastMC(net, per_sample=False, channels_last=False)
    with torch.inference_mode():
        x, shape = net.pad(torch.as_tensor(img)[None])
        p = fast.sample(fast.shared(x), masks)[:, : shape[0], : shape[1], : shape[2]]
    maps = RunningMoments().update(p).finalize()
    for name in MAPS:
        np.testing.assert_allclose(getattr(maps, name), getattr(ref, name), atol=1e-5)


def test_sliding_window_fast_equals_naive():
    net = _net()
    img = _image((24, 20, 20))
    cfg = SamplingConfig(n_samples=3, batch_size=2, seed=0, roi_size=(16, 16, 16), precision="fp32")
    ref = mc_sample_naive(net, img, cfg, "cpu")
    fast = mc_sample(net, img, cfg, "cpu")
    for name in MAPS:
        np.testing.assert_allclose(getattr(fast, name), getattr(ref, name), atol=1e-5)


def test_seed_determinism_and_t1():
    net = _net()
    img = _image()
    a = mc_sample(net, img, SamplingConfig(n_samples=4, seed=0), "cpu")
    b = mc_sample(net, img, SamplingConfig(n_samples=4, seed=0), "cpu")
    c = mc_sample(net, img, SamplingConfig(n_samples=4, seed=1), "cpu")
    for name in MAPS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert np.abs(a.variance - c.variance).max() > 1e-4
    one = mc_sample(net, img, SamplingConfig(n_samples=1, seed=0), "cpu")
    np.testing.assert_array_equal(one.variance, 0.0)
    assert a.prob.shape == (24, 20, 17) and a.n_samples == 4


def test_composed_up_kernel_is_exact():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 6, 5, 4, 3, generator=g, dtype=torch.float64)
    wt = torch.randn(6, 3, 2, 2, 2, generator=g, dtype=torch.float64)
    w = torch.randn(2, 3, 3, 3, 3, generator=g, dtype=torch.float64)
    ref = F.conv3d(F.conv_transpose3d(x, wt, stride=2), w, padding=1)
    wc = sampling._compose_up_kernel(wt, w)
    assert wc.shape == (6, 2, 4, 4, 4)
    got = F.conv_transpose3d(x, wc, stride=2, padding=1)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-10)


def test_rejects_non_binary_network():
    net = UNet3D(UNetConfig(channels=(4,), out_channels=3))
    with pytest.raises(ValueError, match="2-class"):
        mc_sample(net, _image((8, 8, 8)), SamplingConfig(n_samples=1), "cpu")


@pytest.mark.parametrize(("p", "channels"), [(0.0, (4, 8, 16)), (0.7, (2, 4, 8))])
def test_fast_path_with_no_or_heavy_dropout(p, channels):
    """p = 0.7 on 2-8 channels drops whole layers in some samples (empty kept sets)."""
    torch.manual_seed(0)
    net = UNet3D(UNetConfig(channels=channels, dropout=p)).eval()
    masks = dropout_masks(net, 8, seed=0)
    assert (p == 0) == (sum(int((m.sum(1) == 0).sum()) for m in masks) == 0)
    img = _image((16, 16, 16))
    cfg = SamplingConfig(n_samples=8, seed=0, precision="fp32")
    ref = mc_sample_naive(net, img, cfg, "cpu")
    fast = mc_sample(net, img, cfg, "cpu")
    for name in MAPS:
        np.testing.assert_allclose(getattr(fast, name), getattr(ref, name), atol=1e-5)


# ----------------------------------------------------------------------------- precision


def test_precision_selection(monkeypatch):
    """auto = bf16 only where the CPU has native bf16 units; fp32/bf16 force either."""
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(sampling, "bf16_native", lambda: False)
    assert sampling.sampling_dtype("auto", cpu) == torch.float32
    assert sampling.sampling_dtype("bf16", cpu) == torch.bfloat16
    assert sampling.sampling_dtype("fp32", cpu) == torch.float32
    monkeypatch.setattr(sampling, "bf16_native", lambda: True)
    assert sampling.sampling_dtype("auto", cpu) == torch.bfloat16
    assert sampling.sampling_dtype("fp32", cpu) == torch.float32
    # CUDA: float16 autocast by default, bf16 on request, float32 without AMP
    assert sampling.sampling_dtype("auto", cuda) == torch.float16
    assert sampling.sampling_dtype("bf16", cuda) == torch.bfloat16
    assert sampling.sampling_dtype("auto", cuda, amp=False) == torch.float32
    with pytest.raises(ValueError, match="precision"):
        sampling.sampling_dtype("fp16", cpu)


def test_auto_precision_without_bf16_is_exact_fp32(monkeypatch):
    """On a CPU without native bf16, the default config gives the float32 maps bit for bit."""
    monkeypatch.setattr(sampling, "bf16_native", lambda: False)
    net, img = _net(), _image()
    auto = mc_sample(net, img, SamplingConfig(n_samples=3, seed=2), "cpu")
    fp32 = mc_sample(net, img, SamplingConfig(n_samples=3, seed=2, precision="fp32"), "cpu")
    for name in MAPS:
        np.testing.assert_array_equal(getattr(auto, name), getattr(fp32, name))


def test_bf16_maps_close_to_fp32():
    """bf16 (8-bit mantissa) maps vs fp32 with the same masks: stated tolerance 0.05 on
    every probability (measured ~1e-2 here), 0.02 on the mean, and a different
    segmentation only where the fp32 probability is within 0.05 of the 0.5 threshold."""
    net, img = _net(), _image()
    cfg = SamplingConfig(n_samples=4, seed=1, precision="fp32")
    ref = mc_sample(net, img, cfg, "cpu")
    bf = mc_sample(net, img, SamplingConfig(n_samples=4, seed=1, precision="bf16"), "cpu")
    assert bf.prob.dtype == np.float32
    diff = np.abs(bf.prob - ref.prob)
    assert diff.max() < 0.05 and diff.mean() < 0.02
    assert diff.max() > 0.0  # really computed in bf16
    changed = (bf.prob > 0.5) != (ref.prob > 0.5)
    assert np.all(np.abs(ref.prob[changed] - 0.5) < 0.05)
    np.testing.assert_allclose(bf.variance, ref.variance, atol=0.02)


def test_forced_bf16_without_onednn_bf16_uses_pytorch_kernel(monkeypatch):
    """On a CPU whose oneDNN has no bfloat16 kernels (AVX2 only), ``precision: bf16`` runs
    on PyTorch's own convolution (it used to fail in ``mkldnn_convolution``): the maps stay
    within the bf16 tolerance of float32 (0.05) and really differ from them (bf16 ran)."""
    net, img = _net(), _image()
    monkeypatch.setattr(sampling, "_onednn_bf16", lambda: False)
    cfg = SamplingConfig(n_samples=3, seed=4, precision="bf16")
    slow = mc_sample(net, img, cfg, "cpu")
    ref = mc_sample(net, img, SamplingConfig(n_samples=3, seed=4, precision="fp32"), "cpu")
    diff = np.abs(slow.prob - ref.prob)
    assert 0.0 < diff.max() < 0.05
