"""A generic 3D U-Net (Cicek et al. 2016) with ``Dropout3d`` at the end of every block.

Paper 2.1: "We add 3D dropout with a rate of p = 0.2 at the end of each encoding and
decoding block." The network is built from MONAI's nnU-Net blocks:

- encoder block ``k``: ``UnetBasicBlock`` (conv3x3x3-norm-LeakyReLU, twice), then
  ``Dropout3d(p)``; blocks ``k >= 1`` see the previous block's output max-pooled by 2.
  The deepest encoder block is the bottleneck.
- decoder block ``j``: ``UnetUpBlock`` (2x2x2 transposed convolution, concatenation with
  the skip connection of the same resolution, then a ``UnetBasicBlock``), then
  ``Dropout3d(p)``.
- head: ``UnetOutBlock`` (1x1x1 convolution with bias) giving ``out_channels`` logits.

MONAI's own ``UNet`` puts element-wise dropout inside every convolution, which is not the
paper's placement; hence this module. Exactly one ``Dropout3d`` sits at the end of each of
the ``len(channels)`` encoder and ``len(channels) - 1`` decoder blocks, so the module order
of the dropout layers (:meth:`UNet3D.dropout_layers`) is the order in which they run.

Inputs of any spatial size are accepted: they are zero-padded up to a multiple of
``2 ** (len(channels) - 1)`` and the logits are cropped back.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import cast

import torch
import torch.nn.functional as F
from monai.networks.blocks.dynunet_block import UnetBasicBlock, UnetOutBlock, UnetUpBlock
from torch import nn

from lesionuq.config import UNetConfig

__all__ = ["DecoderBlock", "EncoderBlock", "UNet3D", "enable_mc_dropout"]

_ACT = ("leakyrelu", {"inplace": True, "negative_slope": 0.01})


def _norm_name(norm: str) -> tuple | str:
    """MONAI norm spec; instance and batch norms get learnable affine parameters."""
    if norm.lower() in ("instance", "batch"):
        return (norm.lower(), {"affine": True})
    return norm


class EncoderBlock(nn.Module):
    """Two conv-norm-act layers, then ``Dropout3d`` (the block's last module).

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        dropout: Dropout3d probability p.
        norm: MONAI norm name.
    """

    def __init__(self, in_channels: int, out_channels: int, dropout: float, norm: str):
        super().__init__()
        self.body = UnetBasicBlock(
            3, in_channels, out_channels, kernel_size=3, stride=1,
            norm_name=_norm_name(norm), act_name=_ACT,
        )  # fmt: skip
        self.dropout = nn.Dropout3d(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in, X, Y, Z) -> (B, out, X, Y, Z)."""
        return self.dropout(self.body(x))


class DecoderBlock(nn.Module):
    """Transposed conv x2, concat skip, two conv-norm-act layers, then ``Dropout3d``.

    Args:
        in_channels: Channels of the coarser input.
        out_channels: Output channels (also the skip connection's channels).
        dropout: Dropout3d probability p.
        norm: MONAI norm name.
    """

    def __init__(self, in_channels: int, out_channels: int, dropout: float, norm: str):
        super().__init__()
        self.body = UnetUpBlock(
            3, in_channels, out_channels, kernel_size=3, stride=1, upsample_kernel_size=2,
            norm_name=_norm_name(norm), act_name=_ACT,
        )  # fmt: skip
        self.dropout = nn.Dropout3d(dropout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """Inputs (B, in, X/2, Y/2, Z/2) and skip (B, out, X, Y, Z) -> (B, out, X, Y, Z)."""
        return self.dropout(self.body(x, skip))


class UNet3D(nn.Module):
    """3D U-Net with channel-wise dropout at the end of each encoder and decoder block.

    Args:
        cfg: Architecture (input sequences, classes, channels per level, p, norm).

    Attributes:
        cfg: The configuration (stored in checkpoints).
        encoders: ``len(cfg.channels)`` :class:`EncoderBlock`, shallow to deep.
        decoders: ``len(cfg.channels) - 1`` :class:`DecoderBlock`, deep to shallow.
        pool: 2x2x2 max pooling between encoder blocks.
        head: 1x1x1 convolution to ``cfg.out_channels`` logits.

    Example:
        >>> net = UNet3D(UNetConfig(channels=(4, 8, 16)))
        >>> net(torch.zeros(1, 1, 20, 16, 16)).shape
        torch.Size([1, 2, 20, 16, 16])
    """

    def __init__(self, cfg: UNetConfig):
        super().__init__()  # cfg is checked when made (UNetConfig.__post_init__)
        self.cfg = cfg
        ch = tuple(cfg.channels)
        ins = (cfg.in_channels, *ch[:-1])
        self.encoders = nn.ModuleList(
            EncoderBlock(i, o, cfg.dropout, cfg.norm) for i, o in zip(ins, ch, strict=True)
        )
        self.pool = nn.MaxPool3d(2)
        self.decoders = nn.ModuleList(
            DecoderBlock(ch[k], ch[k - 1], cfg.dropout, cfg.norm) for k in range(len(ch) - 1, 0, -1)
        )
        self.head = UnetOutBlock(3, ch[0], cfg.out_channels)

    @property
    def divisor(self) -> int:
        """Spatial sizes are padded to a multiple of this (``2 ** (levels - 1)``)."""
        return 2 ** (len(self.cfg.channels) - 1)

    def config_dict(self) -> dict:
        """The configuration as plain Python types (for checkpoints)."""
        return asdict(self.cfg)

    def dropout_layers(self) -> list[nn.Dropout3d]:
        """The ``Dropout3d`` modules in execution order (encoders, then decoders)."""
        enc = [cast(EncoderBlock, b).dropout for b in self.encoders]
        return enc + [cast(DecoderBlock, b).dropout for b in self.decoders]

    def pad(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """Zero-pad (B, C, X, Y, Z) at the far end to multiples of :attr:`divisor`.

        Returns:
            The padded tensor and the original spatial shape.
        """
        shape = tuple(x.shape[2:])
        d = self.divisor
        extra = [(-s) % d for s in shape]
        if any(extra):
            x = F.pad(x, (0, extra[2], 0, extra[1], 0, extra[0]))
        return x, shape  # type: ignore[return-value]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of every class.

        Args:
            x: (B, in_channels, X, Y, Z) float32.

        Returns:
            (B, out_channels, X, Y, Z) logits (softmax over dim 1 gives p(c|v)).
        """
        x, shape = self.pad(x)
        skips = []
        h = x
        for k, enc in enumerate(self.encoders):
            h = enc(self.pool(h) if k else h)
            skips.append(h)
        h = skips.pop()
        for dec in self.decoders:
            h = dec(h, skips.pop())
        out = self.head(h)
        return out[:, :, : shape[0], : shape[1], : shape[2]]


def enable_mc_dropout(model: nn.Module) -> nn.Module:
    """Put ``model`` in MC-dropout mode: eval everywhere, ``Dropout3d`` layers in train.

    Normalisation layers therefore use their eval behaviour (running statistics for batch
    norm, per-sample statistics for instance norm) while every ``Dropout3d`` keeps
    dropping channels.

    Args:
        model: Any module (typically a :class:`UNet3D`).

    Returns:
        The same module, modified in place.
    """
    model.eval()
    for m in model.modules():
        if isinstance(m, nn.Dropout3d):
            m.train()
    return model
