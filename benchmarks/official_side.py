"""Times the official PyTorch DAN on this machine; prints one JSON line.

Run by benchmarks/run.py with a Python that has torch, against a user's checkout of
github greatlog/DAN (nothing of it is part of this repository):

  python benchmarks/official_side.py --checkout PATH --version DANv1 --nf 64 --nb 40
"""

import argparse
import importlib.util
import inspect
import json
import os
import statistics
import sys
import tempfile
import time
import types


def _load_arch(checkout: str, version: str):
  codes = os.path.join(checkout, "codes")
  if not os.path.isdir(codes):
    raise SystemExit(f"error: {checkout} has no codes/ folder (not a greatlog/DAN checkout)")
  sys.path.insert(0, codes)
  # The official utils import torchvision only for make_grid; a stub keeps it importable.
  if "torchvision" not in sys.modules:
    tv = types.ModuleType("torchvision")
    tv.utils = types.ModuleType("torchvision.utils")
    tv.utils.make_grid = lambda *a, **k: None
    sys.modules["torchvision"], sys.modules["torchvision.utils"] = tv, tv.utils
  path = os.path.join(codes, "config", version, "models", "modules", "dan_arch.py")
  spec = importlib.util.spec_from_file_location(f"official_dan_{version}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _median_time(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--checkout", required=True)
  ap.add_argument("--version", default="DANv1")
  ap.add_argument("--nf", type=int, default=64)
  ap.add_argument("--nb", type=int, default=40)
  ap.add_argument("--ng", type=int, default=5)
  ap.add_argument("--loops", type=int, default=4)
  ap.add_argument("--batch", type=int, default=4)
  ap.add_argument("--lr_size", type=int, default=64)
  ap.add_argument("--infer_sizes", default="180x320")
  ap.add_argument("--repeats", type=int, default=3)
  args = ap.parse_args()

  import torch

  torch.set_num_threads(os.cpu_count() or 1)
  arch = _load_arch(args.checkout, args.version)
  # DANv2's constructor takes groups (ng) and its Estimator predicts the kernel itself.
  grouped = "ng" in inspect.signature(arch.DAN.__init__).parameters
  k, scale = 21, 4
  with tempfile.TemporaryDirectory() as tmp:
    pca_path = os.path.join(tmp, "pca.pth")
    torch.save(torch.randn(k * k, 10) * 0.05, pca_path)
    kwargs = dict(
      nf=args.nf,
      nb=args.nb,
      upscale=scale,
      input_para=10,
      kernel_size=k,
      loop=args.loops,
      pca_matrix_path=pca_path,
    )
    if grouped:
      kwargs["ng"] = args.ng
    net = arch.DAN(**kwargs)
  result = {"version": args.version, "torch": torch.__version__, "threads": torch.get_num_threads()}

  # Train step: the official optimize_parameters (L1 on the last iteration's SR and
  # kernel term, backward through the whole unrolled loop, Adam step).
  opt = torch.optim.Adam(net.parameters(), lr=4e-4, betas=(0.9, 0.99))
  lr = torch.rand(args.batch, 3, args.lr_size, args.lr_size)
  hr = torch.rand(args.batch, 3, args.lr_size * scale, args.lr_size * scale)
  ker = torch.rand(args.batch, k * k).softmax(-1)
  code = torch.randn(args.batch, 10)

  def train_step():
    opt.zero_grad()
    out = net(lr)
    loss = torch.nn.functional.l1_loss(out[0][-1], hr)
    if grouped:
      loss = loss + torch.nn.functional.l1_loss(out[2][-1], ker)
    else:
      loss = loss + torch.nn.functional.l1_loss(out[1][-1], code)
    loss.backward()
    opt.step()

  train_step()  # warm-up
  step_s = _median_time(train_step, args.repeats)
  result["train_step_s"] = step_s
  result["train_samples_per_s"] = args.batch / step_s

  net.eval()
  infer = {}
  with torch.no_grad():
    net(lr)  # warm-up
    result["forward_s"] = _median_time(lambda: net(lr), args.repeats)
    for size in args.infer_sizes.split(","):
      h, w = (int(v) for v in size.split("x"))
      x = torch.rand(1, 3, h, w)
      net(x)  # warm-up
      infer[size] = _median_time(lambda: net(x), args.repeats)
  result["infer_s"] = infer
  print(json.dumps(result))


if __name__ == "__main__":
  main()
