"""Generated from the op registry: every registered op is shape-, gradient- and latency-tested."""
import pytest
import torch

from core.latency import build_table, op_key, cell_shapes
from core.ops import OPS, build_op, op_names
from core.specs import NetworkConfig

C, H, W = 8, 13, 18  # odd sizes on purpose: stride-2 ops must all agree on ceil(n/2)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("name", list(OPS))
def test_op_shape(name, stride):
    y = build_op(name, C, stride)(torch.randn(2, C, H, W))
    assert y.shape == (2, C, -(-H // stride), -(-W // stride))


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("name", [n for n, s in OPS.items() if s.parametric])
def test_parametric_op_gradients(name, stride):
    op = build_op(name, C, stride)
    x = torch.randn(2, C, H, W, requires_grad=True)
    op(x).square().mean().backward()
    grads = [p.grad for p in op.parameters()]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("name", [n for n, s in OPS.items() if not s.parametric and not s.zero])
def test_weight_free_op_passes_gradient(name):
    x = torch.randn(1, C, H, W, requires_grad=True)
    build_op(name, C, 1)(x).sum().backward()
    assert x.grad.abs().sum() > 0


def test_zero_op_is_zero():
    assert build_op("none", C, 2)(torch.randn(1, C, H, W)).abs().sum() == 0


def test_registry_names_and_subsets():
    assert list(OPS) == ["none", "skip_connect", "max_pool_3x3", "conv_3x3", "sep_conv_3x3",
                         "dil_sep_conv_3x3_r2", "dil_sep_conv_3x3_r4", "dil_sep_conv_3x3_r8"]
    assert op_names(["conv_3x3", "skip_connect"]) == ["none", "skip_connect", "conv_3x3"]
    with pytest.raises(ValueError, match="unknown ops"):
        op_names(["conv_5x5"])


@pytest.fixture(scope="module")
def small_table():
    cfg = NetworkConfig(num_cells=2, reduction_cells=[1], init_channels=8, stem_channels=8, head_channels=16,
                        low_level_channels=8, nodes=2)
    return cfg, build_table(cfg, op_names(), 32, 48, torch.device("cpu"), "fp32", warmup=1, repeats=3)


@pytest.mark.parametrize("name", [n for n, s in OPS.items() if not s.zero])
def test_every_op_has_measured_latency(small_table, name):
    cfg, table = small_table
    shapes = cell_shapes(cfg, 32, 48)
    for source, k in ((1, 0), (0, 1), (2, 1)):  # stride 1; stride 2; stride 1 at the reduced shape
        stats = table.entries[op_key(name, 16 if k else 8, shapes[k], source, k == 1)]
        assert stats.count == 3 and 0 < stats.p10_ms <= stats.median_ms <= stats.p90_ms
