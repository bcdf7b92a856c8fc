"""A BERT encoder (Devlin et al. 2019) in Flax linen, numerically equal to Hugging Face's
`BertModel` in eval mode (checked against it in tests/test_text_torch.py).

Token + position + segment embeddings -> LayerNorm -> dropout -> N post-LayerNorm blocks
(self-attention, residual, LayerNorm; GELU feed-forward, residual, LayerNorm) -> pooler
(dense + tanh on the [CLS] position). GELU is the exact (erf) form, as HF's "gelu".

Dropout uses the 'dropout' rng stream; the train step passes a key derived from
fold_in(run key, step), so a step is a pure function of (state, batch).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import flax.linen as nn
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """Sizes of a BERT encoder (the names of Hugging Face's config.json)."""

  vocab_size: int = 30522
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  hidden_dropout_prob: float = 0.1
  attention_probs_dropout_prob: float = 0.1
  hidden_act: str = "gelu"

  def __post_init__(self):
    for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                 "intermediate_size", "max_position_embeddings", "type_vocab_size"):
      if int(getattr(self, name)) <= 0:
        raise ValueError(f"BERT config: {name} must be positive, got {getattr(self, name)}")
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(f"BERT config: hidden_size {self.hidden_size} is not divisible by "
                       f"num_attention_heads {self.num_attention_heads}")
    if self.hidden_act not in _ACTIVATIONS:
      raise ValueError(f"BERT config: hidden_act {self.hidden_act!r} is not supported; use one "
                       f"of {', '.join(_ACTIVATIONS)}")

  @classmethod
  def from_json_file(cls, path: str) -> "BertConfig":
    """Reads a Hugging Face config.json (unknown keys are ignored)."""
    with open(path) as f:
      raw = json.load(f)
    if not isinstance(raw, dict):
      raise ValueError(f"{path} is not a JSON object")
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in raw.items() if k in fields})


_ACTIVATIONS = {"gelu": lambda x: nn.gelu(x, approximate=False),
                "gelu_new": lambda x: nn.gelu(x, approximate=True),
                "relu": nn.relu}


class SelfAttention(nn.Module):
  config: BertConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask, train: bool):
    """x: f32[B, L, H]; mask: bool[B, L] (True = real token) -> f32[B, L, H]."""
    c = self.config
    heads, head_dim = c.num_attention_heads, c.hidden_size // c.num_attention_heads
    dense = lambda name: nn.DenseGeneral((heads, head_dim), dtype=self.dtype, name=name)
    q, k, v = dense("query")(x), dense("key")(x), dense("value")(x)  # [B, L, heads, d]
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(jnp.float32(head_dim)).astype(q.dtype)
    scores = jnp.where(mask[:, None, None, :], scores, jnp.finfo(scores.dtype).min)
    probs = nn.softmax(scores.astype(jnp.float32), axis=-1).astype(self.dtype)
    probs = nn.Dropout(c.attention_probs_dropout_prob, deterministic=not train)(probs)
    context = jnp.einsum("bhqk,bkhd->bqhd", probs, v)
    return nn.DenseGeneral(c.hidden_size, axis=(-2, -1), dtype=self.dtype, name="output")(context)


class Layer(nn.Module):
  config: BertConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask, train: bool):
    c = self.config
    norm = lambda name: nn.LayerNorm(epsilon=c.layer_norm_eps, dtype=self.dtype, name=name)
    drop = lambda y: nn.Dropout(c.hidden_dropout_prob, deterministic=not train)(y)
    attended = SelfAttention(c, self.dtype, name="attention")(x, mask, train)
    x = norm("attention_norm")(x + drop(attended))
    y = nn.Dense(c.intermediate_size, dtype=self.dtype, name="intermediate")(x)
    y = nn.Dense(c.hidden_size, dtype=self.dtype, name="output")(_ACTIVATIONS[c.hidden_act](y))
    return norm("output_norm")(x + drop(y))


class BertEncoder(nn.Module):
  """BERT encoder: inputs -> (hidden states f32[B, L, H], pooled output f32[B, H])."""

  config: BertConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, token_ids, attention_mask, token_type_ids=None, train: bool = False):
    """token_ids, attention_mask (1 = real token), token_type_ids: i32[B, L]."""
    c = self.config
    length = token_ids.shape[1]
    if length > c.max_position_embeddings:
      raise ValueError(f"sequence length {length} exceeds max_position_embeddings "
                       f"{c.max_position_embeddings}; lower --max_length")
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(token_ids)
    embed = lambda n, name: nn.Embed(n, c.hidden_size, dtype=self.dtype, name=name,
                                     embedding_init=nn.initializers.normal(0.02))
    x = (embed(c.vocab_size, "word_embeddings")(token_ids)
         + embed(c.max_position_embeddings, "position_embeddings")(jnp.arange(length))[None]
         + embed(c.type_vocab_size, "token_type_embeddings")(token_type_ids))
    x = nn.LayerNorm(epsilon=c.layer_norm_eps, dtype=self.dtype, name="embeddings_norm")(x)
    x = nn.Dropout(c.hidden_dropout_prob, deterministic=not train)(x)
    mask = attention_mask.astype(bool)
    for i in range(c.num_hidden_layers):
      x = Layer(c, self.dtype, name=f"layer_{i}")(x, mask, train)
    pooled = jnp.tanh(nn.Dense(c.hidden_size, dtype=self.dtype, name="pooler")(x[:, 0]))
    return x, pooled
