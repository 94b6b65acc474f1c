r"""Monte Carlo dropout sampling: T stochastic passes of a :class:`UNet3D`, streamed.

Every sample t uses one ``Dropout3d`` mask per dropout layer k: a vector
:math:`m^{(t)}_k \in \{0, 1/(1-p)\}^{C_k}` (one scalar per channel, constant over space).
The masks of all T samples are drawn up front from ``torch.Generator().manual_seed(seed)``
in a fixed order (:func:`dropout_masks`), so any two implementations given the same seed
compute the same T networks and their maps can be compared exactly.

:func:`mc_sample_naive` is the reference: T separate batch-1 passes of the model's own
``forward`` (normalisation in eval mode, the dropout output multiplied by the mask).
:func:`mc_sample` gives the same maps much faster, using that the masks are per-channel
scalars:

1. Everything before the first dropout (encoder block 0 at full resolution) is computed
   once. Max pooling commutes with a non-negative per-channel scale, so the pooled
   tensor is shared too.
2. A convolution is linear in its input channels: :math:`W * (m \odot x) = \sum_c m_c
   W_c * x_c`. For the two convolutions that read the *shared* dropped tensor (first
   convolution of encoder 1, skip half of the last decoder's first convolution)
   :math:`W * x` is computed once and each sample only subtracts the convolution of its
   dropped channels (about p = 20 % of the work).
3. Every other convolution after a dropout only reads the sample's kept channels (the
   weights are sliced and pre-scaled by 1/(1-p)), and every block computes only the
   output channels its own dropout keeps (the others are multiplied by zero wherever
   they are used, and instance/batch norm is per channel): a fraction p less work.
4. In each decoder the 2x2x2 stride-2 transposed convolution followed by the 3x3x3
   convolution of its output is one 4x4x4 stride-2 transposed convolution (the kernels
   are composed once), which needs 8 instead of 8 + 27 multiply-accumulates per
   (input, output) channel pair and fine voxel.
5. The head only needs :math:`p(1|v) = \sigma(l_1 - l_0)`: one output channel.
6. On CPU: channels-last 3D memory layout, oneDNN called directly (PyTorch's heuristic
   sends small 3-D convolutions to a slow kernel), in-place fused instance norm +
   LeakyReLU, ``torch.inference_mode``. On CUDA: ``cfg.batch_size`` samples per
   batched pass (masks multiplied in, steps 1 and 4 only) under ``torch.autocast``
   (float16).
7. Precision (``cfg.precision``): on a CPU with native bfloat16 units (AVX512-BF16 or
   AMX, :func:`bf16_native`) ``"auto"`` runs the activations and convolutions in
   bfloat16 (weights kept in float32 and cast per call, normalisation statistics
   summed in float32, the 1-channel head in float32); float32 elsewhere. The float32
   path is the exact reference; the bfloat16 maps differ from it by rounding (see
   ``benchmarks/mc_sampling.py`` for the measured differences).

Steps 2-3 differ per sample, so on CPU the samples run one after the other through the
sample-dependent part (batching gives CPU convolutions nothing, skipping channels does);
``cfg.batch_size`` then only sets how many samples share one sliding-window sweep. On
CUDA samples are batched. Results are streamed into :class:`RunningMoments`, so no more
than ``cfg.batch_size`` full-volume samples exist at any time. Note that oneDNN pads
channel counts to multiples of 8 on AVX2, so skipped channels save less time than MACs.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference
from torch import nn

from lesionuq.config import SamplingConfig
from lesionuq.segmentation.unet import UNet3D
from lesionuq.uncertainty import RunningMoments, VoxelMaps
from lesionuq.utils import resolve_device

__all__ = [
    "bf16_native",
    "dropout_masks",
    "fg_prob",
    "mc_sample",
    "mc_sample_naive",
    "mc_samples",
    "sampling_dtype",
]

_CL = torch.channels_last_3d


def _conv3d(
    x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None, padding: int = 0
) -> torch.Tensor:
    """``F.conv3d`` (stride 1), calling oneDNN directly for float32/bfloat16 on CPU.

    PyTorch's dispatch heuristic (tuned for 2-D) sends 3-D convolutions with small
    ``N * C * X * Y`` to a slow reference kernel; oneDNN is 2-4x faster for those. The
    weights (kept in float32) are cast to the activations' dtype. oneDNN's bfloat16
    kernels need AVX-512 (BW/VL/DQ) or AVX-NE-CONVERT; on other CPUs (AVX2) a forced
    bfloat16 pass takes PyTorch's own, slow, kernel instead of failing.
    """
    w = w.to(x.dtype)
    b = None if b is None else b.to(x.dtype)
    cpu_dtype = x.dtype == torch.float32 or (x.dtype == torch.bfloat16 and _onednn_bf16())
    if x.device.type == "cpu" and cpu_dtype and torch.backends.mkldnn.is_available():
        pad, one = [padding] * 3, [1, 1, 1]
        return torch.ops.aten.mkldnn_convolution(x, w, b, pad, one, one, 1)
    return F.conv3d(x, w, b, padding=padding)


@functools.cache
def _onednn_bf16() -> bool:
    """Whether oneDNN can run bfloat16 convolutions on this CPU (natively or emulated)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@functools.cache
def bf16_native() -> bool:
    """Whether this CPU has native bfloat16 arithmetic (AVX512-BF16 or AMX tiles).

    Asks PyTorch's cpuinfo (``torch.cpu._is_avx512_bf16_supported`` /
    ``_is_amx_tile_supported``), else the ``/proc/cpuinfo`` flags; False without oneDNN.
    """
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # older PyTorch: read the kernel's flags
        try:
            flags = Path("/proc/cpuinfo").read_text().split()
        except OSError:
            return False
        return "avx512_bf16" in flags or "amx_bf16" in flags


def sampling_dtype(precision: str, device: torch.device | str, amp: bool = True) -> torch.dtype:
    """The dtype of the network passes for a ``SamplingConfig.precision`` on a device.

    Args:
        precision: ``"auto"``, ``"fp32"`` or ``"bf16"``.
        device: Where the passes run.
        amp: On CUDA, whether reduced precision is allowed at all (False = float32).

    Returns:
        ``torch.float32``, ``torch.bfloat16`` or (CUDA, ``"auto"``) ``torch.float16``.
    """
    dev = torch.device(device)
    if precision == "fp32":
        return torch.float32
    if precision not in ("auto", "bf16"):
        raise ValueError(f"precision must be auto, fp32 or bf16, got {precision!r}.")
    if dev.type == "cuda":
        if not amp:
            return torch.float32
        return torch.bfloat16 if precision == "bf16" else torch.float16
    if precision == "bf16":
        return torch.bfloat16
    return torch.bfloat16 if bf16_native() else torch.float32


def dropout_masks(model: UNet3D, n_samples: int, seed: int) -> list[torch.Tensor]:
    r"""Draw the channel masks of T samples for every ``Dropout3d`` layer of ``model``.

    One call ``U = torch.rand(T, sum_k C_k, generator=Generator().manual_seed(seed))``;
    layer k (in :meth:`UNet3D.dropout_layers` order) takes its :math:`C_k` columns and keeps
    channel c of sample t when :math:`U_{t,c} \ge p`, scaled by :math:`1/(1-p)` like
    ``nn.Dropout3d`` in train mode.

    Args:
        model: The network (its layer sizes and p are read).
        n_samples: T.
        seed: Seed of the generator.

    Returns:
        One float32 tensor per dropout layer, shape (T, C_k), values 0 or 1/(1-p).
    """
    layers = model.dropout_layers()
    sizes = _dropout_channels(model)
    g = torch.Generator().manual_seed(int(seed))
    u = torch.rand(n_samples, sum(sizes), generator=g)
    masks = []
    for layer, chunk in zip(layers, torch.split(u, sizes, dim=1), strict=True):
        p = float(layer.p)
        masks.append((chunk >= p).float() / (1.0 - p))
    return masks


def _dropout_channels(model: UNet3D) -> list[int]:
    ch = list(model.cfg.channels)
    return ch + ch[-2::-1]


def fg_prob(logits: torch.Tensor) -> torch.Tensor:
    """Foreground probability :math:`p(1|v)` of 2-class logits, computed in float32.

    Args:
        logits: (B, 2, X, Y, Z).

    Returns:
        (B, X, Y, Z) float32 = softmax(logits, dim=1)[:, 1].
    """
    return torch.softmax(logits.float(), dim=1)[:, 1]


# ----------------------------------------------------------------------------- reference


def mc_sample_naive(
    model: UNet3D,
    image: np.ndarray,
    cfg: SamplingConfig,
    device: str = "auto",
    masks: Sequence[torch.Tensor] | None = None,
) -> VoxelMaps:
    """Reference MC sampling: T separate batch-1 passes of ``model.forward``, fp32.

    Normalisation layers in eval mode; each ``Dropout3d`` output is multiplied by the
    sample's mask from :func:`dropout_masks` (same seed = same networks as
    :func:`mc_sample`). Everything is recomputed in every pass.

    Args:
        model: The network.
        image: (C, X, Y, Z) float32.
        cfg: T, seed and optional sliding-window size.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        masks: Optional masks (default: ``dropout_masks(model, cfg.n_samples, cfg.seed)``).

    Returns:
        The voxel maps.
    """
    dev = resolve_device(device)
    _check_model(model)
    model = model.to(dev).eval()
    if masks is None:
        masks = dropout_masks(model, cfg.n_samples, cfg.seed)
    x = torch.as_tensor(np.asarray(image, dtype=np.float32), device=dev)[None]
    current: list[torch.Tensor] = []
    hooks = [
        layer.register_forward_hook(
            lambda _m, _inp, out, k=k: out * current[k].view(1, -1, 1, 1, 1)
        )
        for k, layer in enumerate(model.dropout_layers())
    ]
    rm = RunningMoments()
    try:
        with torch.inference_mode():
            for t in range(cfg.n_samples):
                current[:] = [m[t].to(dev) for m in masks]
                if (roi := _window(cfg, x)) is not None:
                    p = _sliding(x, roi, lambda w: fg_prob(model(w))[:, None])[:, 0]
                else:
                    p = fg_prob(model(x))
                rm.update(torch.as_tensor(p))
    finally:
        for h in hooks:
            h.remove()
    return rm.finalize()


def _check_model(model: nn.Module) -> None:
    if not isinstance(model, UNet3D):
        raise TypeError(f"expected a UNet3D, got {type(model).__name__}.")
    if model.cfg.out_channels != 2:
        raise ValueError("MC sampling needs a 2-class (background, lesion) network.")


def _window(cfg: SamplingConfig, x: torch.Tensor) -> tuple[int, int, int] | None:
    """The sliding-window size ``cfg.roi_size`` when (1, C, X, Y, Z) x exceeds it, else None."""
    roi = cfg.roi_size
    return (
        roi
        if roi is not None and any(s > r for s, r in zip(x.shape[2:], roi, strict=True))
        else None
    )


def _sliding(
    x: torch.Tensor, roi: tuple[int, int, int], fn: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """MONAI sliding-window inference of ``fn`` over (1, C, X, Y, Z) x (1 window per call)."""
    return cast(torch.Tensor, sliding_window_inference(x, roi, 1, fn, overlap=0.25))


# ----------------------------------------------------------------------------- fast path


def _compose_up_kernel(wt: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    r"""Kernel of ``conv3d(conv_transpose3d(x, wt, stride=2), w, padding=1)`` as one op.

    In 1-D, ``up[2j+q] = wt[q] x[j]`` and ``out[i] = sum_k w[k] up[i+k-1]``; a term with
    ``i + k - 1 = 2j + q`` sits at tap ``r = q - k + 2`` of a stride-2, padding-1
    transposed convolution, so ``wc[r] = sum_{q - k + 2 = r} w[k] wt[q]`` (r = 0..3).
    Zero padding of ``up`` corresponds to missing inputs, so borders are exact too.

    Args:
        wt: (C_in, C_mid, 2, 2, 2) transposed-convolution weight (no bias).
        w: (C_out, C_mid, 3, 3, 3) convolution weight.

    Returns:
        (C_in, C_out, 4, 4, 4) weight for ``conv_transpose3d(x, wc, stride=2, padding=1)``.
    """
    ci, cm, co = wt.shape[0], wt.shape[1], w.shape[0]
    taps = torch.tensor(
        [
            [
                (q0 - k0 + 2) * 16 + (q1 - k1 + 2) * 4 + (q2 - k2 + 2)
                for k0, k1, k2 in np.ndindex(3, 3, 3)
            ]
            for q0, q1, q2 in np.ndindex(2, 2, 2)
        ],
        device=wt.device,
    ).flatten()  # (8 * 27,) flat index of tap r for each (q, k)
    prod = torch.einsum(
        "imq,omk->ioqk", wt.double().reshape(ci, cm, 8), w.double().reshape(co, cm, 27)
    )
    wc = torch.zeros(ci, co, 64, dtype=torch.float64, device=wt.device)
    wc.index_add_(2, taps, prod.reshape(ci, co, 8 * 27))
    return wc.reshape(ci, co, 4, 4, 4).to(wt.dtype)


class _Layer:
    """Conv weights of one UnetBasicBlock (plus its norms/activation) ready for the fast path."""

    def __init__(self, block: nn.Module, prep: Callable[[torch.Tensor], torch.Tensor]):
        conv1 = cast(nn.Conv3d, block.get_submodule("conv1.conv"))
        conv2 = cast(nn.Conv3d, block.get_submodule("conv2.conv"))
        self.w1 = prep(conv1.weight.detach())
        self.b1 = _bias(conv1)
        self.w2 = prep(conv2.weight.detach())
        self.b2 = _bias(conv2)
        self.norm1 = block.get_submodule("norm1")
        self.norm2 = block.get_submodule("norm2")
        self.act = block.get_submodule("lrelu")


def _bias(conv: nn.Conv3d) -> torch.Tensor | None:
    return None if conv.bias is None else conv.bias.detach()


def _affine(
    norm: nn.InstanceNorm3d | nn.BatchNorm3d, idx: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(weight, bias), each (C,) or channels ``idx`` only, of an affine norm; else None."""
    if not norm.affine:
        return None
    w, bias = cast(torch.Tensor, norm.weight), cast(torch.Tensor, norm.bias)
    return (w, bias) if idx is None else (w[idx], bias[idx])


def _fusable(lay: _Layer) -> bool:
    """Whether the fused CPU norm + LeakyReLU (and channel slicing) applies to a block."""
    norms_ok = all(
        (isinstance(n, nn.InstanceNorm3d) and not n.track_running_stats)
        or (isinstance(n, nn.BatchNorm3d) and not n.training and n.track_running_stats)
        for n in (lay.norm1, lay.norm2)
    )
    return norms_ok and isinstance(lay.act, nn.LeakyReLU)


class _FastMC:
    """The sample-independent part of a UNet3D forward and per-sample continuations.

    Args:
        model: The network (not modified).
        per_sample: Run samples one by one with channel skipping (CPU) instead of as a
            batch with the masks multiplied in (CUDA).
        channels_last: Use the channels-last 3D memory layout.
        dtype: Activation dtype on CPU (float32 or bfloat16; weights stay float32 and
            are cast per convolution). Ignored on CUDA, where autocast decides.
    """

    def __init__(
        self,
        model: UNet3D,
        per_sample: bool,
        channels_last: bool,
        dtype: torch.dtype = torch.float32,
    ):
        self.model = model
        self.per_sample = per_sample
        self.cl = channels_last
        self._scratch: torch.Tensor | None = None
        self.levels = len(model.cfg.channels)
        p = float(model.cfg.dropout)
        self.scale = 1.0 / (1.0 - p)
        self.enc = [_Layer(e.get_submodule("body"), self._fmt) for e in model.encoders]
        self.dec = [_Layer(d.get_submodule("body.conv_block"), self._fmt) for d in model.decoders]
        self.up: list[tuple[torch.Tensor, torch.Tensor]] = []
        for d in model.decoders:
            tconv = cast(nn.ConvTranspose3d, d.get_submodule("body.transp_conv.conv"))
            if tconv.bias is not None:
                raise ValueError("the fast path needs bias-free transposed convolutions.")
            cout = tconv.weight.shape[1]
            conv1 = cast(nn.Conv3d, d.get_submodule("body.conv_block.conv1.conv"))
            w1 = conv1.weight.detach()
            wc = _compose_up_kernel(tconv.weight.detach(), w1[:, :cout])
            self.up.append((self._fmt(wc), self._fmt(w1[:, cout:].contiguous())))
        head = cast(nn.Conv3d, model.head.get_submodule("conv.conv"))
        self.wh = head.weight.detach()
        self.bh = _bias(head)
        cpu = head.weight.device.type == "cpu"
        self.fused = cpu and all(_fusable(lay) for lay in self.enc + self.dec)
        if per_sample and not self.fused:
            self.per_sample = False  # channel skipping needs the fused norms
        self.dtype = dtype if (cpu and self.fused) else torch.float32

    # -- helpers ------------------------------------------------------------------------
    def _buffer(self, like: torch.Tensor) -> torch.Tensor:
        """A reused scratch tensor shaped like ``like`` (avoids page-faulting new memory)."""
        n = like.numel()
        if self._scratch is None or self._scratch.numel() < n:
            self._scratch = torch.empty(n, dtype=like.dtype, device=like.device)
        return self._scratch[:n].view(like.shape)

    def _fmt(self, t: torch.Tensor) -> torch.Tensor:
        return t.contiguous(memory_format=_CL) if self.cl and t.ndim == 5 else t.contiguous()

    def _select(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Channels ``idx`` of (1, C, ...) x, in x's memory layout."""
        if self.cl:
            return x.permute(0, 2, 3, 4, 1).index_select(4, idx).permute(0, 4, 1, 2, 3)
        return x.index_select(1, idx)

    def _norm_act(
        self,
        h: torch.Tensor,
        norm: nn.Module,
        act: nn.Module,
        idx: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``act(norm(h))``; fused and in place for instance/batch norm + LeakyReLU on CPU.

        ``idx``: the channels of ``norm`` that ``h`` holds (None = all).
        """
        if not self.fused:
            return act(norm(h))
        # fused: every norm is one of these and act a LeakyReLU (see _fusable)
        norm = cast(nn.InstanceNorm3d | nn.BatchNorm3d, norm)
        slope = cast(nn.LeakyReLU, act).negative_slope
        b, c = h.shape[:2]
        if isinstance(norm, nn.InstanceNorm3d) and b == 1 and h.dtype == torch.bfloat16:
            # bf16, one sample: instance norm = batch norm with batch statistics; PyTorch's
            # channels-last mixed-dtype kernel makes 2 passes over h, the code below 5
            # (7x faster in bf16, 1 thread, 16x64^3). Not for fp32: 1.6x faster, but its
            # statistics drift (maps 2.7e-5 off the reference at 80x96x80, vs 7e-7).
            w, bias = _affine(norm, idx) or (None, None)
            h = F.batch_norm(h, None, None, w, bias, training=True, eps=norm.eps)
            return F.leaky_relu_(h, slope)
        if isinstance(norm, nn.InstanceNorm3d):
            h = self._fmt(h)  # no-op unless a kernel returned another layout; v is a view
            v = h.permute(0, 2, 3, 4, 1).reshape(b, -1, c) if self.cl else h.view(b, c, -1)
            red = 1 if self.cl else 2
            n = v.shape[red]
            f32 = torch.float32  # statistics summed in float32 whatever h's dtype
            v.sub_((v.sum(red, keepdim=True, dtype=f32) / n).to(v.dtype))  # exact 2-pass
            var = torch.mul(v, v, out=self._buffer(v)).sum(red, dtype=f32) / n  # (B, C)
            scale = (var + norm.eps).rsqrt()
            shift = torch.zeros_like(scale)
        else:  # BatchNorm3d in eval mode: running statistics
            rv = cast(torch.Tensor, norm.running_var)  # eval mode: tracked
            rm = cast(torch.Tensor, norm.running_mean)
            if idx is not None:
                rv, rm = rv[idx], rm[idx]
            scale = (rv + norm.eps).rsqrt().expand(b, c)
            shift = -rm * scale
        if (aff := _affine(norm, idx)) is not None:
            w, bias = aff
            scale, shift = scale * w, shift * w + bias
        scale, shift = scale.to(h.dtype), shift.to(h.dtype)
        torch.addcmul(shift.view(b, c, 1, 1, 1), h, scale.view(b, c, 1, 1, 1), out=h)
        return F.leaky_relu_(h, slope)

    def _block_rest(
        self, h: torch.Tensor, lay: _Layer, out_idx: torch.Tensor | None = None
    ) -> torch.Tensor:
        """norm1-act, conv2, norm2-act of a block whose first convolution gave ``h``.

        ``out_idx``: compute only these output channels (the ones the block's dropout
        keeps; the others are multiplied by zero everywhere they are used).
        """
        if lay.b1 is not None:
            h = h + lay.b1.view(1, -1, 1, 1, 1).to(h.dtype)
        h = self._norm_act(h, lay.norm1, lay.act)
        w2, b2 = lay.w2, lay.b2
        if out_idx is not None:
            if out_idx.numel() == 0:
                return h.new_empty(1, 0, *h.shape[2:])
            w2 = self._fmt(w2.index_select(0, out_idx))
            b2 = None if b2 is None else b2[out_idx]
        h = _conv3d(h, w2, b2, padding=1)
        return self._norm_act(h, lay.norm2, lay.act, out_idx)

    def _conv(self, x: torch.Tensor, w: torch.Tensor, transposed: bool = False) -> torch.Tensor:
        if transposed:
            return F.conv_transpose3d(x, w.to(x.dtype), stride=2, padding=1)
        return _conv3d(x, w, padding=w.shape[-1] // 2)

    def _kept_conv(
        self, x: torch.Tensor, w: torch.Tensor, kept: torch.Tensor, transposed: bool = False
    ) -> torch.Tensor | None:
        """Convolution (no bias) of a dropped tensor given as its kept channels only.

        x: (1, len(kept), ...) the kept channels; w: the full weight, (C_out, C, ...) or,
        transposed, (C, C_out, ...). The kept weights are scaled by 1/(1-p). None when
        nothing is kept (the result is zero).
        """
        if kept.numel() == 0:
            return None
        ws = w.index_select(0 if transposed else 1, kept) * self.scale
        return self._conv(x, self._fmt(ws), transposed)

    def _shared_linear(
        self, full: torch.Tensor, x: torch.Tensor, w: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """``conv(mask * x, w)`` given ``full = s * conv(x, w)``: subtract dropped channels.

        When at least half of the channels are dropped the kept ones are convolved
        directly instead (cheaper, and no cancellation).
        """
        dropped = torch.nonzero(mask == 0).flatten()
        if dropped.numel() == 0:
            return full.clone(memory_format=torch.preserve_format)
        if 2 * dropped.numel() >= mask.numel():
            kept = torch.nonzero(mask).flatten()
            out = self._kept_conv(self._select(x, kept), w, kept) if kept.numel() else None
            return out if out is not None else torch.zeros_like(full)
        part = self._conv(self._select(x, dropped), self._fmt(w[:, dropped] * self.scale))
        return torch.sub(full, part, out=part)

    # -- the two phases ------------------------------------------------------------------
    def shared(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Everything before the first dropout, and the convolutions linear in its mask.

        Args:
            x: (1, C_in, X, Y, Z), spatial sizes multiples of the network's divisor.
        """
        x = self._fmt(x.to(self.dtype))
        lay = self.enc[0]
        h = _conv3d(x, lay.w1, padding=1)
        a0 = self._block_rest(h, lay)
        out = {"a0": a0}
        if self.levels > 1 and self.per_sample:
            p0 = F.max_pool3d(a0, 2)
            out["p0"] = p0
            out["enc1"] = _conv3d(p0, self.enc[1].w1, padding=1).mul_(self.scale)
            out["skip0"] = _conv3d(a0, self.up[-1][1], padding=1).mul_(self.scale)
        return out

    def sample(
        self, shared: dict[str, torch.Tensor], masks: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        """Foreground probabilities of B samples.

        Args:
            shared: From :meth:`shared`.
            masks: One (B, C_k) tensor per dropout layer.

        Returns:
            (B, X, Y, Z) float32.
        """
        if self.per_sample:
            b = masks[0].shape[0]
            return torch.cat([self._one([m[i] for m in masks], shared) for i in range(b)])
        return self._batch(masks, shared)

    def _one(self, ms: Sequence[torch.Tensor], s: dict[str, torch.Tensor]) -> torch.Tensor:
        """One sample; every block after the first keeps only its kept output channels."""
        levels, a0 = self.levels, s["a0"]
        kept = [torch.nonzero(m).flatten() for m in ms]
        acts = [a0]  # a0 has all channels, acts[k >= 1] only kept[k]
        for k in range(1, levels):
            lay = self.enc[k]
            if k == 1:
                h = self._shared_linear(s["enc1"], s["p0"], lay.w1, ms[0])
            else:
                prev = acts[k - 1]
                if kept[k - 1].numel():  # some channel kept: not None
                    h = cast(
                        torch.Tensor, self._kept_conv(F.max_pool3d(prev, 2), lay.w1, kept[k - 1])
                    )
                else:  # every channel dropped: the convolution sees zeros
                    shape = [d // 2 for d in prev.shape[2:]]
                    h = self._fmt(prev.new_zeros(1, lay.w1.shape[0], *shape))
            acts.append(self._block_rest(h, lay, kept[k]))
        d = acts[-1]
        for j in range(levels - 1):
            lay, (wc, wskip) = self.dec[j], self.up[j]
            level = levels - 2 - j
            up = self._kept_conv(d, wc, kept[levels - 1 + j], transposed=True)
            skip: torch.Tensor | None
            if level == 0:
                skip = self._shared_linear(s["skip0"], a0, wskip, ms[0])
            else:
                skip = self._kept_conv(acts[level], wskip, kept[level])
            if up is None:
                size = acts[level].shape[2:]
                h = skip if skip is not None else self._fmt(a0.new_zeros(1, wc.shape[1], *size))
            else:
                h = up
                if skip is not None:
                    h.add_(skip)
            d = self._block_rest(h, lay, kept[levels + j])
        # p(1|v) = sigmoid(l1 - l0): one output channel for the logit difference
        wd = (self.wh[1] - self.wh[0])[None]
        if levels == 1:  # d = a0 holds every channel: mask the weights instead
            wd = wd * ms[-1].view(1, -1, 1, 1, 1)
        else:
            wd = wd.index_select(1, kept[-1]) * self.scale
        bd = None if self.bh is None else (self.bh[1] - self.bh[0]).view(1)
        if kept[-1].numel() == 0:
            logit = a0.new_full((1, 1, *a0.shape[2:]), 0.0 if bd is None else float(bd))
        else:
            logit = _conv3d(d.float(), self._fmt(wd), bd)  # float32 head (1 channel)
        return torch.sigmoid_(logit[:, 0].float())

    def _batch(self, masks: Sequence[torch.Tensor], s: dict[str, torch.Tensor]) -> torch.Tensor:
        levels = self.levels
        bsz = masks[0].shape[0]
        a0 = s["a0"]

        def drop(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
            return x * m.view(m.shape[0], -1, 1, 1, 1).to(x.dtype)

        dropped = [drop(a0.expand(bsz, *a0.shape[1:]), masks[0])]
        for k in range(1, levels):
            lay = self.enc[k]
            if k == 1:
                x = drop(F.max_pool3d(a0, 2).expand(bsz, -1, -1, -1, -1), masks[0])
            else:
                x = F.max_pool3d(dropped[k - 1], 2)
            h = _conv3d(x, lay.w1, padding=1)
            dropped.append(drop(self._block_rest(h, lay), masks[k]))
        d = dropped[-1]
        for j in range(levels - 1):
            lay, (wc, wskip) = self.dec[j], self.up[j]
            level = levels - 2 - j
            h = F.conv_transpose3d(d, wc, stride=2, padding=1)
            h = h + _conv3d(dropped[level], wskip, padding=1)
            d = drop(self._block_rest(h, lay), masks[levels + j])
        return fg_prob(_conv3d(d, self._fmt(self.wh), self.bh))


def mc_sample(
    model: UNet3D,
    image: np.ndarray,
    cfg: SamplingConfig,
    device: str = "auto",
    *,
    masks: Sequence[torch.Tensor] | None = None,
    amp: bool = True,
) -> VoxelMaps:
    """Voxel uncertainty maps from T MC-dropout passes (fast path; see the module doc).

    Args:
        model: The trained network, moved to ``device`` and put in eval mode (its
            normalisation layers are used in eval mode; its ``Dropout3d`` masks are drawn
            from ``cfg.seed``, see :func:`dropout_masks`).
        image: (C, X, Y, Z) float32 preprocessed image.
        cfg: T = ``cfg.n_samples``, samples per batch on CUDA, seed, optional sliding
            window ``cfg.roi_size`` (used when the image is larger than it), precision
            (:func:`sampling_dtype`: bfloat16 on CPUs with native bf16 units by default).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        masks: Optional explicit masks, one (T, C_k) tensor per dropout layer (tests,
            benchmarks); default ``dropout_masks(model, cfg.n_samples, cfg.seed)``.
        amp: On CUDA, allow ``torch.autocast`` (float16, or bfloat16 when
            ``cfg.precision == "bf16"``); False runs float32.

    Returns:
        prob, entropy, variance and PCS maps, each (X, Y, Z) float32; equal to
        :func:`mc_sample_naive` with the same masks (within 1e-5 in float32; bfloat16
        differs by rounding).
    """
    rm = RunningMoments()
    for p in mc_samples(model, image, cfg, device, masks=masks, amp=amp):
        rm.update(p)
    return rm.finalize()


def mc_samples(
    model: UNet3D,
    image: np.ndarray,
    cfg: SamplingConfig,
    device: str = "auto",
    *,
    masks: Sequence[torch.Tensor] | None = None,
    amp: bool = True,
) -> Iterator[torch.Tensor]:
    """The T MC-dropout foreground probabilities of :func:`mc_sample`, batch by batch.

    :func:`mc_sample` streams these batches into :class:`RunningMoments`; a 4-D stack of
    them (e.g. for the ``samples`` protocol, :mod:`lesionuq.samples`) gives the same
    maps through :func:`lesionuq.uncertainty.maps_from_samples` bit for bit. The
    generator holds ``torch.inference_mode`` (and, on CUDA, autocast) while it runs.

    Args:
        model: As :func:`mc_sample`.
        image: (C, X, Y, Z) float32 preprocessed image.
        cfg: As :func:`mc_sample`.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        masks: As :func:`mc_sample`.
        amp: As :func:`mc_sample`.

    Yields:
        (B, X, Y, Z) float32 tensors (on ``device``), T samples in all, in mask order.
    """
    dev = resolve_device(device)
    _check_model(model)
    model = model.to(dev).eval()
    if masks is None:
        masks = dropout_masks(model, cfg.n_samples, cfg.seed)
    n = int(masks[0].shape[0])
    cuda = dev.type == "cuda"
    dtype = sampling_dtype(cfg.precision, dev, amp)
    fast = _FastMC(model, per_sample=not cuda, channels_last=not cuda, dtype=dtype)
    x = torch.as_tensor(np.asarray(image, dtype=np.float32), device=dev)[None]
    roi = _window(cfg, x)
    window = roi is not None
    bsz = max(1, cfg.batch_size) if (cuda or window) else 1
    autocast = (
        torch.autocast("cuda", dtype=dtype)
        if cuda and dtype != torch.float32
        else contextlib.nullcontext()
    )

    def probs(xw: torch.Tensor, shared: dict | None, batch: list) -> torch.Tensor:
        xp, shape = model.pad(xw)
        p = fast.sample(shared if shared is not None else fast.shared(xp), batch)
        return p[:, : shape[0], : shape[1], : shape[2]]

    with torch.inference_mode(), autocast:
        shared = None if window else fast.shared(model.pad(x)[0])
        for start in range(0, n, bsz):
            batch = [m[start : start + bsz].to(dev) for m in masks]
            if roi is not None:  # the shared part is recomputed per window and batch

                def window_probs(w: torch.Tensor, b: list = batch) -> torch.Tensor:
                    return probs(w, None, b)[None]

                p = _sliding(x, roi, window_probs)[0]
            else:
                p = probs(x, shared, batch)
            yield p.float()
