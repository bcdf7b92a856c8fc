"""BERT with a task head: sequence classification, or joint intent + slot classification.

Both take the text batch's inputs dict {'token_ids', 'attention_mask'} (i32[B, L]) and
`train` (dropout on), like the image models take (images, train). Parameters:
{'bert': the encoder, 'head': {...}}; `head` holds only the classifier(s), which is what
"GraNd of the classifier head" differentiates.

  BertClassifier(num_tags=0):  logits f32[B, C] = classifier(dropout(pooled))
  BertClassifier(num_tags=S):  {'intent': f32[B, C] from the pooled output,
                                'slots':  f32[B, L, S] from every token's hidden state}
                               (JointBERT's heads: dropout then a dense layer each)

`pretrained_dir`: a Hugging Face style directory whose encoder weights replace the
random init (see models/pretrained.py and train.state.init_variables); a string, so the
module stays hashable and its repr names the checkpoint.
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp

from datadiet_jax.models.bert import BertConfig, BertEncoder


class SequenceHead(nn.Module):
  num_classes: int
  dropout: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, hidden, pooled, train: bool):
    del hidden
    pooled = nn.Dropout(self.dropout, deterministic=not train)(pooled)
    return nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")(pooled)


class JointHead(nn.Module):
  num_intents: int
  num_slots: int
  dropout: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, hidden, pooled, train: bool):
    drop = lambda x: nn.Dropout(self.dropout, deterministic=not train)(x)
    intent = nn.Dense(self.num_intents, dtype=self.dtype, name="intent_classifier")(drop(pooled))
    slots = nn.Dense(self.num_slots, dtype=self.dtype, name="slot_classifier")(drop(hidden))
    return {"intent": intent.astype(jnp.float32), "slots": slots.astype(jnp.float32)}


class BertClassifier(nn.Module):
  """BERT + a task head: inputs -> logits f32[B, num_classes] (num_tags = 0), or with
  num_tags > 0 the joint head's {'intent': f32[B, C], 'slots': f32[B, L, num_tags]}."""

  config: BertConfig
  num_classes: int
  num_tags: int = 0
  dtype: Any = jnp.float32
  pretrained_dir: Optional[str] = None

  @nn.compact
  def __call__(self, inputs: dict, train: bool = False):
    hidden, pooled = BertEncoder(self.config, self.dtype, name="bert")(
        inputs["token_ids"], inputs["attention_mask"], inputs.get("token_type_ids"), train)
    dropout = self.config.hidden_dropout_prob
    if self.num_tags:
      head = JointHead(self.num_classes, self.num_tags, dropout, self.dtype, name="head")
      return head(hidden, pooled, train)
    head = SequenceHead(self.num_classes, dropout, self.dtype, name="head")
    return head(hidden, pooled, train).astype(jnp.float32)
