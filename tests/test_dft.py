"""The DFT-as-matrix-products transforms DCLS uses, against numpy's and jax's FFTs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dan_jax.models import dft


@pytest.mark.parametrize("shape", [(12, 12), (9, 14), (35, 34), (1, 6)])
def test_rfft2_and_irfft2_equal_numpy(shape):
  x = np.random.default_rng(0).normal(size=(2, 3) + shape).astype(np.float32)
  want = np.fft.rfft2(x.astype(np.float64))
  re, im = dft.rfft2(jnp.asarray(x))
  got = np.asarray(re) + 1j * np.asarray(im)
  assert got.shape == want.shape and re.dtype == im.dtype == np.float32
  np.testing.assert_allclose(got, want, atol=2e-6 * np.abs(want).max())
  # The inverse of a half spectrum that is not Hermitian-consistent (random imaginary DC
  # and Nyquist parts) drops those parts, as numpy's irfft2 does.
  spec = want + 1j * np.random.default_rng(1).normal(size=want.shape)
  got = dft.irfft2(jnp.asarray(spec.real, jnp.float32), jnp.asarray(spec.imag, jnp.float32), *shape)
  np.testing.assert_allclose(np.asarray(got), np.fft.irfft2(spec, s=shape), atol=2e-6)


def test_rfft2_pads_and_shifts_like_psf2otf():
  psf = np.random.default_rng(0).normal(size=(3, 5, 5)).astype(np.float32)
  padded = np.zeros((3, 20, 17))
  padded[:, :5, :5] = psf
  want = np.fft.rfft2(np.roll(padded, (-2, -2), axis=(1, 2)))
  re, im = dft.rfft2(jnp.asarray(psf), 20, 17, shift=2)
  np.testing.assert_allclose(
    np.asarray(re) + 1j * np.asarray(im), want, atol=2e-6 * np.abs(want).max()
  )


def test_gradient_equals_the_fft_gradient():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 10, 11)), jnp.float32)
  w = jnp.asarray(np.random.default_rng(1).normal(size=(2, 10, 6)), jnp.float32)

  def ours(x):
    re, im = dft.rfft2(x)
    return jnp.sum(dft.irfft2(re * (1 + w), im * (1 + w), 10, 11) ** 2)

  def ref(x):
    return jnp.sum(jnp.fft.irfft2(jnp.fft.rfft2(x) * (1 + w), s=(10, 11)) ** 2)

  ours, ref = jax.grad(ours)(x), jax.grad(ref)(x)
  np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), rtol=1e-4, atol=1e-4)


def test_sizes_that_do_not_fit_are_refused():
  with pytest.raises(ValueError, match="larger than the transform"):
    dft.rfft2(jnp.zeros((8, 8)), 6, 8)
  with pytest.raises(ValueError, match="does not fit"):
    dft.irfft2(jnp.zeros((8, 4)), jnp.zeros((8, 4)), 8, 8)


def test_conj_times_is_the_complex_product_with_the_first_conjugated():
  a, b = np.random.default_rng(0).normal(size=(2, 2, 5))
  re, im = dft.conj_times(
    (jnp.asarray(a[0]), jnp.asarray(a[1])), (jnp.asarray(b[0]), jnp.asarray(b[1]))
  )
  np.testing.assert_allclose(
    np.asarray(re) + 1j * np.asarray(im), np.conj(a[0] + 1j * a[1]) * (b[0] + 1j * b[1]), rtol=1e-6
  )
