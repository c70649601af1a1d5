"""Candidate operations (GAS.md §2): one registry, names as used in genotype JSON.

Every op maps ``[N, C, H, W] -> [N, C, H/stride, W/stride]``. Convolutions are ReLU-Conv-BN;
separable = ReLU + depthwise 3x3 (optionally dilated) + pointwise 1x1 + BN [ours].
Tests are generated from :data:`OPS`, so registering an op is enough to have it shape-,
gradient- and latency-tested.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

OpBuilder = Callable[[int, int, bool], nn.Module]  # (channels, stride, affine) -> module


@dataclass(frozen=True)
class OpSpec:
    name: str
    build: OpBuilder
    parametric: bool  # has learnable weights
    zero: bool = False  # outputs zeros: costs nothing, never kept by derivation
    search_bn: bool = False  # the search mixed op follows it with BatchNorm2d(affine=False) (DARTS); derived nets do not
    fuse: tuple | None = None  # how core.batched_cell batches it over a node's out-edges; None = one module per edge


OPS: dict[str, OpSpec] = {}


def register_op(name: str, *, parametric: bool, zero: bool = False, search_bn: bool = False,
                fuse: tuple | None = None) -> Callable[[OpBuilder], OpBuilder]:
    def deco(fn: OpBuilder) -> OpBuilder:
        if name in OPS:
            raise ValueError(f"op {name!r} registered twice")
        OPS[name] = OpSpec(name, fn, parametric, zero, search_bn, fuse)
        return fn

    return deco


def op_names(subset: list[str] | None = None) -> list[str]:
    """The op vocabulary in registry order (or a validated subset of it, in registry order)."""
    if subset is None:
        return list(OPS)
    unknown = [o for o in subset if o not in OPS]
    if unknown:
        raise ValueError(f"unknown ops {unknown}; known: {list(OPS)}")
    if "none" in OPS and "none" not in subset:
        subset = ["none", *subset]
    return [o for o in OPS if o in subset]


def build_op(name: str, channels: int, stride: int, affine: bool = True) -> nn.Module:
    try:
        spec = OPS[name]
    except KeyError:
        raise KeyError(f"unknown op {name!r}; known: {list(OPS)}") from None
    return spec.build(channels, stride, affine)


class ReLUConvBN(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, affine: bool = True):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )


class SepConv(nn.Sequential):
    """ReLU, depthwise 3x3 (dilation d), pointwise 1x1, BN."""

    def __init__(self, channels: int, stride: int, dilation: int, affine: bool = True):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(channels, channels, 3, stride=stride, padding=dilation, dilation=dilation,
                      groups=channels, bias=False),
            nn.Conv2d(channels, channels, 1, bias=False),
            nn.BatchNorm2d(channels, affine=affine),
        )


class FactorizedReduce(nn.Module):
    """Halves resolution with two offset stride-2 1x1 convolutions (DARTS)."""

    def __init__(self, c_in: int, c_out: int, affine: bool = True):
        super().__init__()
        if c_out % 2:
            raise ValueError(f"FactorizedReduce needs an even c_out, got {c_out}")
        self.relu = nn.ReLU(inplace=False)
        self.conv1 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.conv2 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        a = self.conv1(x)
        # The offset path sees the input shifted by one pixel; pad odd sizes so both paths agree.
        b = self.conv2(nn.functional.pad(x[:, :, 1:, 1:], (0, x.shape[-1] % 2, 0, x.shape[-2] % 2)))
        return self.bn(torch.cat([a, b], dim=1))


class Zero(nn.Module):
    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


@register_op("none", parametric=False, zero=True)
def _none(c: int, stride: int, affine: bool) -> nn.Module:
    return Zero(stride)


@register_op("skip_connect", parametric=False, fuse=("skip",))
def _skip(c: int, stride: int, affine: bool) -> nn.Module:
    return nn.Identity() if stride == 1 else FactorizedReduce(c, c, affine)


@register_op("max_pool_3x3", parametric=False, search_bn=True, fuse=("max_pool", 3))
def _max_pool(c: int, stride: int, affine: bool) -> nn.Module:
    return nn.MaxPool2d(3, stride=stride, padding=1)


@register_op("conv_3x3", parametric=True, fuse=("conv", 3))
def _conv(c: int, stride: int, affine: bool) -> nn.Module:
    return ReLUConvBN(c, c, 3, stride, 1, affine)


@register_op("sep_conv_3x3", parametric=True, fuse=("sep", 1))
def _sep(c: int, stride: int, affine: bool) -> nn.Module:
    return SepConv(c, stride, 1, affine)


def _register_dilated(rate: int) -> None:
    @register_op(f"dil_sep_conv_3x3_r{rate}", parametric=True, fuse=("sep", rate))
    def _dil(c: int, stride: int, affine: bool) -> nn.Module:
        return SepConv(c, stride, rate, affine)


DILATION_RATES = (2, 4, 8)  # [likely] the dilated separable convolutions of GAS.md §2
for _rate in DILATION_RATES:
    _register_dilated(_rate)
