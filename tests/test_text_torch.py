"""The Flax BERT against Hugging Face's PyTorch BertModel on the same weights.

A tiny random `transformers.BertModel` is saved with `save_pretrained` and loaded through
the `--pretrained_dir` path (models.pretrained + train.state.init_variables, numpy only).
Hidden states, pooled output and the heads' logits must match PyTorch within 1e-5; EL2N,
joint EL2N (+ sum/mean), loss and GraNd (all parameters, head only) must match a PyTorch
computation (a loop over examples with torch.autograd.grad) within 1e-4 relative.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from datadiet_jax import scores as S  # noqa: E402
from datadiet_jax.data import tokenize  # noqa: E402
from datadiet_jax.models import get_text_model  # noqa: E402
from datadiet_jax.models.bert import BertEncoder  # noqa: E402
from datadiet_jax.models.pretrained import PretrainedError, vocab_and_lowercase  # noqa: E402
from datadiet_jax.train.state import init_variables  # noqa: E402

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "play", "some", "music", "by", "the", "beatles",
         "book", "a", "table", "for", "two", "##s", "at", "noon", "rain", "##ing", "is", "it",
         "in", "paris", "?", ",", "."]
NUM_CLASSES, NUM_TAGS, LENGTH = 5, 7, 12


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  torch.manual_seed(0)
  config = transformers.BertConfig(vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=2,
                                   num_attention_heads=4, intermediate_size=64,
                                   max_position_embeddings=16, type_vocab_size=2,
                                   attn_implementation="eager")
  model = transformers.BertModel(config).eval()
  with torch.no_grad():  # non-trivial LayerNorm and bias values, so the name map is tested
    for name, p in model.named_parameters():
      if "LayerNorm" in name or name.endswith("bias"):
        p.add_(0.1 * torch.randn_like(p))
  directory = str(tmp_path_factory.mktemp("tiny_bert"))
  model.save_pretrained(directory)
  with open(os.path.join(directory, "vocab.txt"), "w") as f:
    f.write("\n".join(WORDS) + "\n")
  with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
    json.dump({"do_lower_case": True}, f)
  return directory, model


def _batch():
  rng = np.random.RandomState(0)
  lengths = np.array([12, 9, 5, 3, 7, 12])
  ids = rng.randint(4, len(WORDS), size=(len(lengths), LENGTH)).astype(np.int32)
  mask = (np.arange(LENGTH)[None] < lengths[:, None]).astype(np.int32)
  ids[:, 0] = 2
  ids[np.arange(len(lengths)), lengths - 1] = 3
  ids = np.where(mask, ids, 0)
  slots = rng.randint(0, NUM_TAGS, size=ids.shape).astype(np.int32)
  slots = np.where(mask.astype(bool) & (rng.rand(*ids.shape) < 0.7), slots, -100)
  slots[:, 0] = -100
  slots[3, :] = -100  # an example without labelled tokens: its slot terms are 0
  intents = rng.randint(0, NUM_CLASSES, size=len(lengths)).astype(np.int32)
  return {"token_ids": ids, "attention_mask": mask}, intents, slots


def _torch_heads(variables):
  head = jax.tree_util.tree_map(lambda x: torch.tensor(np.asarray(x)), variables["params"]["head"])
  return {k: (v["kernel"].T.contiguous().requires_grad_(), v["bias"].clone().requires_grad_())
          for k, v in head.items()}


def test_hidden_pooled_logits_match_pytorch(checkpoint):
  directory, tmodel = checkpoint
  inputs, _, _ = _batch()
  for num_tags in (NUM_TAGS,):  # the sequence head is checked by test_scores_match_pytorch
    model = get_text_model(NUM_CLASSES, num_tags, pretrained_dir=directory)
    variables = init_variables(model, 3, (("attention_mask", (LENGTH,), "int32"),
                                          ("token_ids", (LENGTH,), "int32")))
    encoder = BertEncoder(model.config)
    hidden, pooled = jax.jit(encoder.apply)({"params": variables["params"]["bert"]},
                                            inputs["token_ids"], inputs["attention_mask"])
    with torch.no_grad():
      out = tmodel(input_ids=torch.tensor(inputs["token_ids"], dtype=torch.long),
                   attention_mask=torch.tensor(inputs["attention_mask"], dtype=torch.long))
    np.testing.assert_allclose(hidden, out.last_hidden_state.numpy(), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(pooled, out.pooler_output.numpy(), atol=1e-5, rtol=1e-5)
    logits = jax.jit(model.apply)(variables, inputs)
    heads = _torch_heads(variables)
    with torch.no_grad():
      if num_tags:
        w, b = heads["intent_classifier"]
        np.testing.assert_allclose(logits["intent"], (out.pooler_output @ w.T + b).numpy(),
                                   atol=1e-5, rtol=1e-5)
        w, b = heads["slot_classifier"]
        np.testing.assert_allclose(logits["slots"], (out.last_hidden_state @ w.T + b).numpy(),
                                   atol=1e-5, rtol=1e-5)
      else:
        w, b = heads["classifier"]
        np.testing.assert_allclose(logits, (out.pooler_output @ w.T + b).numpy(), atol=1e-5,
                                   rtol=1e-5)


def _torch_scores(tmodel, heads, inputs, intents, slots, joint: bool):
  """Per-example el2n, el2n_sum, el2n_mean, loss, grand, grand_head in PyTorch (a loop)."""
  encoder_params = [p for _, p in tmodel.named_parameters()]
  head_params = [t for pair in heads.values() for t in pair]
  out = {k: [] for k in ("el2n", "el2n_sum", "el2n_mean", "loss", "grand", "grand_head")}
  for i in range(len(intents)):
    o = tmodel(input_ids=torch.tensor(inputs["token_ids"][i:i + 1], dtype=torch.long),
               attention_mask=torch.tensor(inputs["attention_mask"][i:i + 1], dtype=torch.long))
    name = "intent_classifier" if joint else "classifier"
    w, b = heads[name]
    intent_logits = (o.pooler_output @ w.T + b)[0]
    target = torch.tensor(int(intents[i]))
    loss = torch.nn.functional.cross_entropy(intent_logits[None], target[None])
    e_int = torch.linalg.norm(torch.softmax(intent_logits, -1)
                              - torch.nn.functional.one_hot(target, NUM_CLASSES).float())
    e_tok = torch.zeros(())
    errors = []
    if joint:
      w, b = heads["slot_classifier"]
      slot_logits = (o.last_hidden_state @ w.T + b)[0]
      labelled = [t for t in range(LENGTH) if slots[i, t] != -100]
      token_losses = []
      for t in labelled:
        y = torch.tensor(int(slots[i, t]))
        token_losses.append(torch.nn.functional.cross_entropy(slot_logits[t][None], y[None]))
        errors.append(torch.linalg.norm(torch.softmax(slot_logits[t], -1)
                                        - torch.nn.functional.one_hot(y, NUM_TAGS).float()))
      if token_losses:
        loss = loss + torch.stack(token_losses).mean()
        e_tok = torch.stack(errors)
    sq = e_int**2 + (torch.sum(e_tok**2) if errors else 0.0)
    out["el2n"].append(float(torch.sqrt(sq).detach()))
    out["el2n_sum"].append(float((e_int + (e_tok.sum() if errors else 0.0)).detach()))
    out["el2n_mean"].append(float((e_int + (e_tok.mean() if errors else 0.0)).detach()))
    out["loss"].append(float(loss.detach()))
    grads = torch.autograd.grad(loss, encoder_params + head_params, allow_unused=True)
    norm = lambda gs: float(torch.sqrt(sum((g**2).sum() for g in gs if g is not None)))
    out["grand"].append(norm(grads))
    out["grand_head"].append(norm(grads[len(encoder_params):]))
  return {k: np.array(v) for k, v in out.items()}


@pytest.mark.parametrize("joint", [False, True])
def test_scores_match_pytorch(checkpoint, joint):
  directory, tmodel = checkpoint
  inputs, intents, slots = _batch()
  model = get_text_model(NUM_CLASSES, NUM_TAGS if joint else 0, pretrained_dir=directory)
  variables = init_variables(model, 11, (("attention_mask", (LENGTH,), "int32"),
                                         ("token_ids", (LENGTH,), "int32")))
  labels = {"intent": intents, "slots": slots} if joint else intents
  expected = _torch_scores(tmodel, _torch_heads(variables), inputs, intents, slots, joint)
  apply_fn = S.eval_apply_fn(model)
  # One jit for all scores (one compilation); the registry's functions, as the ensemble uses.
  ours = jax.jit(lambda v, x, y: {n: S.get_score_fn(n)(apply_fn, v, x, y) for n in expected})(
      variables, inputs, labels)
  for name, want in expected.items():
    np.testing.assert_allclose(ours[name], want, rtol=1e-4, atol=1e-7, err_msg=name)
  if not joint:  # plain logits: the joint variants are EL2N
    np.testing.assert_allclose(expected["el2n_sum"], expected["el2n"], rtol=1e-6)


def test_wordpiece_matches_transformers_tokenizer(checkpoint):
  directory, _ = checkpoint
  vocab, lowercase = vocab_and_lowercase(directory)
  ours = tokenize.wordpiece_tokenizer(vocab, lowercase)
  theirs = transformers.BertTokenizer(vocab=vocab, do_lower_case=True)  # transformers 5 API
  for sentence in ["Play some music by the Beatles", "book a table for two at noon ?",
                   "is it raining in Paris , tables .", "zzz unknownword"]:
    ids, _, _, _ = tokenize.encode(ours, [sentence.split()], 16)
    want = theirs(sentence, padding="max_length", max_length=16, truncation=True)["input_ids"]
    assert ids[0].tolist() == want, sentence


def test_bad_checkpoints_are_clear_errors(checkpoint, tmp_path):
  directory, _ = checkpoint
  model = get_text_model(NUM_CLASSES, 0, pretrained_dir=directory)
  spec = (("attention_mask", (LENGTH,), "int32"), ("token_ids", (LENGTH,), "int32"))
  with pytest.raises(PretrainedError, match="not a directory"):
    get_text_model(NUM_CLASSES, 0, pretrained_dir=str(tmp_path / "nope"))
  from safetensors.numpy import load_file, save_file
  tensors = load_file(os.path.join(directory, "model.safetensors"))
  broken = tmp_path / "broken"
  broken.mkdir()
  for name in ("config.json", "vocab.txt"):
    (broken / name).write_text(open(os.path.join(directory, name)).read())
  missing = {k: v for k, v in tensors.items() if k != "pooler.dense.weight"}
  save_file(missing, str(broken / "model.safetensors"))
  bad = get_text_model(NUM_CLASSES, 0, pretrained_dir=str(broken))
  with pytest.raises(PretrainedError, match="lacks 1 encoder tensors.*pooler.dense.weight"):
    init_variables(bad, 0, spec)
  save_file({**tensors, "decoder.weight": np.zeros((2, 2), np.float32)},
            str(broken / "model.safetensors"))
  with pytest.raises(PretrainedError, match="does not know.*decoder.weight"):
    init_variables(bad, 0, spec)
  assert init_variables(model, 0, spec)["params"]["bert"]  # the good one still loads
