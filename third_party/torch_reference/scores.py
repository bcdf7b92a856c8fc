"""The per-example scores in PyTorch (eval mode, float32), for regression tests.

All take (module, images f32[B, H, W, C] normalized NHWC, labels i64[B]) and return
f32[B] torch tensors; definitions follow the original Data Diet code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap


@torch.no_grad()
def _probs(module, images) -> torch.Tensor:
  module.eval()
  return F.softmax(module(images), dim=-1)


def _onehot(labels, num_classes) -> torch.Tensor:
  return F.one_hot(labels.long(), num_classes).float()


def el2n(module, images, labels):
  p = _probs(module, images)
  return torch.linalg.vector_norm(p - _onehot(labels, p.shape[-1]), ord=2, dim=-1)


def l1_error(module, images, labels):
  p = _probs(module, images)
  return (p - _onehot(labels, p.shape[-1])).abs().sum(-1)


def max_margin(module, images, labels):
  p = _probs(module, images)
  p_true = p.gather(1, labels.long()[:, None])[:, 0]
  others = p.masked_fill(_onehot(labels, p.shape[-1]).bool(), -float("inf"))
  return others.max(-1).values - p_true


def sum_margin(module, images, labels):
  p = _probs(module, images)
  mask = _onehot(labels, p.shape[-1]).bool()
  p_true = p.gather(1, labels.long()[:, None])
  return (p - p_true).masked_fill(mask, 0.0).sum(-1)


def top2_margin(module, images, labels):
  del labels
  top = _probs(module, images).topk(2, dim=-1).values
  return top[:, 0] - top[:, 1]


@torch.no_grad()
def entropy(module, images, labels):
  del labels
  module.eval()
  log_p = F.log_softmax(module(images), dim=-1)
  p = log_p.exp()
  return -torch.where(p > 0, p * log_p, torch.zeros_like(p)).sum(-1)


@torch.no_grad()
def loss(module, images, labels):
  module.eval()
  return F.cross_entropy(module(images), labels.long(), reduction="none")


def input_norm(module, images, labels):
  del module, labels
  return torch.linalg.vector_norm(images.reshape(images.shape[0], -1), dim=-1)


def grand(module, images, labels):
  """|| d CE / d params ||_2 per example via torch.func vmap(grad) (buffers held fixed)."""
  module.eval()
  params = {k: v.detach() for k, v in module.named_parameters()}
  buffers = {k: v.detach() for k, v in module.named_buffers()}

  def example_loss(p, image, label):
    logits = functional_call(module, (p, buffers), (image[None],))
    return F.cross_entropy(logits, label[None].long())

  grads = vmap(grad(example_loss), in_dims=(None, 0, 0))(params, images, labels)
  sq = sum(g.reshape(g.shape[0], -1).square().sum(-1) for g in grads.values())
  return sq.sqrt()


SCORE_FNS = {"el2n": el2n, "l1_error": l1_error, "max_margin": max_margin,
             "sum_margin": sum_margin, "top2_margin": top2_margin, "entropy": entropy,
             "loss": loss, "grand": grand, "input_norm": input_norm}
