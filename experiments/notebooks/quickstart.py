# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
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
# # Quickstart: the paper's Figure 1 on an embedded dataset
#
# <a href="https://colab.research.google.com/github/<org>/datadiet_jax/blob/main/experiments/notebooks/quickstart.ipynb"><img src="https://colab.research.google.com/assets/colab-badge.svg" alt="Open In Colab"/></a>
#
# *Deep Learning on a Data Diet* (Paul, Ganguli, Dziugaite, 2021), Figure 1, end to end on
# scikit-learn's 8x8 digits (shipped with scikit-learn: nothing is downloaded), through
# the library's Python API:
#
# 1. train the **score runs** and compute per-example scores: EL2N and GraNd early in
#    training (averaged over runs), forgetting events, GraNd at initialisation (averaged
#    over random inits) and the input norm;
# 2. for every method and pruned fraction, **prune** the training set by the score and
#    **retrain** on what is kept, for as many steps as the full-data run (the original's
#    rule);
# 3. the **table** of test accuracies and the **plot** of accuracy vs fraction pruned.
#
# The parameters are those of `experiments/flags/quickstart.flags`, so this notebook and
# `python -m experiments.cifar --flagfile=experiments/flags/quickstart.flags` compute the
# same numbers. About 3 minutes on 2 CPU cores.

# %%
# Setup: installs the package where it is missing (a fresh Colab runtime). Replace <org>
# with the GitHub organisation that hosts the repository.
import importlib.util
import subprocess
import sys

REPO_URL = "https://github.com/<org>/datadiet_jax"
if importlib.util.find_spec("datadiet_jax") is None:
  subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"git+{REPO_URL}"], check=True)

# %% tags=["parameters"]
# Parameters: every size of this notebook. DATADIET_NOTEBOOK_SMOKE=1 (the CI test) selects
# the smoke sizes at the bottom.
import os

WORKDIR = "workdirs/notebook_quickstart"  # runs, scores, results; rerunning resumes
NUM_FILTERS = 16          # small_cnn width
BATCH_SIZE = 32
NUM_EPOCHS = 15           # every training run: 15 epochs of the full set = 675 steps
LEARNING_RATE = 0.05
DECAY_EPOCHS = (10,)      # lr x0.2 after epoch 10
SCORE_RUNS = 2            # runs averaged for EL2N / GraNd
SCORE_STEP = 90           # EL2N / GraNd (and forgetting) at this step (2 epochs)
GRAND_INIT_RUNS = 4       # random inits averaged for GraNd at init
METHODS = ("random", "el2n:hardest", "el2n:easiest", "grand_init:hardest",
           "input_norm:hardest")
PRUNE_FRACTIONS = (0.3, 0.5, 0.7)
NUM_SEEDS = 2             # retrainings per method and fraction

SMOKE = os.environ.get("DATADIET_NOTEBOOK_SMOKE") == "1"
if SMOKE:  # CI: the same pipeline in seconds
  WORKDIR = "workdirs/notebook_quickstart_smoke"
  NUM_FILTERS, NUM_EPOCHS, DECAY_EPOCHS = 4, 2, (1,)
  SCORE_RUNS, SCORE_STEP, GRAND_INIT_RUNS = 1, 20, 2
  METHODS, PRUNE_FRACTIONS, NUM_SEEDS = ("random", "el2n:hardest", "grand_init:hardest"), (0.5,), 1

# %%
import jax
from IPython.display import Image, Markdown, display

from datadiet_jax.data import load_dataset
from datadiet_jax.models import get_model
from datadiet_jax.train.loop import TrainConfig
from datadiet_jax.train.optimizer import OptimizerConfig
from datadiet_jax.pipelines.figure1 import Figure1Config, parse_method, run_figure1
from datadiet_jax.pipelines.setup import SeedScheme

print("jax", jax.__version__, "devices:", jax.devices())

# %% [markdown]
# ## Data, model, recipe
#
# `digits`: 1,797 8x8 grey images of 10 digits; every 5th image per class is held out as
# the test set (1,442 train / 355 test). The recipe is the original's (SGD, Nesterov
# momentum 0.9, weight decay 5e-4, stepped learning rate) at this small scale; run `r`
# uses the original seeds: model seed 42 + r·424242, data-order seed 4242 + r·424242.

# %%
dataset = load_dataset("digits", sort_by_class=True)
model = get_model("small_cnn", dataset.num_classes, NUM_FILTERS)
optimizer = OptimizerConfig(learning_rate=LEARNING_RATE, decay_epochs=DECAY_EPOCHS)
steps_per_epoch = dataset.num_train // BATCH_SIZE
train = TrainConfig(num_steps=NUM_EPOCHS * steps_per_epoch, batch_size=BATCH_SIZE,
                    eval_every_steps=-1, save_steps=-1, eval_batch_size=512, augment=False)
config = Figure1Config(
    methods=tuple(parse_method(m) for m in METHODS), prune_fractions=PRUNE_FRACTIONS,
    score_names=("el2n", "grand", "grand_init", "forgetting", "input_norm"),
    num_score_runs=SCORE_RUNS, score_step=SCORE_STEP, score_train_steps=SCORE_STEP,
    grand_init_runs=GRAND_INIT_RUNS, num_seeds=NUM_SEEDS)


seeds_of = SeedScheme()  # run r: model seed 42 + r·424242, data seed 4242 + r·424242


print(f"{dataset.name}: {dataset.num_train} train / {dataset.num_test} test, "
      f"images {dataset.image_shape}; every run trains {train.num_steps} steps")

# %% [markdown]
# ## Run the pipeline
#
# Progress bars show every training run. Everything is written under `WORKDIR`
# (checkpoints, `metrics.csv`, TensorBoard scalars, score files, the results); running the
# cell again skips what is finished.

# %%
out = run_figure1(WORKDIR, dataset, model, optimizer, train, config, seeds_of)
rows = out["rows"]
print(f"{len(rows)} trainings in the table ({out['trainings_run']} run in this call)")

# %% [markdown]
# ## Results
#
# Test accuracy per method and fraction pruned (mean ± std over seeds), and the Spearman
# rank correlations between the scores.

# %%
display(Markdown(open(out["paths"]["markdown"]).read()))

# %%
# Accuracy vs fraction pruned (mean ± std over seeds) and the score correlations, as the
# pipeline wrote them under WORKDIR/results/.
display(Image(out["paths"]["plot"]))

# %%
display(Image(out["paths"]["correlations_plot"]))

# %% [markdown]
# Read it as in the paper: keeping the examples with the highest early EL2N holds the
# accuracy longest, keeping the easiest loses it fastest, and random sits between. Watch
# the training curves of every run with `tensorboard --logdir WORKDIR` (in Colab:
# `%load_ext tensorboard` then `%tensorboard --logdir workdirs`).
