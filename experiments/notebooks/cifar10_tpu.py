# ---
# jupyter:
#   accelerator: TPU
#   colab:
#     provenance: []
#   jupytext:
#     formats: ipynb,py:percent
#     notebook_metadata_filter: accelerator,colab
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # The Data Diet recipe on CIFAR-10, on a Colab TPU
#
# <a href="https://colab.research.google.com/github/<org>/datadiet_jax/blob/main/experiments/notebooks/cifar10_tpu.ipynb"><img src="https://colab.research.google.com/assets/colab-badge.svg" alt="Open In Colab"/></a>
#
# The original recipe (ResNet18 for 32x32 images, SGD with Nesterov momentum, lr 0.1,
# weight decay 5e-4, batch 128, reflect-pad crop + flip, examples sorted by class, the
# original seeds), through the library's Python API:
#
# 1. **score runs**: `NUM_SCORE_RUNS` runs trained to epoch `SCORE_EPOCH`, each batch split
#    over all the accelerator's cores (`jax.sharding` data parallelism);
# 2. **scores**: EL2N and GraNd at epoch `SCORE_EPOCH` averaged over the runs, forgetting
#    events up to that epoch, GraNd at initialisation over `GRAND_INIT_RUNS` inits, input
#    norm;
# 3. a **reduced Figure 1**: prune by each score, retrain for the full-data run's number of
#    steps (`SWEEP_EPOCHS` epochs instead of 200), table and plot.
#
# Runtime: *Runtime → Change runtime type → TPU* (any GPU, or the CPU, works too: the same
# code runs on whatever `jax.devices()` lists). All sizes are in the parameters cell.
# Everything is written under `WORKDIR`; rerunning a cell resumes interrupted runs from
# their last checkpoint and skips finished ones (on Colab, point `WORKDIR` at Google Drive
# to survive a disconnect).

# %%
# Setup: installs the package where it is missing (a fresh Colab runtime; replace <org>
# with the GitHub organisation that hosts the repository) and lists the devices. A Colab
# TPU runtime comes with JAX for TPU; elsewhere, `pip install -U "jax[tpu]"` (TPU VM) or
# `pip install -U "jax[cuda12]"` (NVIDIA GPU) first.
import importlib.util
import subprocess
import sys

REPO_URL = "https://github.com/<org>/datadiet_jax"
if importlib.util.find_spec("datadiet_jax") is None:
  subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"git+{REPO_URL}"], check=True)

import jax

print("jax", jax.__version__, "backend:", jax.default_backend())
print(jax.device_count(), "devices:", jax.devices())  # a TPU v2-8: 8 TpuDevice entries

# %% tags=["parameters"]
# Parameters: every size of this notebook. DATADIET_NOTEBOOK_SMOKE=1 (the CI test) selects
# the smoke sizes at the bottom; DATADIET_CIFAR_DATA overrides the image-folder path.
import os

DATA_SOURCE = "auto"      # "tfds": download CIFAR-10 with tensorflow-datasets (internet);
                          # "image_folder": DATA; "auto": tfds if installed and online
TFDS_DIR = "tfds"         # where tensorflow-datasets prepares CIFAR-10
DATA = os.environ.get("DATADIET_CIFAR_DATA", "cifar10-jpeg.tar.gz")  # folder or .tar(.gz)
WORKDIR = "workdirs/notebook_cifar10_tpu"
TRAIN_PER_CLASS = None    # None: all 50,000 training images
TEST_PER_CLASS = None     # None: all 10,000 test images
MODEL, NUM_FILTERS, DTYPE = "resnet18_lowres", 64, "float32"
BATCH_SIZE = 128          # split over the devices: must divide by jax.device_count()
DATA_PARALLEL = True      # shard every batch over all devices
# Score runs: the original recipe (lr 0.1 until epoch 60), stopped at the score epoch.
NUM_SCORE_RUNS = 4
SCORE_EPOCH = 20          # EL2N and GraNd at this epoch (the paper: 20)
GRAND_INIT_RUNS = 10
SCORE_BATCH_SIZE = 256
# The reduced Figure 1: every run trains SWEEP_EPOCHS epochs of the full set's steps.
SWEEP_EPOCHS = 30
METHODS = ("random", "el2n:hardest", "grand:hardest", "grand_init:hardest")
PRUNE_FRACTIONS = (0.3, 0.5, 0.7)
NUM_SEEDS = 1

SMOKE = os.environ.get("DATADIET_NOTEBOOK_SMOKE") == "1"
if SMOKE:  # CI on CPU: the same steps at toy size
  DATA_SOURCE, WORKDIR = "image_folder", "workdirs/notebook_cifar10_tpu_smoke"
  TRAIN_PER_CLASS, TEST_PER_CLASS = 16, 10
  MODEL, NUM_FILTERS, BATCH_SIZE = "simple_cnn", 8, 32
  NUM_SCORE_RUNS, SCORE_EPOCH, GRAND_INIT_RUNS, SCORE_BATCH_SIZE = 2, 1, 2, 80
  SWEEP_EPOCHS, METHODS, PRUNE_FRACTIONS = 3, ("random", "el2n:hardest"), (0.5,)

# %%
import dataclasses
import socket

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Image, Markdown, display

from datadiet_jax import artifacts
from datadiet_jax.data import load_dataset
from datadiet_jax.models import get_model
from datadiet_jax.train.loop import TrainConfig, run_paths
from datadiet_jax.train.optimizer import OptimizerConfig
from datadiet_jax.train.sharding import data_parallel_mesh
from datadiet_jax.pipelines.figure1 import (Figure1Config, compute_scores, parse_method, run_figure1,
                                 spearman_matrix)
from datadiet_jax.pipelines.setup import SeedScheme
from datadiet_jax.pipelines.train_runs import run_dir

# %% [markdown]
# ## Data
#
# With internet (Colab), tensorflow-datasets downloads and prepares CIFAR-10 once into
# `TFDS_DIR` (in the array_record format, which the library reads without TensorFlow).
# Without, point `DATA` at an image folder of CIFAR-10 — `{train,test}/<class>/*.png|jpg`,
# a directory or a `.tar`/`.tar.gz` (upload it, or mount Drive).

# %%
def online(host="storage.googleapis.com", port=443, timeout=3.0) -> bool:
  try:
    socket.create_connection((host, port), timeout=timeout).close()
    return True
  except OSError:
    return False


source = DATA_SOURCE
if source == "auto":
  has_tfds = importlib.util.find_spec("tensorflow_datasets") is not None
  source = "tfds" if has_tfds and online() else "image_folder"
if source == "tfds":
  import tensorflow_datasets as tfds
  tfds.builder("cifar10", data_dir=TFDS_DIR, file_format="array_record").download_and_prepare()
  dataset = load_dataset("cifar10", data_dir=TFDS_DIR, sort_by_class=True,
                         train_per_class=TRAIN_PER_CLASS)
else:
  dataset = load_dataset("image_folder", data_dir=DATA, sort_by_class=True,
                         train_per_class=TRAIN_PER_CLASS)
if TEST_PER_CLASS:
  keep = np.concatenate([np.flatnonzero(dataset.test_labels == c)[:TEST_PER_CLASS]
                         for c in range(dataset.num_classes)])
  dataset = dataset.replace(test_images=dataset.test_images[keep],
                            test_labels=dataset.test_labels[keep])
print(f"{source}: {dataset.num_train} train / {dataset.num_test} test, images "
      f"{dataset.image_shape}, {dataset.num_classes} classes")

# %% [markdown]
# ## Model, recipe, devices

# %%
model = get_model(MODEL, dataset.num_classes, NUM_FILTERS, DTYPE)
steps_per_epoch = dataset.num_train // BATCH_SIZE
mesh = data_parallel_mesh() if DATA_PARALLEL else None
if mesh is not None and BATCH_SIZE % mesh.size:
  raise ValueError(f"BATCH_SIZE={BATCH_SIZE} does not split over {mesh.size} devices")
# The original optimizer and schedule (x0.2 after epochs 60, 120, 160 of 200) for the
# score runs; the sweep's runs use the same shape squeezed into SWEEP_EPOCHS.
score_optimizer = OptimizerConfig()
sweep_optimizer = OptimizerConfig(
    decay_epochs=tuple(max(1, round(SWEEP_EPOCHS * f)) for f in (0.3, 0.6, 0.8)))
score_train = TrainConfig(num_steps=SCORE_EPOCH * steps_per_epoch, batch_size=BATCH_SIZE,
                          eval_every_steps=0, save_steps=-1)
sweep_train = TrainConfig(num_steps=SWEEP_EPOCHS * steps_per_epoch, batch_size=BATCH_SIZE,
                          eval_every_steps=-1, save_steps=-1)
score_step = SCORE_EPOCH * steps_per_epoch
config = Figure1Config(
    methods=tuple(parse_method(m) for m in METHODS), prune_fractions=PRUNE_FRACTIONS,
    score_names=("el2n", "grand", "forgetting", "grand_init", "input_norm"),
    num_score_runs=NUM_SCORE_RUNS, score_step=score_step, score_train_steps=score_step,
    grand_init_runs=GRAND_INIT_RUNS, num_seeds=NUM_SEEDS, score_batch_size=SCORE_BATCH_SIZE)


seeds_of = SeedScheme()  # run r: model seed 42 + r·424242, data seed 4242 + r·424242


print(f"{MODEL} ({NUM_FILTERS} filters, {DTYPE}), batch {BATCH_SIZE} over "
      f"{mesh.size if mesh is not None else 1} device(s), {steps_per_epoch} steps/epoch; "
      f"score runs {score_step} steps, sweep runs {sweep_train.num_steps} steps")

# %% [markdown]
# ## 1-2. Score runs and scores
#
# The score runs train one after another, each data-parallel over all devices, and save a
# checkpoint at the score step; EL2N and GraNd are then computed from those checkpoints for
# all examples and runs in one compiled function, GraNd at init from fresh inits.
# Training curves: `metrics.csv` per run, and TensorBoard (the next cell, in Colab).

# %%
scores = compute_scores(WORKDIR, dataset, model, score_optimizer, score_train, config,
                        seeds_of, progress=True, mesh=mesh)
print({name: value.shape for name, value in scores.items()})

# %%
fig, ax = plt.subplots(figsize=(6.4, 3.8))
for r in range(NUM_SCORE_RUNS):
  metrics = np.genfromtxt(run_paths(run_dir(os.path.join(WORKDIR, "score_runs"), r))["metrics"],
                          delimiter=",", names=True)
  ax.plot(metrics["epoch"], 100 * metrics["test_accuracy"], marker=".", label=f"run {r}")
ax.set_xlabel("epoch")
ax.set_ylabel("test accuracy (%)")
ax.set_title("score runs")
ax.grid(alpha=0.3)
ax.legend()
plt.show()

# %%
# TensorBoard inside Colab (every run writes its scalars under <run dir>/tensorboard/).
if "google.colab" in sys.modules:
  get_ipython().run_line_magic("load_ext", "tensorboard")
  get_ipython().run_line_magic("tensorboard", f"--logdir {WORKDIR}")

# %%
labels = {"el2n": f"EL2N@ep{SCORE_EPOCH}", "grand": f"GraNd@ep{SCORE_EPOCH}",
          "forgetting": "forgetting", "grand_init": "GraNd@init", "input_norm": "input norm"}
names, rho = spearman_matrix(scores)
display(Markdown("Spearman rank correlations over the training examples:\n\n"
                 "| | " + " | ".join(labels[n] for n in names) + " |\n|---|"
                 + "---|" * len(names) + "\n"
                 + "\n".join(f"| {labels[a]} | " + " | ".join(f"{rho[i, j]:.3f}"
                                                               for j in range(len(names)))
                             + " |" for i, a in enumerate(names))))
fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3))
for ax, name in zip(axes, names):
  values = scores[name]
  never = int(np.sum(~np.isfinite(values)))
  ax.hist(values[np.isfinite(values)], bins=40)
  ax.set_title(labels[name] + (f" ({never} never learned)" if never else ""), fontsize=9)
fig.suptitle("score distributions over the training examples")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 3. A reduced Figure 1
#
# For each method and fraction pruned: keep the examples the score ranks hardest (or a
# random subset), retrain from scratch for `SWEEP_EPOCHS` epochs' worth of full-data steps
# (the original's equal-step rule), test. The scores above are reused.

# %%
out = run_figure1(WORKDIR, dataset, model, sweep_optimizer, sweep_train, config, seeds_of,
                  progress=True, mesh=mesh)
display(Markdown(open(out["paths"]["markdown"]).read().split("\n\nSpearman")[0]))
display(Image(out["paths"]["plot"]))
artifacts.write_json(os.path.join(WORKDIR, "results", "notebook_summary.json"), {
    "devices": [str(d) for d in jax.devices()], "data_source": source,
    "num_train": dataset.num_train, "score_step": score_step,
    "sweep_steps": sweep_train.num_steps, "rows": out["rows"],
    "spearman": {f"{a}|{b}": float(rho[i, j]) for i, a in enumerate(names)
                 for j, b in enumerate(names)}})

# %% [markdown]
# At the full recipe (200 epochs, several seeds) the paper reports that keeping the
# highest-EL2N half of CIFAR-10 loses little accuracy while random pruning loses more;
# with `SWEEP_EPOCHS` epochs and one seed, differences of a point or two are within noise.
