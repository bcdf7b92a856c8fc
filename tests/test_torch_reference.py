"""Regression test against an independent PyTorch implementation (third_party/torch_reference):
on the same weights and inputs every score agrees within 1e-4 relative in float32, for
SimpleCNN and ResNet18-lowres, at initialisation and after a few hundred SGD steps on real
CIFAR-10 images (so BatchNorm running statistics are far from their init)."""

import io
import os
import re
import sys
import tarfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

torch = pytest.importorskip("torch")

from datadiet_jax import scores as S  # noqa: E402
from datadiet_jax.data.normalize import CIFAR10_MEAN, CIFAR10_STD, normalize  # noqa: E402
from datadiet_jax.models import get_model  # noqa: E402
from datadiet_jax.train.optimizer import OptimizerConfig, make_optimizer  # noqa: E402
from datadiet_jax.train.state import create_train_state, model_variables  # noqa: E402
from datadiet_jax.train.step import make_train_step  # noqa: E402
from third_party.torch_reference import SCORE_FNS, from_flax, same_padding  # noqa: E402

DATA = os.path.join(REPO, "..", "shared", "data", "cifar10-jpeg.tar.gz")
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck")
PER_CLASS = 32          # 320 training images
NUM_STEPS = 200         # SGD steps of batch 32 (20 epochs of the subset)
NUM_SCORED = 64         # examples scored in both frameworks
RTOL, ATOL = 1e-4, 1e-6  # ATOL only matters for scores that cross 0 (margins)

torch.set_num_threads(2)


def _decode_subset(path: str, per_class: int) -> tuple[np.ndarray, np.ndarray]:
  """The first `per_class` training JPEGs of each class in archive order, u8[N, 32, 32, 3]."""
  from PIL import Image
  pattern = re.compile(r"(?:^|/)train/([^/]+)/([^/]+\.jpe?g)$")
  found = {c: [] for c in CLASSES}
  with tarfile.open(path, "r|gz") as tar:
    for member in tar:
      match = pattern.search(member.name)
      if (not member.isfile() or not match or match.group(1) not in found
          or len(found[match.group(1)]) >= per_class):
        continue
      with Image.open(io.BytesIO(tar.extractfile(member).read())) as image:
        found[match.group(1)].append((match.group(2), np.asarray(image.convert("RGB"))))
      if all(len(files) >= per_class for files in found.values()):
        break
  images, labels = [], []
  for label, name in enumerate(CLASSES):
    files = sorted(found[name], key=lambda f: f[0])[:per_class]
    assert len(files) == per_class, f"{name}: only {len(files)} training images in {path}"
    images += [image for _, image in files]
    labels += [label] * per_class
  return np.stack(images).astype(np.uint8), np.asarray(labels, np.int32)


@pytest.fixture(scope="module")
def cifar_subset():
  if not os.path.exists(DATA):
    pytest.skip(f"real-data test: {DATA} is absent")
  return _decode_subset(DATA, PER_CLASS)


def _train(model, images, labels, num_steps, batch_size=32, seed=0):
  """(init variables, trained variables): SGD with momentum on augmented batches."""
  steps_per_epoch = len(images) // batch_size
  tx = make_optimizer(OptimizerConfig(learning_rate=0.05, schedule="constant"),
                      steps_per_epoch)
  state = create_train_state(model, tx, model_seed=seed, data_seed=seed + 1,
                             image_shape=images.shape[1:])
  init = model_variables(state)
  train_step = jax.jit(make_train_step(model, tx, CIFAR10_MEAN, CIFAR10_STD, augment=True))
  rng = np.random.default_rng(seed)
  losses = []
  for epoch in range(-(-num_steps // steps_per_epoch)):
    order = rng.permutation(len(images))
    for b in range(min(steps_per_epoch, num_steps - epoch * steps_per_epoch)):
      idx = order[b * batch_size:(b + 1) * batch_size]
      state, metrics = train_step(state, {"images": images[idx], "labels": labels[idx],
                                          "example_ids": idx.astype(np.int32)})
      losses.append(metrics["loss"])
  losses = np.asarray(losses)
  assert losses[-steps_per_epoch:].mean() < 0.9 * losses[:steps_per_epoch].mean(), "no learning"
  return init, model_variables(state)


# Every registered score of a plain classifier, each against its PyTorch reference. The joint
# EL2N variants (text) reduce to EL2N for plain logits, so they are held to torch's EL2N;
# grand_head needs a BERT classifier head (compared with PyTorch in test_text_torch.py).
IMAGE_SCORE_NAMES = tuple(n for n in S.SCORE_NAMES if n != "grand_head")
REFERENCE_FNS = {**SCORE_FNS, "el2n_sum": SCORE_FNS["el2n"], "el2n_mean": SCORE_FNS["el2n"]}


@pytest.fixture(scope="module", params=[("simple_cnn", 8), ("resnet18_lowres", 8)],
                ids=["simple_cnn", "resnet18"])
def models(request, cifar_subset):
  name, width = request.param
  images, labels = cifar_subset
  model = get_model(name, 10, width)
  init, trained = _train(model, images, labels, NUM_STEPS)
  apply_fn = S.eval_apply_fn(model)
  all_scores = jax.jit(lambda v, x, y: {n: S.get_score_fn(n)(apply_fn, v, x, y)
                                         for n in IMAGE_SCORE_NAMES})
  pick = np.arange(0, len(images), len(images) // NUM_SCORED)[:NUM_SCORED]  # all classes
  x = np.asarray(normalize(images[pick], CIFAR10_MEAN, CIFAR10_STD))
  return {"name": name, "model": model, "init": init, "trained": trained,
          "all_scores": all_scores, "x": x, "y": labels[pick]}


def _compare(models, which):
  variables = models[which]
  jax_scores = {k: np.asarray(v) for k, v in models["all_scores"](variables, models["x"],
                                                                  models["y"]).items()}
  module, _ = from_flax(variables)
  x = torch.from_numpy(np.array(models["x"]))  # a writable copy
  y = torch.from_numpy(np.array(models["y"])).long()
  report = {}
  for name in IMAGE_SCORE_NAMES:
    ref = REFERENCE_FNS[name](module, x, y).detach().numpy()
    got = jax_scores[name]
    assert got.shape == ref.shape == (NUM_SCORED,)
    np.testing.assert_allclose(got, ref, rtol=RTOL, atol=ATOL,
                               err_msg=f"{models['name']} {which} {name}")
    report[name] = float(np.max(np.abs(got - ref) / np.maximum(np.abs(ref), 1e-12)))
  print(f"\n{models['name']} {which}: max relative |jax - torch| / |torch|: "
        + ", ".join(f"{k} {v:.1e}" for k, v in report.items()))
  return report


def test_scores_agree_with_torch_at_init(models):
  _compare(models, "init")


def test_scores_agree_with_torch_after_training(models):
  trained = models["trained"]
  if "batch_stats" in trained:  # train mode updated the running statistics
    stats = jax.tree_util.tree_leaves_with_path(trained["batch_stats"])
    means = [np.abs(np.asarray(v)).max() for p, v in stats if p[-1].key == "mean"]
    variances = [np.abs(np.asarray(v) - 1).max() for p, v in stats if p[-1].key == "var"]
    assert max(means) > 0.05 and max(variances) > 0.05
  moved = [float(jnp.abs(a - b).max()) for a, b in zip(
      jax.tree_util.tree_leaves(trained["params"]),
      jax.tree_util.tree_leaves(models["init"]["params"]))]
  assert min(moved) > 0
  _compare(models, "trained")


def test_logits_agree_on_odd_sizes(models):
  """Odd sizes take the symmetric 'SAME' padding branch of the stride-2 convs."""
  module, _ = from_flax(models["trained"])
  x = np.random.default_rng(0).normal(size=(4, 15, 15, 3)).astype(np.float32)
  ref = module(torch.from_numpy(x)).detach().numpy()
  got = np.asarray(models["model"].apply(models["trained"], x, train=False))
  np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


def test_same_padding_matches_lax():
  assert same_padding(32, 3, 2) == (0, 1)   # asymmetric: torch's padding=1 would be wrong
  assert same_padding(31, 3, 2) == (1, 1)
  assert same_padding(32, 3, 1) == (1, 1)
  assert same_padding(32, 1, 2) == (0, 0)
  for size in (7, 8):
    lo_hi = jax.lax.padtype_to_pads((size,), (3,), (2,), "SAME")[0]
    assert tuple(lo_hi) == same_padding(size, 3, 2)


def test_package_never_imports_torch():
  offenders = []
  for root, _, files in os.walk(os.path.join(REPO, "datadiet_jax")):
    for f in files:
      if f.endswith(".py"):
        text = open(os.path.join(root, f)).read()
        if re.search(r"^\s*(import torch|from torch)", text, re.M):
          offenders.append(os.path.join(root, f))
  assert not offenders, offenders
