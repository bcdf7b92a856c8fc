"""Flags shared by the experiment entry points, and the conversions flags -> configs.

Every run writes into --workdir: flags.txt (all flag values, re-usable as a flagfile),
run_info.json (versions, git commit, devices, seeds, dataset), train.log (readable log)
and one folder per run under runs/.
"""

from __future__ import annotations

import dataclasses
import logging
import sys

from absl import flags

from datadiet_jax.data.loader import LoaderConfig
from datadiet_jax.data.sources import DATASET_NAMES, TEXT_DATASET_NAMES
from datadiet_jax.models import MODEL_NAMES, TEXT_MODEL_NAMES
# check_score_step, check_workdir_path, model_record, setup_logging: used by the entry
# points as common.<name> (the library's functions).
from datadiet_jax.pipelines.setup import (DataConfig, ModelConfig, SeedScheme,  # noqa: F401
                                          build_model, check_score_step, load_data,
                                          model_record, train_config_for)
from datadiet_jax.pipelines.workdir import (check_workdir_path, prepare_workdir,  # noqa: F401
                                            setup_logging)
from datadiet_jax.train.loop import TrainConfig
from datadiet_jax.train.optimizer import OPTIMIZERS, SCHEDULES, OptimizerConfig

FLAGS = flags.FLAGS
log = logging.getLogger("datadiet_jax")

# Where: data and outputs.
flags.DEFINE_string("workdir", None, "Output folder of the experiment (created; reruns resume).")
flags.DEFINE_enum("dataset", "digits", DATASET_NAMES + TEXT_DATASET_NAMES, "Dataset source "
                  "(text: joint_nlu, text_tsv, or a TFDS text name; see data/sources.py).")
flags.DEFINE_string("data_dir", None, "Dataset location (folder/tar for image_folder, the "
                    "batches folder for *_pickle, the TFDS data_dir for cifar10/cifar100).")
flags.DEFINE_string("cache_dir", None, "Cache for decoded arrays (default $DATADIET_CACHE or "
                    "~/.cache/datadiet_jax).")
flags.DEFINE_bool("sort_by_class", True, "Order train/test examples by label (stable sort), "
                  "as the original code did. Scores are indexed by this order.")
flags.DEFINE_integer("train_per_class", None, "Keep only this many train examples per class "
                     "(class-balanced random subset with --subset_seed).", lower_bound=1)
flags.DEFINE_integer("subset_seed", 0, "Seed of the --train_per_class subset.")
flags.DEFINE_bool("verify_records", False, "--dataset=records: also check every shard's "
                  "sha256 against the manifest before anything is written (reads each shard "
                  "whole once; sizes, counts and first ids are always checked).")
flags.DEFINE_string("example_ids_file", None, "Train only these train examples: a .npy "
                    "(e.g. a kept_ids.npy) or text file of global example ids (the row index "
                    "of an in-memory data set, the records' ids of --dataset=records), or, "
                    "for --dataset=image_folder, a file list of '/<class>/<file> <label>' "
                    "lines (Dyn-Unc's published coresets, DALI's layout); the data is not "
                    "rewritten, scores still cover every example.")

# What: the model.
flags.DEFINE_enum("model", "small_cnn", MODEL_NAMES + TEXT_MODEL_NAMES, "Model architecture "
                  "(text data sets: bert).")
flags.DEFINE_integer("num_filters", None, "Width of the model (default: the architecture's).",
                     lower_bound=1)
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16", "float16"], "Compute dtype.")
flags.DEFINE_enum("conv_impl", "xla", ["xla", "auto", "matmul", "onednn"],
                  "Image models: how convolutions are computed. xla = XLA's own; matmul = "
                  "XLA's forward, weight gradient from im2col patches in cache-sized chunks "
                  "and matmuls (models/conv.py); auto = matmul on CPU, xla on GPU/TPU; "
                  "onednn = forward and both gradients by oneDNN custom calls (CPU only, the "
                  "fastest there; needs the onednn extra and g++; models/onednn_conv.py). "
                  "All equal to float32 rounding. Changes the bits, not the parameters: keep "
                  "it fixed within a sweep.")

# Text: tokenization and the BERT encoder (see experiments/text.py).
flags.DEFINE_string("text_subset", None, "Text: which data set of a folder/archive holding "
                    "several (e.g. snips, atis, sst2 in nlp-text.tar.gz).")
flags.DEFINE_integer("max_length", 64, "Text: tokens per example incl. [CLS]/[SEP]; longer "
                     "examples are truncated (counted in the log).", lower_bound=3)
flags.DEFINE_integer("trim_padding_multiple", 0, "Text: cut every train batch to its longest "
                     "example rounded up to a multiple of this (0: off, batches keep "
                     "--max_length): the same model and loss (dropout masks are drawn for the "
                     "cut shape), fewer padded tokens computed, one compile per length; "
                     "1.65x faster steps for MiniLM on ATIS at 48 -> 32 tokens.", lower_bound=0)
flags.DEFINE_bool("lowercase", True, "Text, word-level vocabulary: lower-case words (with "
                  "--pretrained_dir the checkpoint's do_lower_case decides).")
flags.DEFINE_integer("min_word_count", 1, "Text, word-level vocabulary: keep train words seen "
                     "at least this often (others are [UNK]).", lower_bound=1)
flags.DEFINE_string("pretrained_dir", None, "Text: a Hugging Face style BERT folder "
                    "(config.json, model.safetensors, vocab.txt): its WordPiece vocabulary "
                    "and encoder weights are used (never downloads).")
flags.DEFINE_integer("bert_layers", 2, "Text, from scratch: encoder layers.", lower_bound=1)
flags.DEFINE_integer("bert_hidden", 64, "Text, from scratch: hidden size.", lower_bound=1)
flags.DEFINE_integer("bert_heads", 2, "Text, from scratch: attention heads.", lower_bound=1)
flags.DEFINE_integer("bert_intermediate", 128, "Text, from scratch: feed-forward size.",
                     lower_bound=1)
flags.DEFINE_float("dropout", 0.1, "Text, from scratch: hidden and attention dropout.",
                   lower_bound=0.0, upper_bound=1.0)

# How: the original recipe by default.
flags.DEFINE_float("lr", 0.1, "Base learning rate.")
flags.DEFINE_float("momentum", 0.9, "SGD momentum.")
flags.DEFINE_bool("nesterov", True, "Nesterov momentum.")
flags.DEFINE_float("weight_decay", 5e-4, "Weight decay added to the gradient.")
flags.DEFINE_enum("lr_schedule", "stepped", SCHEDULES, "Learning-rate schedule (linear: "
                  "warm-up over --warmup_steps, then linear decay to 0 at the last step).")
flags.DEFINE_enum("optimizer", "sgd", OPTIMIZERS, "sgd (the original: momentum, coupled "
                  "weight decay) or adamw (decoupled decay on matrices; BERT fine-tuning).")
flags.DEFINE_list("decay_epochs", ["60", "120", "160"], "Epochs after which the stepped "
                  "schedule multiplies the lr by --decay_factor.")
flags.DEFINE_float("decay_factor", 0.2, "Stepped-schedule factor.")
flags.DEFINE_integer("warmup_steps", 0, "Linear lr warm-up over this many steps: on top of "
                     "--lr_schedule (lr * min(1, step / warmup_steps); 0: none, the original); "
                     "the linear schedule's own warm-up.", lower_bound=0)
flags.DEFINE_integer("batch_size", 128, "Train batch size.", lower_bound=1)
flags.DEFINE_integer("num_epochs", 200, "Training length in epochs (used if --num_steps=0).",
                     lower_bound=0)
flags.DEFINE_integer("num_steps", 0, "Training length in steps (0: --num_epochs epochs).",
                     lower_bound=0)
flags.DEFINE_integer("eval_every_steps", 0, "Test every this many steps (0: every epoch; "
                     "-1: only at the start and the end).", lower_bound=-1)
flags.DEFINE_integer("eval_batch_size", 1024, "Test batch size.", lower_bound=1)
flags.DEFINE_integer("save_steps", 0, "Checkpoint every this many steps (0: every epoch; "
                     "-1: only step 0 and the last step).", lower_bound=-1)
flags.DEFINE_integer("early_save_steps", 0, "Extra checkpoints every this many steps up to "
                     "--early_step.", lower_bound=0)
flags.DEFINE_integer("early_step", 0, "End of the early checkpoint schedule.", lower_bound=0)
flags.DEFINE_bool("augment", True, "Reflect-pad-4 crop + horizontal flip (on device).")
flags.DEFINE_bool("track_forgetting", True, "Track forgetting events during training.")

# Runs and seeds: run r uses model seed base + r * stride, data seed base + r * stride.
flags.DEFINE_integer("num_runs", 1, "Independent runs (seeds) to train.", lower_bound=1)
flags.DEFINE_integer("model_seed", 42, "Model seed of run 0.")
flags.DEFINE_integer("data_seed", 4242, "Data-order/augmentation seed of run 0.")
flags.DEFINE_integer("seed_stride", 424242, "Seed increment between runs.")

# Execution.
flags.DEFINE_bool("progress", True, "Show progress bars.")
flags.DEFINE_bool("tensorboard", True, "Write each run's metrics (and scoring seconds) as "
                  "TensorBoard scalars under <run dir>/tensorboard/ (tensorboard --logdir "
                  "<workdir>).")
flags.DEFINE_list("track_dynamics", [], "Training-dynamics scores each run accumulates "
                  "besides forgetting, saved with every checkpoint (train/dynamics.py): any of "
                  "aum, dyn_unc, dual, tdds; then --scores can name them.")
flags.DEFINE_integer("dynamics_window", 10, "Visits per sliding window of dyn_unc, dual and "
                     "tdds (the papers' J / K).", lower_bound=2)
flags.DEFINE_integer("loader_workers", 0, "grain worker processes that read and decode the "
                     "training batches ahead of the step (datadiet_jax/data/loader.py; "
                     "0 = none). The batches, and results, are the same either way.",
                     lower_bound=0)
flags.DEFINE_integer("loader_threads", 0, "grain read threads in the training process "
                     "(with --loader_workers=0); 0 = read each batch when its step runs.",
                     lower_bound=0)
flags.DEFINE_integer("loader_prefetch", 2, "Batches each grain reader keeps ready.",
                     lower_bound=1)
flags.DEFINE_integer("device_prefetch", 0, "Training batches placed on the device ahead of "
                     "their step.", lower_bound=0)
flags.DEFINE_bool("data_parallel", False, "Split each batch over all local devices "
                  "(jax.sharding); the batch size must divide by the device count.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host).")
flags.DEFINE_integer("ensemble_members", 1, "Train this many runs (score runs, --num_runs, "
                     "Figure 1's seeds) together in one jitted step over a member axis; 1 = "
                     "one run at a time. "
                     "Groups shrink (with a warning) to what fits in device memory.",
                     lower_bound=1)
flags.DEFINE_enum("ensemble_strategy", "auto", ["auto", "vmap", "map"], "How an ensemble step "
                  "runs its members: vmap (accelerators), map = unrolled loop (CPU, where vmapped convs are "
                  "slow); auto = map on CPU, vmap on GPU/TPU.")
flags.DEFINE_integer("stop_after_step", None, "Stop each run after this step (simulates an "
                     "interruption; rerun the same command to resume).", lower_bound=1)


def config_from_flags(cls, **flag_names):
  """A `cls` dataclass with each field the value of the flag of its name (or of
  flag_names[field])."""
  return cls(**{f.name: FLAGS[flag_names.get(f.name, f.name)].value
                for f in dataclasses.fields(cls)})


def seeds_from_flags() -> SeedScheme:
  return SeedScheme(FLAGS.model_seed, FLAGS.data_seed, FLAGS.seed_stride)


def run_seeds(run: int) -> tuple[int, int]:
  """(model seed, data seed) of run `run`, the original scheme 42 + r*424242, 4242 + r*424242."""
  return seeds_from_flags()(run)


def is_text() -> bool:
  return config_from_flags(DataConfig).is_text


def load_dataset_from_flags():
  return load_data(config_from_flags(DataConfig))


def example_ids_from_flags(num_train: int):
  """i64[K] ids of --example_ids_file (checked to name train examples), or None."""
  if not FLAGS.example_ids_file:
    return None
  from datadiet_jax.data import file_lists
  from datadiet_jax.data.records import check_ids, load_example_ids
  path = FLAGS.example_ids_file
  if file_lists.is_file_list(path):
    if FLAGS.dataset != "image_folder":
      raise ValueError(f"--example_ids_file {path} is a file list ('/<class>/<file> <label>' "
                       f"lines), which names files of --dataset=image_folder, not "
                       f"--dataset={FLAGS.dataset}; give global example ids instead")
    return check_ids(file_lists.ids_of_file_list(path, FLAGS.data_dir, num_train=num_train),
                     num_train, f"--example_ids_file {path}")
  return load_example_ids(path, num_train)


def model_from_flags(num_classes: int, dataset=None):
  """The model of the flags; text data sets (pass `dataset`) need --model bert."""
  return build_model(config_from_flags(ModelConfig, name="model"), FLAGS.dataset, num_classes,
                     dataset, text_data=is_text())


def optimizer_config_from_flags() -> OptimizerConfig:
  try:
    decay_epochs = tuple(int(e) for e in FLAGS.decay_epochs)
  except ValueError as error:
    raise ValueError(f"--decay_epochs must be integers, got {FLAGS.decay_epochs}") from error
  return OptimizerConfig(learning_rate=FLAGS.lr, momentum=FLAGS.momentum,
                         nesterov=FLAGS.nesterov, weight_decay=FLAGS.weight_decay,
                         schedule=FLAGS.lr_schedule, decay_epochs=decay_epochs,
                         decay_factor=FLAGS.decay_factor, optimizer=FLAGS.optimizer,
                         warmup_steps=FLAGS.warmup_steps)


def train_config_from_flags(num_train: int) -> TrainConfig:
  return train_config_for(num_train, **{name: FLAGS[name].value for name in (
      "batch_size", "num_epochs", "num_steps", "eval_every_steps", "eval_batch_size",
      "save_steps", "early_save_steps", "early_step", "augment", "track_forgetting",
      "tensorboard", "dynamics_window")}, track_dynamics=tuple(FLAGS.track_dynamics),
      loader=LoaderConfig(
          workers=FLAGS.loader_workers, threads=FLAGS.loader_threads,
          prefetch=FLAGS.loader_prefetch, device_prefetch=FLAGS.device_prefetch))


def setup_workdir(extra_info: dict | None = None) -> str:
  """Creates --workdir, writes flags.txt and run_info.json, and logs to train.log."""
  if not FLAGS.workdir:
    raise ValueError("--workdir is required (the folder where runs, scores and plots go)")
  return prepare_workdir(FLAGS.workdir, FLAGS.flags_into_string(), sys.argv, extra_info)


def mesh_from_flags():
  """A data-parallel mesh over all devices if --data_parallel, else None."""
  if not FLAGS.data_parallel:
    return None
  from datadiet_jax.train.sharding import data_parallel_mesh
  return data_parallel_mesh()


EXIT_USER_ERROR = 2  # bad input: flags, data, files, a workdir of other settings
EXIT_DIVERGED = 3    # the command ran, but runs diverged (recorded in their summary.json)


class RunsDivergedError(RuntimeError):
  """Training runs that diverged (train mode reports them and exits with EXIT_DIVERGED)."""


def exit_if_diverged(results) -> None:
  """Logs failed runs; raises RunsDivergedError naming every diverged run."""
  from datadiet_jax.train import outcome
  for result in results:
    if result.outcome == outcome.FAILED:
      log.warning("run %s ended at chance level (test loss %.4f): recorded as failed in its "
                  "summary.json", result.run_dir, result.test_loss)
  diverged = [r for r in results if r.outcome == outcome.DIVERGED]
  if diverged:
    runs = "; ".join(f"{r.run_dir} at step {r.diverged_step} (train loss {r.diverged_loss})"
                     for r in diverged)
    raise RunsDivergedError(
        f"{len(diverged)} of {len(results)} runs diverged: {runs}. Nothing after those steps "
        f"was saved; try a lower --lr (now {FLAGS.lr:g}) or a learning-rate warm-up, in a "
        "new --workdir")


def user_error_message(error: BaseException) -> str:
  """One line for a user error (OSError: the path and the system's reason)."""
  if isinstance(error, OSError) and error.filename and error.strerror:
    return (f"{error.strerror}: {error.filename} (a file-system problem: check the paths "
            "given, e.g. --workdir, and that they can be written)")
  return " ".join(str(error).split("\n"))


def _user_errors() -> tuple:
  """Errors caused by bad input: reported as one line and exit status 2. OSError covers
  file-system problems (a read-only or full folder, a path below a file)."""
  from datadiet_jax.checkpoint import CheckpointError
  errors = [ValueError, OSError, CheckpointError]  # FileNotFoundError, Data/Score/Selection-
  # Error; PretrainedError is a ValueError
  return tuple(errors)


USER_ERRORS = _user_errors()
