"""Shared tiny models and checkpoints of the test suite.

`TINY_V2` / `TINY_V1` are model configs small enough to compile in seconds; `tiny_variables`
gives them PyTorch-default weights and an orthonormal PCA; `ckpt_v2` is one saved checkpoint
of `TINY_V2`, written once per test session (tests only read it).

The XLA:CPU flag the command lines use is applied here too, before any test starts JAX, so
in-process tests compile what the CLIs compile.
"""

import os
import tempfile

import numpy as np
import pytest

from dan_jax import checkpoint
from dan_jax import models
from dan_jax import xla_cpu

xla_cpu.configure()

# The persistent compilation cache ("auto": under XDG_CACHE_HOME) goes to a folder of this
# session, for the suite's processes and their subprocesses, not the user's cache.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="dan_jax_test_cache_")

# DANv2 x2 with one block per group and 11x11 kernels.
TINY_V2 = dict(
  version="DANv2",
  scale=2,
  nf=8,
  nb=1,
  ng=1,
  loops=2,
  kernel_size=11,
  code_len=10,
  estimator_nf=8,
  estimator_nb=1,
)
# DANv1 x2 of about the same cost (its Estimator needs estimator_nf=32).
TINY_V1 = dict(
  version="DANv1",
  scale=2,
  nf=16,
  nb=1,
  loops=2,
  kernel_size=11,
  code_len=10,
  estimator_nf=32,
  estimator_nb=1,
)


def tiny_variables(config: dict, seed: int = 0) -> dict:
  """Seeded PyTorch-default weights of `config` and a random orthonormal PCA [k*k, 10]."""
  k2 = config["kernel_size"] ** 2
  pca = np.linalg.qr(np.random.default_rng(seed).normal(size=(k2, config["code_len"])))[0]
  return models.init_variables(models.create_model(config), seed, pca)


@pytest.fixture(scope="session")
def ckpt_v2(tmp_path_factory) -> str:
  """A checkpoint directory of `TINY_V2` (seed 0), shared by every test that reads one."""
  d = tmp_path_factory.mktemp("ckpt_v2")
  checkpoint.save_model(str(d), tiny_variables(TINY_V2), TINY_V2)
  return str(d)
