"""The pretrained fine-tuning recipe (experiments/flags/*_minilm.flags) end to end on a tiny
random checkpoint saved by transformers: the same flagfile a user runs with all-MiniLM-L6-v2,
only --pretrained_dir and the length of the run changed.

Checked against independent computations: the step-0 encoder is the checkpoint's tensors
bit for bit (torch Linear [out, in] -> Flax [in, out]); the first AdamW update is the
hand-derived -lr_1 * (g / (|g| + eps) + wd * theta) (Adam's first step has |m^ / sqrt(v^)| = 1
wherever the gradient is non-zero; decay on matrices only); the logged lr follows warm-up +
linear decay; every epoch reports intent accuracy and slot F1.
"""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
ocp = pytest.importorskip("orbax.checkpoint")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NLP_TAR = os.path.normpath(os.path.join(REPO, "..", "shared", "data", "nlp-text.tar.gz"))
# Specials + frequent SNIPS words: enough WordPiece coverage that the tiny encoder sees words.
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "play", "the", "music", "song", "by", "add", "to",
         "my", "playlist", "what", "is", "weather", "in", "book", "a", "restaurant", "for",
         "find", "movie", "schedule", "rate", "this", "stars", "out", "of", "me", "i", "want",
         "tomorrow", "at", "will", "it", "be", "and", "on", "album", "track", "give", "show",
         "list", "points", "##s", "##ing", "table", "people", "forecast", "cold", "now"]
LR, WEIGHT_DECAY, PER_CLASS, BATCH = 2e-4, 0.01, 10, 32


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
  torch.manual_seed(0)
  config = transformers.BertConfig(vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=2,
                                   num_attention_heads=4, intermediate_size=64,
                                   max_position_embeddings=64, type_vocab_size=2,
                                   attn_implementation="eager")
  model = transformers.BertModel(config).eval()
  directory = str(tmp_path_factory.mktemp("tiny_pretrained"))
  model.save_pretrained(directory)  # config.json + model.safetensors, as the hub's folders
  with open(os.path.join(directory, "vocab.txt"), "w") as f:
    f.write("\n".join(WORDS) + "\n")
  tensors = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
  return directory, tensors


def _restore_params(checkpoint_dir: str, step: int) -> dict:
  """The raw params tree of one step's Orbax checkpoint (no template: numpy arrays)."""
  with ocp.CheckpointManager(checkpoint_dir) as manager:
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  return restored["state"]["params"]


def _flat(tree, prefix=()):
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from _flat(value, prefix + (key,))
    else:
      yield "/".join(prefix + (key,)), np.asarray(value)


@pytest.mark.skipif(not os.path.exists(NLP_TAR), reason="shared nlp-text.tar.gz absent")
def test_snips_recipe_fine_tunes_a_transformers_checkpoint(tiny_checkpoint, tmp_path, cli_env):
  directory, tensors = tiny_checkpoint
  workdir = tmp_path / "snips"
  args = ["--flagfile=experiments/flags/snips_minilm.flags", f"--pretrained_dir={directory}",
          f"--workdir={workdir}", f"--data_dir={NLP_TAR}", f"--train_per_class={PER_CLASS}",
          "--warmup_steps=1", "--save_steps=1", "--noprogress"]
  result = subprocess.run([sys.executable, "-m", "experiments.text", *args], cwd=REPO,
                          env=cli_env, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]

  config = json.loads((workdir / "config.json").read_text())
  assert config["pretrained_dir"] == directory
  assert (config["bert_config"]["hidden_size"], config["bert_config"]["num_hidden_layers"]) == (
      32, 2)
  assert config["optimizer"]["optimizer"] == "adamw"
  assert config["optimizer"]["learning_rate"] == LR
  assert config["optimizer"]["schedule"] == "linear"
  num_train = config["num_train"]
  steps_per_epoch = num_train // BATCH
  total = 3 * steps_per_epoch  # the flagfile's 3 epochs
  assert config["train"]["num_steps"] == total

  # One row per epoch (+ step 0) with intent accuracy and seqeval slot F1; the lr column is
  # warm-up (1 step) then linear decay to 0 at the last step: lr(t) = LR * (T - t) / (T - 1).
  with open(workdir / "runs" / "run_0" / "metrics.csv") as f:
    rows = list(csv.DictReader(f))
  assert [int(r["step"]) for r in rows] == [0] + [e * steps_per_epoch for e in (1, 2, 3)]
  for row in rows[1:]:
    t = int(row["step"])
    assert float(row["lr"]) == pytest.approx(LR * (total - t) / (total - 1), rel=1e-6)
    assert 0.0 <= float(row["test_accuracy"]) <= 1.0
    assert 0.0 <= float(row["test_slot_f1"]) <= 1.0

  checkpoints = str(workdir / "runs" / "run_0" / "checkpoints")
  step0, step1 = _restore_params(checkpoints, 0), _restore_params(checkpoints, 1)
  bert0 = dict(_flat(step0["bert"]))
  # The loaded encoder is the checkpoint, bit for bit (name map + transposes, independently).
  np.testing.assert_array_equal(bert0["word_embeddings/embedding"],
                                tensors["embeddings.word_embeddings.weight"])
  np.testing.assert_array_equal(bert0["layer_1/intermediate/kernel"],
                                tensors["encoder.layer.1.intermediate.dense.weight"].T)
  np.testing.assert_array_equal(
      bert0["layer_0/attention/query/kernel"].reshape(32, 32),
      tensors["encoder.layer.0.attention.self.query.weight"].T)
  np.testing.assert_array_equal(bert0["layer_1/output_norm/scale"],
                                tensors["encoder.layer.1.output.LayerNorm.weight"])

  # The first AdamW step at lr_1 = LR (warm-up of 1 step): per entry
  # r = -(theta_1 - theta_0) / lr_1 - wd * theta_0 [matrices] is g / (|g| + eps), so |r| <= 1
  # everywhere, |r| = 1 wherever |g| >> eps = 1e-8, and 0 where g = 0 (unused word rows).
  # (Attention key gradients can be ~eps: softmax ignores a shift of the scores.)
  lr1, after_by_name = LR, dict(_flat(step1))
  feed_forward = []
  for name, before in _flat(step0):
    decay = WEIGHT_DECAY * before if before.ndim >= 2 else 0.0
    r = np.abs(-(after_by_name[name].astype(np.float64) - before) / lr1 - decay)
    assert r.max() < 1 + 2e-2, (name, float(r.max()))
    if name.endswith(("intermediate/kernel", "output/kernel")) and "/layer_" in name:
      feed_forward.append(float((np.abs(r - 1) < 2e-2).mean()))
  assert len(feed_forward) == 6 and min(feed_forward) > 0.99, feed_forward  # 2 layers x 3
