"""flax variables -> PyTorch module with the same weights.

Layouts: flax conv kernel HWIO -> torch OIHW; flax dense kernel (in, out) -> torch
(out, in); BatchNorm scale/bias -> weight/bias, batch_stats mean/var -> running_mean /
running_var. The architecture (SimpleCNN or ResNet18-lowres, widths, classes) is read
off the flax parameter names and shapes.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np
import torch

from third_party.torch_reference.models import TorchResNet18, TorchSimpleCNN


def _t(x) -> torch.Tensor:
  return torch.from_numpy(np.array(x, dtype=np.float32, copy=True))


def _conv(kernel_hwio) -> torch.Tensor:
  return _t(np.transpose(np.asarray(kernel_hwio), (3, 2, 0, 1)))


def _dense(params: Mapping) -> dict:
  return {"weight": _t(np.asarray(params["kernel"]).T), "bias": _t(params["bias"])}


def _bn(params: Mapping, stats: Mapping) -> dict:
  return {"weight": _t(params["scale"]), "bias": _t(params["bias"]),
          "running_mean": _t(stats["mean"]), "running_var": _t(stats["var"]),
          "num_batches_tracked": torch.tensor(0, dtype=torch.long)}


def _prefixed(prefix: str, tensors: dict) -> dict:
  return {f"{prefix}.{k}": v for k, v in tensors.items()}


def _simple_cnn_state_dict(params: Mapping) -> tuple[list[int], int, dict]:
  conv_names = sorted((k for k in params if re.fullmatch(r"Conv_\d+", k)),
                      key=lambda k: int(k.split("_")[1]))
  state = {}
  for i, name in enumerate(conv_names):
    state[f"convs.{i}.weight"] = _conv(params[name]["kernel"])
    state[f"convs.{i}.bias"] = _t(params[name]["bias"])
  state.update(_prefixed("fc", _dense(params["Dense_0"])))
  channels = [int(np.shape(params[n]["kernel"])[-1]) for n in conv_names[::2]]
  return channels, int(np.shape(params["Dense_0"]["kernel"])[-1]), state


def _resnet_state_dict(params: Mapping, stats: Mapping) -> tuple[int, int, dict]:
  state = {"stem.weight": _conv(params["conv_init"]["kernel"])}
  state.update(_prefixed("stem_bn", _bn(params["bn_init"], stats["bn_init"])))
  block_names = sorted((k for k in params if re.fullmatch(r"BasicBlock_\d+", k)),
                       key=lambda k: int(k.split("_")[1]))
  if len(block_names) != 8:
    raise ValueError(f"expected the 8 basic blocks of ResNet18, found {len(block_names)}")
  for i, name in enumerate(block_names):
    p, s, prefix = params[name], stats[name], f"blocks.{i}"
    state[f"{prefix}.conv1.weight"] = _conv(p["Conv_0"]["kernel"])
    state[f"{prefix}.conv2.weight"] = _conv(p["Conv_1"]["kernel"])
    state.update(_prefixed(f"{prefix}.bn1", _bn(p["BatchNorm_0"], s["BatchNorm_0"])))
    state.update(_prefixed(f"{prefix}.bn2", _bn(p["BatchNorm_1"], s["BatchNorm_1"])))
    if "conv_proj" in p:
      state[f"{prefix}.proj_conv.weight"] = _conv(p["conv_proj"]["kernel"])
      state.update(_prefixed(f"{prefix}.proj_bn", _bn(p["norm_proj"], s["norm_proj"])))
  state.update(_prefixed("fc", _dense(params["Dense_0"])))
  num_filters = int(np.shape(params["conv_init"]["kernel"])[-1])
  return num_filters, int(np.shape(params["Dense_0"]["kernel"])[-1]), state


def from_flax(variables: Mapping[str, Any]) -> tuple[torch.nn.Module, dict]:
  """Returns (torch module in eval mode, its state_dict) with the weights of `variables`.

  variables: {'params', 'batch_stats'?} of datadiet_jax's `simple_cnn`/`small_cnn`
  (SimpleCNN) or `resnet18_lowres` model.
  """
  params = variables["params"]
  if "conv_init" in params:
    num_filters, num_classes, state = _resnet_state_dict(params, variables["batch_stats"])
    module = TorchResNet18(num_classes, num_filters)
  elif "Conv_0" in params:
    channels, num_classes, state = _simple_cnn_state_dict(params)
    module = TorchSimpleCNN(channels, num_classes,
                            in_channels=int(np.shape(params["Conv_0"]["kernel"])[2]))
  else:
    raise ValueError(f"unrecognised flax model (top-level params: {sorted(params)})")
  module.load_state_dict(state, strict=True)
  return module.eval(), state
