"""Model tests: official parameter counts, parity with the official PyTorch forward pass,
output structure, and the cheap final-iteration gradient."""

import ast
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dan_jax import convert
from dan_jax import errors
from dan_jax import models
from dan_jax.models import layers

FIXTURES = pathlib.Path(__file__).parent / "fixtures"


def _abstract_params(model_config):
  model = models.create_model(model_config)
  return jax.eval_shape(
    lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), iterations=1)
  )["params"]


@pytest.mark.parametrize(
  "version,options,expected",
  [
    ("DANv1", dict(nf=64, nb=40, upscale=4, loop=4), 4_329_511),
    ("DANv2", dict(nf=64, nb=10, ng=5, upscale=4, loop=4), 4_707_708),
  ],
)
def test_official_parameter_counts(version, options, expected):
  config = convert.model_config_from_official(version, **options)
  assert models.count_params(_abstract_params(config)) == expected


# x4 in the fast lane; x2 and x3 (the same code at other upsampler depths) run in CI.
@pytest.mark.parametrize(
  "scale", [pytest.param(2, marks=pytest.mark.slow), pytest.param(3, marks=pytest.mark.slow), 4]
)
@pytest.mark.parametrize("version", ["DANv1", "DANv2"])
def test_full_size_shapes(version, scale):
  config = convert.model_config_from_official(version, nf=64, nb=10, ng=5, upscale=scale, loop=4)
  model = models.create_model(config)
  lr = jax.ShapeDtypeStruct((2, 45, 30, 3), jnp.float32)
  variables = jax.eval_shape(
    lambda: model.init(jax.random.key(0), lr.shape and jnp.zeros(lr.shape))
  )
  out = jax.eval_shape(model.apply, variables, lr)
  assert out.sr.shape == (4, 2, 45 * scale, 30 * scale, 3)
  assert out.code.shape == (4, 2, 10)
  if version == "DANv2":
    assert out.kernel.shape == (4, 2, 21, 21)
  else:
    assert out.kernel is None


def _load_fixture(name):
  data = np.load(FIXTURES / f"parity_{name}.npz")
  meta = ast.literal_eval(str(data["meta"]))
  version = meta.pop("version")
  state_dict = {k[3:]: data[k] for k in data.files if k.startswith("sd/")}
  return version, meta, state_dict, data


def _rel_err(got, want):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-12)


@pytest.mark.parametrize("name", ["danv1_x2", "danv1_x3", "danv1_x4", "danv2_x2", "danv2_x4"])
def test_parity_with_official_forward(name):
  version, options, state_dict, data = _load_fixture(name)
  config = convert.model_config_from_official(version, **options)
  # The `module.` prefix of DataParallel checkpoints must be accepted.
  prefixed = {"module." + k: v for k, v in state_dict.items()}
  variables = convert.params_from_torch(prefixed, config)
  model = models.create_model(config)
  assert models.count_params(variables["params"]) == int(data["nparams"])
  lr = jnp.asarray(data["lr"].transpose(0, 2, 3, 1))  # NCHW -> NHWC
  # The official forward ran in float32: so does ours, on any platform (TPUs default to
  # one bf16 pass, Ampere+ GPUs to TF32; the CPU computes float32 either way).
  with jax.default_matmul_precision("highest"):
    out = jax.jit(model.apply)(variables, lr)
  sr = np.asarray(out.sr).transpose(0, 1, 4, 2, 3)  # back to NCHW per iteration
  assert sr.shape == data["sr"].shape
  for i in range(sr.shape[0]):  # every iteration, not only the last
    assert _rel_err(sr[i], data["sr"][i]) < 1e-4, f"iteration {i} SR"
    assert _rel_err(out.code[i], data["code"][i]) < 1e-4, f"iteration {i} code"
    if version == "DANv2":
      k = config.kernel_size
      assert out.kernel.shape[1:] == (lr.shape[0], k, k)
      want = data["kernel"][i].reshape(-1, k, k)
      assert _rel_err(out.kernel[i], want) < 1e-4, f"iteration {i} kernel"
  if version == "DANv1":
    assert out.kernel is None


def test_params_from_torch_rejects_wrong_version_and_shapes():
  version, options, state_dict, _ = _load_fixture("danv2_x2")
  v1_config = convert.model_config_from_official("DANv1", upscale=2, nf=16, nb=2)
  with pytest.raises(errors.ConversionError, match="DANv2"):
    convert.params_from_torch(state_dict, v1_config)
  wrong_scale = convert.model_config_from_official(version, **{**options, "upscale": 4})
  with pytest.raises(errors.ConversionError, match="does not fit"):
    convert.params_from_torch(state_dict, wrong_scale)
  fewer_blocks = convert.model_config_from_official(version, **{**options, "nb": 1})
  with pytest.raises(errors.ConversionError, match="unexpected"):
    convert.params_from_torch(state_dict, fewer_blocks)


@pytest.mark.parametrize("name", ["danv1_x3", "danv2_x4"])
def test_infer_official_options(name):
  version, options, state_dict, _ = _load_fixture(name)
  got_version, got = convert.infer_official_options(state_dict)
  assert got_version == version
  for key, value in options.items():
    if key != "loop":
      assert got[key] == value, key


def test_model_config_validation():
  with pytest.raises(ValueError, match="scale"):
    models.create_model(dict(version="DANv1", scale=5))
  with pytest.raises(ValueError, match="version"):
    models.create_model(dict(version="DANv3"))
  with pytest.raises(ValueError, match="unknown"):
    models.create_model(dict(version="DANv2", n_blocks=3))
  with pytest.raises(ValueError, match="unknown official"):
    convert.model_config_from_official("DANv2", nblocks=3)


TINY = dict(
  version="DANv2", scale=2, nf=8, nb=1, ng=1, loops=3, kernel_size=5, estimator_nf=8, estimator_nb=1
)


def _tiny_setup(config):
  model = models.create_model(config)
  pca = np.random.default_rng(0).normal(size=(config["kernel_size"] ** 2, 10)) * 0.3
  variables = models.init_variables(model, 1, pca)
  rng = np.random.default_rng(2)
  lr = rng.uniform(size=(2, 8, 6, 3)).astype(np.float32)
  hr = rng.uniform(size=(2, 16, 12, 3)).astype(np.float32)
  return model, variables, lr, hr


def test_iterations_resume_from_code():
  """Running k iterations, then the rest from the last code, equals one full run."""
  model, variables, lr, _ = _tiny_setup(TINY)
  apply = jax.jit(model.apply, static_argnames="iterations")
  full = apply(variables, lr)
  first = apply(variables, lr, iterations=2)
  rest = apply(variables, lr, initial_code=first.code[-1], iterations=1)
  np.testing.assert_allclose(rest.sr[0], full.sr[2], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(rest.kernel[0], full.kernel[2], rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(first.sr, full.sr[:2], rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # compiles train steps (~10 s): out of the fast lane
@pytest.mark.parametrize("version", ["DANv1", "DANv2"])
def test_cheap_gradient_equals_full_scan_gradient(version):
  """The final-iteration loss differentiated through one iteration (after N-1 forward
  iterations without gradient) equals its gradient through the whole scan."""
  config = dict(TINY, version=version, nf=16, estimator_nf=32)
  model, variables, lr, hr = _tiny_setup(config)
  params, rest = variables["params"], {"pca": variables["pca"]}

  def loss_full(p):
    out = model.apply({"params": p, **rest}, lr)
    return jnp.mean(jnp.abs(out.sr[-1] - hr)) + jnp.mean(jnp.abs(out.code[-1]))

  def loss_cheap(p):
    prefix = model.apply(
      {"params": jax.lax.stop_gradient(p), **rest}, lr, iterations=config["loops"] - 1
    )
    out = model.apply(
      {"params": p, **rest}, lr, initial_code=jax.lax.stop_gradient(prefix.code[-1]), iterations=1
    )
    return jnp.mean(jnp.abs(out.sr[-1] - hr)) + jnp.mean(jnp.abs(out.code[-1]))

  lf, gf = jax.jit(jax.value_and_grad(loss_full))(params)
  lc, gc = jax.jit(jax.value_and_grad(loss_cheap))(params)
  np.testing.assert_allclose(lc, lf, rtol=1e-6)
  norms = [float(jnp.abs(g).max()) for g in jax.tree_util.tree_leaves(gf)]
  assert max(norms) > 0
  jax.tree_util.tree_map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7), gc, gf
  )


def test_pca_travels_with_variables():
  model, variables, lr, _ = _tiny_setup(TINY)
  assert variables["pca"]["matrix"].shape == (25, 10)
  apply = jax.jit(model.apply)
  out = apply(variables, lr)
  # The starting code is the delta kernel's code; changing the PCA changes the output.
  other = {**variables, "pca": {"matrix": variables["pca"]["matrix"] * 2}}
  assert not np.allclose(apply(other, lr).sr, out.sr)
  with pytest.raises(ValueError, match="pca_matrix"):
    models.init_variables(model, 0, np.zeros((10, 10)))


def test_init_is_pytorch_default_and_seeded():
  model = models.create_model(TINY)
  pca = np.zeros((25, 10))
  a = models.init_variables(model, 0, pca)["params"]
  b = models.init_variables(model, 0, pca)["params"]
  c = models.init_variables(model, jax.random.key(1), pca)["params"]
  jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)
  head = a["alternate"]["restorer"]["head_lr"]
  bound = 1 / np.sqrt(3 * 3 * 3)  # fan_in of a 3x3 conv over 3 channels
  assert np.abs(head["kernel"]).max() <= bound and np.abs(head["kernel"]).max() > 0.8 * bound
  assert np.abs(head["bias"]).max() <= bound
  assert not np.allclose(c["alternate"]["restorer"]["head_lr"]["kernel"], head["kernel"])


@pytest.mark.parametrize(
  "k,padding,stride",
  [(3, 1, 1), (5, 2, 1), (3, 0, 1), (9, 4, 4), (17, 8, 4), (13, 6, 3), (5, 2, 2)],
)
def test_conv_gemm_grad_matches_xla_gradient(k, padding, stride):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 17, 14, 5)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(k, k, 5, 4)), jnp.float32)
  plain = lambda x, w: jax.lax.conv_general_dilated(
    x, w, (stride, stride), ((padding, padding),) * 2, dimension_numbers=("NHWC", "HWIO", "NHWC")
  )
  g = jnp.asarray(rng.normal(size=plain(x, kernel).shape), jnp.float32)
  want = jax.vjp(plain, x, kernel)[1](g)
  got = jax.vjp(lambda x, w: layers.conv_gemm_grad(x, w, padding, stride), x, kernel)[1](g)
  np.testing.assert_allclose(
    plain(x, kernel), layers.conv_gemm_grad(x, kernel, padding, stride), rtol=1e-6
  )
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_constant_channels_conv_equals_stretched_conv():
  """The closed form of a conv over spatially constant channels is exact at borders too."""
  rng = np.random.default_rng(1)
  const = jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(3, 3, 4, 6)), jnp.float32)
  stretched = jnp.broadcast_to(const[:, None, None, :], (3, 5, 7, 4))
  want = jax.lax.conv_general_dilated(
    stretched, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
  )
  got = layers.constant_channels_conv(const, kernel, 5, 7, 1)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_every_family_implements_the_contract():
  from dan_jax.models import spec as spec_lib

  wanted = {n for n in vars(spec_lib.Family) if not n.startswith("_")}
  wanted |= set(spec_lib.Family.__annotations__)
  for version, fam in models.FAMILIES.items():
    assert version in fam.VERSIONS, version
    missing = sorted(n for n in wanted if not hasattr(fam, n))
    assert not missing, f"{fam.__name__} lacks {missing}"
  assert set(models.VERSIONS) == {v for f in models.FAMILIES.values() for v in f.VERSIONS}


def test_no_version_comparisons_outside_the_family_modules():
  # The family is asked (models.family(spec).<what>), never picked by its version string.
  import re

  root = pathlib.Path(__file__).parents[1]
  versions = "|".join(map(re.escape, models.VERSIONS))
  compare = re.compile(
    rf"""(==|!=|\bin)\s*\(?\s*["']({versions})["']|["']({versions})["']\s*(==|!=)"""
  )
  hits = []
  for folder in ("dan_jax", "launch", "benchmarks"):
    for path in sorted((root / folder).rglob("*.py")):
      if path.parent.name == "models":
        continue
      for i, line in enumerate(path.read_text().splitlines(), 1):
        if compare.search(line):
          hits.append(f"{path.relative_to(root)}:{i}: {line.strip()}")
  assert not hits, "\n".join(hits)
