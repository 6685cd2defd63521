"""Times the official PyTorch DCLS-SR on this machine; prints one JSON line.

Run by benchmarks/run.py with a Python that has torch, against a user's checkout of
github megvii-research/DCLS-SR (nothing of it is part of this repository):

  python benchmarks/official_dcls_side.py --checkout PATH --kernel_size 21 --scale 4

The official code calls `torch.rfft`/`torch.irfft` (removed after torch 1.8) and `.cuda()`
unconditionally; a shim installed here, for this process only, maps the two FFT calls to
`torch.fft` (the official calls are full complex FFTs over the last three dims) and makes
`.cuda()` a no-op, so the official code runs unchanged on a current CPU torch.

Figures: forward (batch, eval mode), train step (the official `optimize_parameters`: L1 on
SR plus `CorrectionLoss(eps=1e-20)` against the reformulated kernel, backward, Adam), the
inference sizes, the CLS Fourier deconvolution alone (pad + per-channel
`get_uperleft_denominator` as the official CLS runs it, forward and forward+backward), and
the train step's peak memory: the process's resident-set high-water mark during one step
minus its resident set before it (`/proc/self/clear_refs` resets the mark).
"""

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
import types


def install_shim(torch) -> None:
  """torch.rfft/irfft (onesided=False, 3 dims, as the official code calls them), .cuda()."""

  def rfft(x, signal_ndim, normalized=False, onesided=True):
    if signal_ndim != 3 or onesided or normalized:
      raise NotImplementedError("shim covers rfft(x, 3, onesided=False) only")
    return torch.view_as_real(torch.fft.fftn(x, dim=(-3, -2, -1)))

  def irfft(x, signal_ndim, normalized=False, onesided=True, signal_sizes=None):
    if signal_ndim != 3 or onesided or normalized:
      raise NotImplementedError("shim covers irfft(x, 3, onesided=False) only")
    return torch.fft.ifftn(torch.view_as_complex(x.contiguous()), dim=(-3, -2, -1)).real

  torch.rfft, torch.irfft = rfft, irfft
  torch.Tensor.cuda = lambda self, *a, **k: self
  torch.nn.Module.cuda = lambda self, *a, **k: self


def _load(name: str, path: str):
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module
  spec.loader.exec_module(module)
  return module


def load_official(checkout: str):
  """(dcls_arch module, loss module, dcls_utils module) from a DCLS-SR checkout."""
  codes = os.path.join(checkout, "codes")
  modules = os.path.join(codes, "config", "DCLS", "models", "modules")
  if not os.path.isfile(os.path.join(modules, "dcls_arch.py")):
    raise SystemExit(
      f"error: {checkout} has no codes/config/DCLS/models/modules/dcls_arch.py "
      "(not a megvii-research/DCLS-SR checkout)"
    )
  # dcls_utils imports torchvision only for make_grid; a stub keeps it importable.
  if "torchvision" not in sys.modules:
    tv = types.ModuleType("torchvision")
    tv.utils = types.ModuleType("torchvision.utils")
    tv.utils.make_grid = lambda *a, **k: None
    sys.modules["torchvision"], sys.modules["torchvision.utils"] = tv, tv.utils
  # The official `utils` package also pulls in the data pipeline (deg_utils: MATLAB resize,
  # scipy.io); the network and the kernel loss need only dcls_utils.
  utils = _load("utils", os.path.join(codes, "utils", "dcls_utils.py"))
  utils.BatchBlur = utils.b_Bicubic = None  # imported by loss.py, unused by CorrectionLoss
  package = types.ModuleType("official_dcls_modules")
  package.__path__ = [modules]
  sys.modules["official_dcls_modules"] = package
  arch = _load("official_dcls_modules.dcls_arch", os.path.join(modules, "dcls_arch.py"))
  loss = _load("official_dcls_modules.loss", os.path.join(modules, "loss.py"))
  return arch, loss, utils


def _median_time(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def _kib(field: str) -> int:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1])
  raise RuntimeError(f"no {field} in /proc/self/status")


def step_peak_bytes(step) -> int:
  """Peak resident memory one call of `step` adds over the resident set before it."""
  with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset VmHWM to the current resident set
  before = _kib("VmRSS")
  step()
  return (_kib("VmHWM") - before) * 1024


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--checkout", required=True)
  ap.add_argument("--nf", type=int, default=64)
  ap.add_argument("--nb", type=int, default=10)
  ap.add_argument("--ng", type=int, default=5)
  ap.add_argument("--input_para", type=int, default=256)
  ap.add_argument("--kernel_size", type=int, default=21)
  ap.add_argument("--scale", type=int, default=4)
  ap.add_argument("--batch", type=int, default=4)
  ap.add_argument("--lr_size", type=int, default=64)
  ap.add_argument("--infer_sizes", default="180x320")
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument(
    "--threads",
    type=int,
    default=0,
    help="torch intra-op threads (0: one per core). On a shared, busy CPU "
    "PyTorch's threads wait on each other at every op: 1 can be far faster",
  )
  ap.add_argument("--only", default="", help="comma list of: train,forward,infer,fft,memory")
  args = ap.parse_args()
  only = set(filter(None, args.only.split(","))) or {"train", "forward", "infer", "fft", "memory"}

  import torch

  install_shim(torch)
  torch.set_num_threads(args.threads or os.cpu_count() or 1)
  arch, loss_module, utils = load_official(args.checkout)
  torch.manual_seed(0)
  k, scale, b, s = args.kernel_size, args.scale, args.batch, args.lr_size
  net = arch.DCLS(
    nf=args.nf, nb=args.nb, ng=args.ng, input_para=args.input_para, kernel_size=k, upscale=scale
  )
  result = {
    "torch": torch.__version__,
    "threads": torch.get_num_threads(),
    "params": sum(p.numel() for p in net.parameters()),
  }

  opt = torch.optim.Adam(net.parameters(), lr=4e-4, betas=(0.9, 0.99))
  cri_kernel = loss_module.CorrectionLoss(scale=scale, eps=1e-20)
  lr = torch.rand(b, 3, s, s)
  hr = torch.rand(b, 3, s * scale, s * scale)
  lr_blurred = (lr + 0.01 * torch.rand_like(lr)).clamp(0, 1)

  def train_step():
    opt.zero_grad()
    sr, kernel = net(lr)
    d_kr, _ = cri_kernel(kernel, lr_blurred, lr)
    total = d_kr + torch.nn.functional.l1_loss(sr, hr)
    total.backward()
    opt.step()

  if only & {"train", "memory"}:
    train_step()  # warm-up
  if "train" in only:
    step_s = _median_time(train_step, args.repeats)
    result["train_step_s"] = step_s
    result["train_samples_per_s"] = b / step_s
  if "memory" in only:
    result["train_step_peak_bytes"] = step_peak_bytes(train_step)

  if "fft" in only:
    # The CLS deconvolution alone, as the official CLS.forward runs it on its features.
    c = args.nf // 4
    feats = torch.rand(b, c, s, s, requires_grad=True)
    ker = torch.rand(b, 1, k, k).softmax(-1).reshape(b, 1, k, k)
    ker = ker / ker.sum((2, 3), keepdim=True)
    smooth = (torch.rand(b, c, 3, 3) - 0.5).requires_grad_(True)

    def deconv():
      padded = torch.nn.functional.pad(feats, (k, k, k, k), "replicate")
      out = torch.zeros(feats.shape)
      for i in range(c):
        full = utils.get_uperleft_denominator(padded[:, i : i + 1], ker, smooth[:, i : i + 1])
        out[:, i : i + 1] = full[:, :, k:-k, k:-k]
      return out

    with torch.no_grad():
      deconv()
      result["fft_forward_s"] = _median_time(deconv, args.repeats)
    deconv().sum().backward()
    result["fft_grad_s"] = _median_time(lambda: deconv().sum().backward(), args.repeats)

  net.eval()
  with torch.no_grad():
    if "forward" in only:
      net(lr)  # warm-up
      result["forward_s"] = _median_time(lambda: net(lr), args.repeats)
    if "infer" in only:
      infer = {}
      for size in args.infer_sizes.split(","):
        h, w = (int(v) for v in size.split("x"))
        x = torch.rand(1, 3, h, w)
        net(x)  # warm-up
        infer[size] = _median_time(lambda: net(x), args.repeats)
      result["infer_s"] = infer
  print(json.dumps(result))


if __name__ == "__main__":
  main()
