"""Text training pieces: the joint loss and joint EL2N against numpy loops (padding never
contributes), the linear warm-up/decay schedule, seqeval span F1, and exact resume of a
BERT run with dropout (keys fold_in(key, step)), trimmed batches and length-bucketed
re-scoring against the full-length computation."""

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from datadiet_jax.data.sources import load_text_dataset
from datadiet_jax.models import get_text_model
from datadiet_jax.models.bert import BertConfig
from datadiet_jax.scores.el2n import joint_el2n
from datadiet_jax.train import tasks
from datadiet_jax.train.evaluate import slot_f1
from datadiet_jax.train.loop import TrainConfig, restore_run_state, train_run
from datadiet_jax.train.optimizer import OptimizerConfig, learning_rate_schedule

NLP_TAR = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                       "nlp-text.tar.gz")


def _softmax(x):
  e = np.exp(x - x.max())
  return e / e.sum()


def test_joint_loss_and_el2n_match_numpy_loops():
  rng = np.random.RandomState(0)
  b, length, c, s = 4, 6, 3, 5
  outputs = {"intent": rng.randn(b, c).astype(np.float32),
             "slots": rng.randn(b, length, s).astype(np.float32)}
  slots = rng.randint(0, s, (b, length)).astype(np.int32)
  slots[:, 0] = -100
  slots[1, 3:] = -100
  slots[2, :] = -100  # no labelled token
  labels = {"intent": rng.randint(0, c, b).astype(np.int32), "slots": slots}
  want = {k: [] for k in ("loss", "sqrt", "sum", "mean")}
  for i in range(b):
    p = _softmax(outputs["intent"][i])
    e_int = np.linalg.norm(p - np.eye(c)[labels["intent"][i]])
    ce_int = -math.log(p[labels["intent"][i]])
    errs, ces = [], []
    for t in range(length):
      if slots[i, t] == -100:
        continue
      q = _softmax(outputs["slots"][i, t])
      errs.append(np.linalg.norm(q - np.eye(s)[slots[i, t]]))
      ces.append(-math.log(q[slots[i, t]]))
    want["loss"].append(ce_int + (np.mean(ces) if ces else 0.0))
    want["sqrt"].append(math.sqrt(e_int**2 + sum(e**2 for e in errs)))
    want["sum"].append(e_int + sum(errs))
    want["mean"].append(e_int + (np.mean(errs) if errs else 0.0))
  np.testing.assert_allclose(tasks.joint_loss(outputs, labels), want["loss"], rtol=1e-5)
  for combine in ("sqrt", "sum", "mean"):
    np.testing.assert_allclose(joint_el2n(outputs, labels, combine), want[combine], rtol=1e-5)
  # Padding / unlabelled tokens never contribute: change their logits arbitrarily.
  noisy = dict(outputs, slots=np.where((slots == -100)[..., None], 1e3 * rng.randn(b, length, s),
                                       outputs["slots"]).astype(np.float32))
  np.testing.assert_allclose(tasks.joint_loss(noisy, labels), want["loss"], rtol=1e-5)
  np.testing.assert_allclose(joint_el2n(noisy, labels, "sqrt"), want["sqrt"], rtol=1e-5)


def test_linear_warmup_then_decay():
  config = OptimizerConfig(learning_rate=0.01, optimizer="adamw", schedule="linear",
                           warmup_steps=10, total_steps=110, weight_decay=0.01)
  lr = learning_rate_schedule(config, 50)
  for t, want in ((1, 0.001), (5, 0.005), (10, 0.01), (60, 0.005), (110, 0.0)):
    assert float(lr(t)) == pytest.approx(want, abs=1e-9), t


def test_slot_f1_is_seqeval_span_f1():
  names = ("PAD", "UNK", "O", "B-a", "I-a", "B-b")
  o, ba, ia, bb = 2, 3, 4, 5
  gold = np.array([[-100, ba, ia, o, bb, -100], [-100, o, bb, -100, -100, -100]])
  # example 0: span a correct, span b missed; example 1: b correct. Ignored positions
  # (IGNORE_ID in gold) are never read, whatever is predicted there.
  pred = np.array([[bb, ba, ia, o, o, bb], [ba, o, bb, ba, ia, ba]])
  # gold spans 3, predicted 2, correct 2: P = 1, R = 2/3, F1 = 0.8
  assert slot_f1(gold, pred, names) == pytest.approx(0.8)


@pytest.mark.skipif(not os.path.exists(NLP_TAR), reason="shared nlp-text.tar.gz absent")
def test_bert_run_resumes_exactly_with_dropout(tmp_path):
  ds = load_text_dataset("joint_nlu", NLP_TAR, max_length=24, subset="snips",
                         train_per_class=4, subset_seed=0)
  config = BertConfig(vocab_size=ds.vocab_size, hidden_size=16, num_hidden_layers=1,
                      num_attention_heads=2, intermediate_size=32, max_position_embeddings=24,
                      hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.3)
  model = get_text_model(ds.num_classes, ds.num_tags, config)
  opt = OptimizerConfig(learning_rate=3e-3, optimizer="adamw", schedule="linear",
                        warmup_steps=2, weight_decay=0.01)
  train = TrainConfig(num_steps=6, batch_size=8, eval_every_steps=3, save_steps=3,
                      eval_batch_size=700, augment=False)
  full = train_run(str(tmp_path / "full"), model, ds, opt, train, 1, 2, progress=False)
  train_run(str(tmp_path / "cut"), model, ds, opt, train, 1, 2, progress=False,
            stop_after_step=3)
  resumed = train_run(str(tmp_path / "cut"), model, ds, opt, train, 1, 2, progress=False)
  assert resumed.steps_trained == 3
  a, fa = restore_run_state(str(tmp_path / "full"), 6, model, ds, opt, train, 1, 2)
  b, fb = restore_run_state(str(tmp_path / "cut"), 6, model, ds, opt, train, 1, 2)
  for x, y in zip(jax.tree_util.tree_leaves((a, fa)), jax.tree_util.tree_leaves((b, fb))):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert full.test_accuracy == resumed.test_accuracy
  header = open(tmp_path / "full" / "metrics.csv").readline()
  assert header.strip().endswith("test_slot_f1")


@pytest.mark.skipif(not os.path.exists(NLP_TAR), reason="shared nlp-text.tar.gz absent")
def test_trimmed_batches_drop_only_padding_and_keep_the_loss_and_gradients():
  data = load_text_dataset("joint_nlu", NLP_TAR, max_length=40, subset="snips",
                           train_per_class=8)
  trimmed = data.replace(trim_multiple=8)
  ids = np.arange(0, data.num_train, 3)[:16]
  full, cut = data.train_batch(ids), trimmed.train_batch(ids)
  mask = full["inputs"]["attention_mask"]
  assert (mask[:, :-1] >= mask[:, 1:]).all()  # right-padded: the premise of the cut
  longest = int(mask.sum(1).max())
  length = cut["inputs"]["token_ids"].shape[1]
  assert length % 8 == 0 and longest <= length < longest + 8 and length < data.max_length
  for key in ("token_ids", "attention_mask"):
    np.testing.assert_array_equal(cut["inputs"][key], full["inputs"][key][:, :length])
  np.testing.assert_array_equal(cut["labels"]["slots"], full["labels"]["slots"][:, :length])
  np.testing.assert_array_equal(cut["labels"]["intent"], full["labels"]["intent"])
  assert (mask[:, length:] == 0).all() and (full["labels"]["slots"][:, length:] == -100).all()
  # An ensemble's [M, B] ids are cut to the longest of all members' examples.
  stacked = trimmed.train_batch(np.stack([ids, ids[::-1] + 1]))
  assert stacked["inputs"]["token_ids"].shape[:2] == (2, len(ids))
  # The same loss and parameter gradients as the untrimmed batch (float rounding only).
  model = get_text_model(data.num_classes, data.num_tags,
                         BertConfig(vocab_size=data.vocab_size, hidden_size=16,
                                    num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=32, max_position_embeddings=40))
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), full["inputs"])

  def loss(params, batch):
    outputs = model.apply({"params": params}, batch["inputs"])
    return jnp.mean(tasks.joint_loss(outputs, batch["labels"]))

  loss_and_grad = jax.jit(jax.value_and_grad(loss))  # one program per batch length
  (loss_full, grad_full), (loss_cut, grad_cut) = (
      loss_and_grad(variables["params"], b) for b in (full, cut))
  np.testing.assert_allclose(loss_cut, loss_full, rtol=1e-6)
  for g_cut, g_full in zip(jax.tree_util.tree_leaves(grad_cut),
                           jax.tree_util.tree_leaves(grad_full)):
    np.testing.assert_allclose(g_cut, g_full, rtol=1e-4, atol=1e-7)


def test_length_buckets_cut_length_sorted_chunks_to_their_longest_example():
  from datadiet_jax.data.text import length_buckets
  real = [1, 4, 5, 12, 8, 9, 3, 2, 4]
  mask = np.zeros((len(real), 12), np.int32)
  for row, n in enumerate(real):
    mask[row, :n] = 1
  # Brute force: sorted by length (stable) 0:1 7:2 6:3 | 1:4 8:4 2:5 | 4:8 5:9 3:12, in
  # chunks of 3 whose lengths are ceil(longest / 4) * 4 = 4, 8, 12.
  assert [(length, ids.tolist()) for length, ids in length_buckets(mask, 4, 3)] == [
      (4, [0, 7, 6]), (8, [1, 8, 2]), (12, [4, 5, 3])]
  # Chunks of 2: lengths 4 (1, 2), 4 (3, 4), 8 (4, 5), 12 (8, 9), 12 (12): equal
  # consecutive lengths share a bucket.
  assert [(length, ids.tolist()) for length, ids in length_buckets(mask, 4, 2)] == [
      (4, [0, 7, 6, 1]), (8, [8, 2]), (12, [4, 5, 3])]
  with pytest.raises(ValueError, match="positive multiple"):
    length_buckets(mask, 0, 2)


@pytest.mark.parametrize("subset,dataset,max_length",
                         [("snips", "joint_nlu", 40), ("sst2", "text_tsv", 64)])
def test_rescoring_in_length_buckets_equals_the_full_length_pass(subset, dataset, max_length):
  """Dynamic pruning's re-scoring with the train batches' trimming: per-bucket cut inputs
  (and token labels) give the full-length pass's EL2N and loss, example by example."""
  from datadiet_jax.scores.current_model import score_with_variables
  data = load_text_dataset(dataset, NLP_TAR, max_length=max_length, subset=subset,
                           train_per_class=6)
  model = get_text_model(data.num_classes, data.num_tags,
                         BertConfig(vocab_size=data.vocab_size, hidden_size=16,
                                    num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=32, max_position_embeddings=max_length))
  variables = jax.jit(model.init)(jax.random.PRNGKey(3), data.train_inputs(slice(0, 2)))
  from datadiet_jax.data.text import length_buckets
  assert len(length_buckets(data.train_attention_mask, 8, 4)) >= 2  # several cut lengths
  for score in ("el2n", "loss"):
    full, bucketed = (score_with_variables(score, model, variables, data.train_inputs(),
                                           data.train_targets(), None, None, batch_size=4,
                                           trim_multiple=m) for m in (0, 8))
    assert np.isfinite(bucketed).all() and bucketed.shape == (data.num_train,)
    np.testing.assert_allclose(bucketed, full, rtol=2e-5, atol=1e-6)
