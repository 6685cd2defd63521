"""The update rules of dan_jax.train on a tiny model: EMA, torch-style weight decay,
`supervise_all_iterations` through `train_step`, and bfloat16 against float32."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from dan_jax import models
from dan_jax import steps
from dan_jax import train_state

from conftest import TINY_V2
from conftest import tiny_variables


def _batch(config, b=2, h=8, w=8, seed=3):
  rng = np.random.default_rng(seed)
  k = config["kernel_size"]
  kernel = rng.dirichlet(np.ones(k * k), size=b).astype(np.float32).reshape(b, k, k)
  s = config["scale"]
  return {
    "lr": rng.uniform(size=(b, h, w, 3)).astype(np.float32),
    "hr": rng.uniform(size=(b, s * h, s * w, 3)).astype(np.float32),
    "kernel": kernel,
    "code": rng.normal(size=(b, config["code_len"])).astype(np.float32),
  }


def _optimizer_config(**fields):
  c = ml_collections.ConfigDict(
    dict(
      learning_rate=1e-2,
      lr_milestones=(),
      lr_gamma=0.5,
      adam_b1=0.9,
      adam_b2=0.99,
      weight_decay=0.0,
    )
  )
  c.update(fields)
  return c


def _leaves(tree):
  return [np.asarray(x, np.float64) for x in jax.tree_util.tree_leaves(tree)]


def test_ema_is_decay_times_ema_plus_rest_times_new_params():
  spec = dict(TINY_V2, loops=1)  # one iteration: the EMA does not care, compiling does
  model = models.create_model(spec)
  variables = tiny_variables(spec)
  config = _optimizer_config()
  tx = steps.create_optimizer(config, steps.create_learning_rate_fn(config))
  state = train_state.create_train_state(variables, tx, ema=True)
  step = jax.jit(functools.partial(steps.train_step, model=model, tx=tx, ema_decay=0.9))
  batch = _batch(spec)
  ema = _leaves(state.params)
  for _ in range(2):  # from the second step on the EMA and the params differ
    state, _ = step(state, batch)
    ema = [0.9 * e + 0.1 * p for e, p in zip(ema, _leaves(state.params))]
  for got, want in zip(_leaves(state.ema_params), ema):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  assert max(np.abs(e - p).max() for e, p in zip(ema, _leaves(state.params))) > 1e-4


def test_weight_decay_is_torch_adam_l2_not_decoupled():
  """torch.optim.Adam(weight_decay=wd): the gradient gets wd * param before the moments."""
  lr, b1, b2, wd, eps = 1e-2, 0.9, 0.99, 0.1, 1e-8
  config = _optimizer_config(learning_rate=lr, adam_b1=b1, adam_b2=b2, weight_decay=wd)
  tx = steps.create_optimizer(config, steps.create_learning_rate_fn(config))
  rng = np.random.default_rng(0)
  p = rng.normal(size=(5, 4)).astype(np.float32)
  grads = [rng.normal(size=(5, 4)).astype(np.float32) * s for s in (1.0, 0.0, 0.5)]
  opt_state = tx.init(p)
  want, m, v = p.astype(np.float64), 0.0, 0.0
  for t, g in enumerate(grads, start=1):
    updates, opt_state = tx.update(jnp.asarray(g), opt_state, jnp.asarray(p))
    p = np.asarray(optax.apply_updates(jnp.asarray(p), updates))
    g_l2 = g + wd * want  # the torch formula, written out
    m = b1 * m + (1 - b1) * g_l2
    v = b2 * v + (1 - b2) * g_l2**2
    want = want - lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
    np.testing.assert_allclose(p, want, rtol=1e-4, atol=1e-6)


def _l1(a, b):
  return jnp.mean(jnp.abs(a - b))


@pytest.mark.slow  # compiles train steps (~10 s): out of the fast lane
def test_supervise_all_iterations_through_train_step():
  """With plain SGD(1) the update is minus the gradient of the sum of every iteration's loss."""
  model = models.create_model(TINY_V2)
  variables = tiny_variables(TINY_V2)
  batch = _batch(TINY_V2)
  tx = optax.sgd(1.0)
  state = train_state.create_train_state(variables, tx)
  new, metrics = jax.jit(
    functools.partial(
      steps.train_step, model=model, tx=tx, kernel_loss_weight=0.5, supervise_all=True
    )
  )(state, batch)

  def loss_fn(params):  # every iteration's L1(SR, HR) + 0.5 L1(kernel, true kernel)
    out = model.apply({"params": params, "pca": variables["pca"]}, batch["lr"])
    per_iter = [
      _l1(out.sr[i], batch["hr"]) + 0.5 * _l1(out.kernel[i], batch["kernel"])
      for i in range(TINY_V2["loops"])
    ]
    return sum(per_iter)

  loss, grads = jax.jit(jax.value_and_grad(loss_fn))(state.params)
  np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-5)
  per_iter = [metrics[f"l_pix{i}"] + 0.5 * metrics[f"l_ker{i}"] for i in range(TINY_V2["loops"])]
  np.testing.assert_allclose(metrics["loss"], sum(per_iter), rtol=1e-5)
  assert metrics["loss"] > 1.5 * per_iter[-1]  # not only the last iteration
  for got, p, g in zip(_leaves(new.params), _leaves(state.params), _leaves(grads)):
    np.testing.assert_allclose(got, p - g, rtol=1e-4, atol=1e-6)


def test_bfloat16_compute_is_close_to_float32():
  variables = tiny_variables(TINY_V2)
  batch = _batch(TINY_V2, h=12, w=12)
  outs = {}
  for dtype in ("float32", "bfloat16"):
    model = models.create_model(dict(TINY_V2, dtype=dtype))
    outs[dtype] = jax.jit(model.apply)(variables, batch["lr"])
  sr32, sr16 = (np.asarray(outs[d].sr, np.float32) for d in ("float32", "bfloat16"))
  # bfloat16 keeps 8 significant bits: ~0.4% relative error per op, a few % after the loop.
  assert np.abs(sr16 - sr32).max() < 0.05 and np.abs(sr16 - sr32).mean() < 0.01
  np.testing.assert_allclose(
    np.asarray(outs["bfloat16"].kernel, np.float32), np.asarray(outs["float32"].kernel), atol=5e-3
  )
  # The training loss (last iteration: L1 of SR plus of the kernel) agrees within 3%.
  losses = {
    d: np.abs(np.asarray(o.sr[-1], np.float32) - batch["hr"]).mean()
    + np.abs(np.asarray(o.kernel[-1], np.float32) - batch["kernel"]).mean()
    for d, o in outs.items()
  }
  np.testing.assert_allclose(losses["bfloat16"], losses["float32"], rtol=0.03)
  assert not np.array_equal(sr16, sr32)  # the bfloat16 path really ran
