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
# # Dynamic data pruning: accuracy vs training compute
#
# <a href="https://colab.research.google.com/github/<org>/datadiet_jax/blob/main/experiments/notebooks/dynamic_pruning.ipynb"><img src="https://colab.research.google.com/assets/colab-badge.svg" alt="Open In Colab"/></a>
#
# Static pruning scores the data once and trains on a fixed subset. *Dynamic* pruning
# re-scores the training set every few epochs and trains the next epochs on the currently
# hardest examples ("NLU on Data Diets"); InfoBatch instead drops a random share of the
# well-learned (low-loss) examples each epoch and rescales the loss of the rest. This
# notebook runs the library's dynamic-pruning sweep (`run_dynamic_sweep`) on the embedded
# digits (no download) with the settings of `experiments/flags/dynamic_digits.flags`:
#
# - full data; static EL2N (scored once, after the warm-up); dynamic EL2N, loss and random
#   re-scored every 2 epochs at keep 30/50/70 %; InfoBatch at r = 0.3/0.5/0.7;
# - every run 15 epochs (pruned epochs are shorter: that is the saving), 2 seeds;
# - test accuracy against the fraction of the full run's training compute used (scoring
#   passes counted at 1/3 of a training step per example).

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

WORKDIR = "workdirs/notebook_dynamic_pruning"
NUM_FILTERS, BATCH_SIZE, LEARNING_RATE, DECAY_EPOCHS = 16, 32, 0.05, (10,)
NUM_EPOCHS = 15
METHODS = ("full", "static_el2n", "dynamic_el2n", "dynamic_loss", "dynamic_random",
           "infobatch")
KEEP_FRACTIONS = (0.3, 0.5, 0.7)
INFOBATCH_RATIOS = (0.3, 0.5, 0.7)
INFOBATCH_DELTA = 0.875
WARMUP_EPOCHS, RESCORE_EVERY = 2, 2
NUM_SEEDS = 2

SMOKE = os.environ.get("DATADIET_NOTEBOOK_SMOKE") == "1"
if SMOKE:  # CI: the same sweep in seconds
  WORKDIR = "workdirs/notebook_dynamic_pruning_smoke"
  NUM_FILTERS, NUM_EPOCHS, DECAY_EPOCHS, WARMUP_EPOCHS, RESCORE_EVERY = 4, 3, (2,), 1, 1
  METHODS, KEEP_FRACTIONS, INFOBATCH_RATIOS = ("full", "dynamic_el2n", "infobatch"), (0.5,), (0.5,)
  NUM_SEEDS = 1

# %%
import jax
from IPython.display import Image, Markdown, display

from datadiet_jax.data import load_dataset
from datadiet_jax.models import get_model
from datadiet_jax.pipelines.dynamic_sweep import DynamicSweepConfig, run_dynamic_sweep
from datadiet_jax.pipelines.setup import SeedScheme
from datadiet_jax.train.loop import TrainConfig
from datadiet_jax.train.optimizer import OptimizerConfig

print("jax", jax.__version__, "devices:", jax.devices())

# %%
dataset = load_dataset("digits", sort_by_class=True)
model = get_model("small_cnn", dataset.num_classes, NUM_FILTERS)
optimizer = OptimizerConfig(learning_rate=LEARNING_RATE, decay_epochs=DECAY_EPOCHS)
train = TrainConfig(num_steps=NUM_EPOCHS * (dataset.num_train // BATCH_SIZE),
                    batch_size=BATCH_SIZE, eval_every_steps=-1, save_steps=-1,
                    eval_batch_size=512, augment=False, track_forgetting=False)
config = DynamicSweepConfig(
    num_epochs=NUM_EPOCHS, methods=METHODS, keep_fractions=KEEP_FRACTIONS,
    infobatch_ratios=INFOBATCH_RATIOS, infobatch_delta=INFOBATCH_DELTA, num_seeds=NUM_SEEDS,
    warmup_epochs=WARMUP_EPOCHS, rescore_every=RESCORE_EVERY)


seeds_of = SeedScheme()  # run r: model seed 42 + r·424242, data seed 4242 + r·424242


# %% [markdown]
# ## Run the sweep
#
# One progress bar per run; everything goes under `WORKDIR/dynamic/` (each run resumable,
# with its `metrics.csv` and TensorBoard scalars, which include the number of examples the
# run trained on at each evaluation).

# %%
out = run_dynamic_sweep(WORKDIR, dataset, model, optimizer, train, config, seeds_of)
display(Markdown(open(out["paths"]["markdown"]).read()))
display(Image(out["paths"]["plot"]))

# %% [markdown]
# Read the plot left to right: a method is worth its compute if its point sits above the
# others at the same compute fraction. Dynamic re-scoring pays for its scoring passes;
# InfoBatch's loss rescaling keeps it close to full-data accuracy at moderate savings.
