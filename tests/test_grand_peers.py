"""The GraNd peers of experiments/benchmarks/grand.py (BackPACK's BatchL2Grad, Opacus's
GradSampleModule and its ghost clipping) against torch.func vmap(grad) on the same torch
module: tiny SimpleCNN (4/8) and ResNet-lowres (4 filters, one block per stage), 8x8
inputs, 4 examples, BatchNorm with non-trivial running statistics and affine parameters
(GraNd is defined in eval mode). The reference models permute their NHWC input, so every
activation is channels_last in memory: the case where Opacus's unfold went wrong.

The peers are a benchmark-only extra (pip install -e .[bench]); each case is skipped when
its package is not installed."""

import os
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

torch = pytest.importorskip("torch")

from experiments.benchmarks.grand import peer_norm_fns  # noqa: E402
from third_party.torch_reference import SCORE_FNS  # noqa: E402
from third_party.torch_reference.models import TorchResNetLowres, TorchSimpleCNN  # noqa: E402

RTOL = 1e-5
PEERS = {"backpack_batch_l2": ("backpack", "backpack"),  # name: (--peers entry, module)
         "opacus_grad_sample": ("opacus", "opacus"), "opacus_ghost": ("opacus", "opacus")}


def _module(name: str):
  """A tiny torch reference model (torch's own init; no JAX compile), BatchNorm statistics
  and affine parameters randomized (so a wrong eval-mode map would show)."""
  torch.manual_seed(0)
  module = (TorchSimpleCNN((4, 8), 10) if name == "simple_cnn"
            else TorchResNetLowres(10, 4, (1, 1)))
  generator = torch.Generator().manual_seed(1)
  with torch.no_grad():
    for layer in module.modules():
      if isinstance(layer, torch.nn.BatchNorm2d):
        channels = layer.num_features
        layer.running_mean.copy_(torch.randn(channels, generator=generator))
        layer.running_var.copy_(0.5 + torch.rand(channels, generator=generator))
        layer.weight.copy_(1 + 0.3 * torch.randn(channels, generator=generator))
        layer.bias.copy_(0.3 * torch.randn(channels, generator=generator))
  return module.eval()


@pytest.mark.parametrize("model_name", ["simple_cnn", "resnet18_lowres"])
@pytest.mark.parametrize("peer", list(PEERS))
def test_peer_norms_match_torch_func(peer, model_name):
  pytest.importorskip(PEERS[peer][1])
  module = _module(model_name)
  rng = np.random.default_rng(0)
  images = torch.from_numpy(rng.normal(size=(4, 8, 8, 3)).astype(np.float32))
  labels = torch.tensor([3, 0, 7, 3])
  expected = SCORE_FNS["grand"](module, images, labels).detach().numpy()
  fns, notes = peer_norm_fns(module, images, labels, (PEERS[peer][0],))
  assert peer in fns, notes
  got = fns[peer]().detach().numpy()
  np.testing.assert_allclose(got, expected, rtol=RTOL)
  # A second call (the benchmark times repeats) does not accumulate per-example state.
  np.testing.assert_allclose(fns[peer]().detach().numpy(), got, rtol=1e-6)
  # The peer copies leave the reference module untouched.
  np.testing.assert_allclose(SCORE_FNS["grand"](module, images, labels).detach().numpy(),
                             expected, rtol=1e-6)
