"""Tokenization with the `tokenizers` library, and word -> sub-token label alignment.

Two tokenizers, both BERT-shaped (`[CLS] tokens [SEP]`, `[PAD]` padding), so one encoder
serves both:

* `wordpiece_tokenizer(vocab.txt, lowercase)`: a checkpoint's WordPiece vocabulary with
  BERT's normalizer (lower-casing and accent stripping as the checkpoint's config says)
  and pre-tokenizer (`BertWordPieceTokenizer`'s pipeline).
* `word_level_tokenizer(train words)`: a word-level vocabulary built from the training
  split (for models trained from scratch): specials `[PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3`,
  then the words seen at least `min_count` times, most frequent first.

`encode` aligns word-level tags to sub-tokens as JointBERT and "NLU on Data Diets" do:
the first sub-token of a word carries the word's tag; its other sub-tokens, `[CLS]`,
`[SEP]` and padding get `IGNORE_ID`. Sequences longer than `max_length` are truncated
(the words that no longer fit lose their tags); how many were truncated is returned.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

from datadiet_jax.data.errors import DataError
from datadiet_jax.data.text import IGNORE_ID

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")


def _bert_post_processor(tokenizer: Tokenizer) -> None:
  cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
  if cls_id is None or sep_id is None or tokenizer.token_to_id("[PAD]") is None:
    raise DataError("the vocabulary lacks [CLS], [SEP] or [PAD]; a BERT vocab.txt lists them")
  tokenizer.post_processor = processors.TemplateProcessing(
      single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])


def wordpiece_tokenizer(vocab_path: str, lowercase: bool = True) -> Tokenizer:
  """BERT WordPiece tokenizer from a checkpoint's `vocab.txt` (one token a line)."""
  try:
    vocab = models.WordPiece.read_file(vocab_path)
  except Exception as e:  # tokenizers raises a plain Exception
    raise DataError(f"cannot read the WordPiece vocabulary {vocab_path} ({e}); a BERT "
                    "checkpoint directory needs vocab.txt") from e
  if not vocab:
    raise DataError(f"{vocab_path} is empty; a BERT vocab.txt lists one token a line")
  tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
  tokenizer.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                    strip_accents=None, lowercase=lowercase)
  tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  _bert_post_processor(tokenizer)
  return tokenizer


def word_level_tokenizer(train_words: Sequence[Sequence[str]], lowercase: bool = True,
                         min_count: int = 1, max_vocab: Optional[int] = None) -> Tokenizer:
  """Word-level tokenizer whose vocabulary is the train split's words (see module doc)."""
  tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
  if lowercase:
    tokenizer.normalizer = normalizers.Lowercase()
  tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  trainer = trainers.WordLevelTrainer(
      vocab_size=(max_vocab or 10**9), min_frequency=min_count,
      special_tokens=list(SPECIAL_TOKENS), show_progress=False)
  tokenizer.train_from_iterator((" ".join(words) for words in train_words), trainer=trainer)
  _bert_post_processor(tokenizer)
  return tokenizer


def encode(tokenizer: Tokenizer, words: Sequence[Sequence[str]], max_length: int,
           tag_ids: Optional[Sequence[np.ndarray]] = None):
  """Tokenizes pre-split examples into fixed-length arrays.

  Args:
    tokenizer: from `wordpiece_tokenizer` or `word_level_tokenizer`.
    words: N examples, each a list of words.
    max_length: L, tokens per example including [CLS] and [SEP] (>= 3).
    tag_ids: N int arrays, one tag id per word, or None.

  Returns:
    (token_ids i32[N, L], attention_mask i32[N, L], token_labels i32[N, L] or None,
     num_truncated: how many examples did not fit in L tokens).
  """
  if max_length < 3:
    raise DataError(f"--max_length must be at least 3 ([CLS] token [SEP]), got {max_length}")
  pad_id = tokenizer.token_to_id("[PAD]")
  tokenizer.enable_truncation(max_length)
  tokenizer.enable_padding(pad_id=pad_id, pad_token="[PAD]", length=max_length)
  encodings = tokenizer.encode_batch([list(w) for w in words], is_pretokenized=True)
  token_ids = np.array([e.ids for e in encodings], np.int32).reshape(len(words), max_length)
  mask = np.array([e.attention_mask for e in encodings], np.int32).reshape(len(words), max_length)
  num_truncated = sum(1 for e in encodings if e.overflowing)
  token_labels = None
  if tag_ids is not None:
    token_labels = np.full((len(words), max_length), IGNORE_ID, np.int32)
    for i, enc in enumerate(encodings):
      token_labels[i] = align_word_labels(enc.word_ids, np.asarray(tag_ids[i]))
  return token_ids, mask, token_labels, num_truncated


def align_word_labels(word_ids: Sequence[Optional[int]], word_labels: np.ndarray) -> np.ndarray:
  """Per-token labels: the first sub-token of word w gets word_labels[w]; the rest IGNORE_ID.

  word_ids: the tokenizer's word index of every token (None for specials and padding).
  """
  out = np.full((len(word_ids),), IGNORE_ID, np.int32)
  previous = None
  for t, w in enumerate(word_ids):
    if w is not None and w != previous:
      out[t] = word_labels[w]
    previous = w
  return out


def tokenize_dataset(raw, tokenizer: Tokenizer, max_length: int,
                     log_fn=None) -> "TextDataset":
  """A `TextDataset` from a `RawText` (train and test splits) and a tokenizer.

  Label vocabularies: see `text.label_vocabulary`; test labels (and tags) never seen in
  train map to UNK, counted in `unknown_labels` and logged through `log_fn` (e.g. log.info).
  """
  from datadiet_jax.data.text import (TextDataset, UNK_LABEL, _SLOT_SPECIALS, label_ids,
                                      label_vocabulary)
  for split in ("train", "test"):
    if split not in raw.splits:
      raise DataError(f"{raw.source} has no {split} split")
  train, test = raw.splits["train"], raw.splits["test"]
  class_names = label_vocabulary(train.labels, raw.label_names, "the intent/label file")
  arrays, unknown, truncated = {}, {}, {}
  seen_labels = set(train.labels)
  tag_names = None
  if train.tags is not None:
    seen_tags = {t for tags in train.tags for t in tags}
    tag_names = label_vocabulary([t for tags in train.tags for t in tags], raw.tag_names,
                                 "the slot label file", specials=_SLOT_SPECIALS)
  for split, data in (("train", train), ("test", test)):
    labels, unknown[f"{split}_labels"] = label_ids(data.labels, class_names, seen_labels)
    tag_ids = None
    if tag_names is not None:
      per_word = [label_ids(tags, tag_names, seen_tags) for tags in data.tags]
      tag_ids = [ids for ids, _ in per_word]
      unknown[f"{split}_tags"] = sum(n for _, n in per_word)
    ids, mask, token_labels, truncated[split] = encode(tokenizer, data.words, max_length,
                                                      tag_ids)
    arrays[split] = (ids, mask, labels, token_labels)
  if log_fn is not None:
    for key, n in unknown.items():
      if n:
        log_fn(f"{raw.name}: {n} {key.replace('_', ' ')} never occur in train; mapped to "
               f"{UNK_LABEL} (id {class_names.index(UNK_LABEL) if 'labels' in key else tag_names.index(UNK_LABEL)})")
    for split, n in truncated.items():
      if n:
        log_fn(f"{raw.name}: {n} {split} examples longer than --max_length={max_length} "
               "tokens were truncated")
  return TextDataset(
      name=raw.name,
      train_token_ids=arrays["train"][0], train_attention_mask=arrays["train"][1],
      train_labels=arrays["train"][2], train_token_labels=arrays["train"][3],
      test_token_ids=arrays["test"][0], test_attention_mask=arrays["test"][1],
      test_labels=arrays["test"][2], test_token_labels=arrays["test"][3],
      class_names=class_names, tag_names=tag_names, vocab_size=tokenizer.get_vocab_size(),
      example_order=f"line order of the train split of {raw.source}",
      unknown_labels=unknown, truncated=truncated)
