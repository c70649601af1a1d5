"""core/cost.py (torch-free, what the API uses to refuse a too costly job) against core/estimate.py
(the supernet on torch's meta device): parameters exactly, activation and peak bytes within
core.cost.TOLERANCE, on configurations the coefficients were not fitted to."""
from __future__ import annotations

import random
import subprocess
import sys

import pytest

from core import cost
from core.cost_fit import random_config
from core.estimate import OVERHEAD, estimate_search
from core.ops import OPS
from core.specs import GGMConfig, NetworkConfig, SearchConfig

HELD_OUT_SEED = 4242  # core.cost_fit fits with seeds 0 and 1


def _configs():
    rng = random.Random(HELD_OUT_SEED)
    out = [({"network": NetworkConfig().model_dump(), "ggm": GGMConfig().model_dump(),
             "search": SearchConfig().model_dump()}, (240, 320))]
    out += [random_config(rng, True) for _ in range(5)]
    out += [random_config(rng, False) for _ in range(2)]
    return out


@pytest.mark.parametrize("k", range(8))
def test_analytic_cost_matches_the_meta_device(k):
    spec, crop = _configs()[k]
    est = estimate_search(NetworkConfig(**spec["network"]), GGMConfig(**spec["ggm"]), SearchConfig(**spec["search"]), crop)
    c = cost.search_cost(spec, crop, spec["search"]["batch_size"], steps=1)
    assert c.weight_params == est.weight_params and c.arch_params == est.arch_params
    assert c.state_bytes == est.state_bytes
    err = abs(c.saved_bytes_per_image - est.saved_bytes_per_image) / est.saved_bytes_per_image
    assert err <= cost.TOLERANCE, (err, spec, crop)
    assert abs(c.peak_bytes - est.peak_bytes()) / est.peak_bytes() <= cost.TOLERANCE


def test_cost_model_knows_every_op_and_the_overhead():
    assert set(OPS) == set(cost.OP_PARAMS), "a new op needs its weight count in core/cost.py (and a refit)"
    assert list(OPS) == list(cost.ALL_OPS)
    assert cost.OVERHEAD == OVERHEAD


def test_cost_module_is_torch_free():
    code = ("import sys; import core.cost as c; c.coefficients(); "
            "assert 'torch' not in sys.modules, 'core.cost imported torch'")
    subprocess.run([sys.executable, "-c", code], check=True)
