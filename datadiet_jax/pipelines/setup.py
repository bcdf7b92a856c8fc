"""A run's pieces from plain values: the data set, the model, the training length and the
seed scheme (experiments/ translates its flags into these; scripts and notebooks call them
directly).

  data = load_data(DataConfig("cifar10_pickle", data_dir=...))
  model = build_model(ModelConfig("resnet18"), "cifar10_pickle", data.num_classes, data)
  train = train_config_for(data.num_train, batch_size=128, num_epochs=200)
  seeds_of = SeedScheme()          # run r -> (42 + r * 424242, 4242 + r * 424242)

Error messages name the experiments' flags (--model, --batch_size, ...), whose values these
fields are.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Optional

from datadiet_jax.data.sources import TEXT_DATASET_NAMES, load_dataset, load_text_dataset
from datadiet_jax.models import TEXT_MODEL_NAMES, get_model, get_text_model
from datadiet_jax.train.loop import TrainConfig, checkpoint_steps


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Where the data is and which examples to keep (text fields apply to text data sets)."""

  dataset: str = "digits"
  data_dir: Optional[str] = None
  cache_dir: Optional[str] = None
  sort_by_class: bool = True          # scores are indexed by this order
  train_per_class: Optional[int] = None
  subset_seed: int = 0
  text_subset: Optional[str] = None   # one data set of an archive holding several
  max_length: int = 64                # tokens per example incl. [CLS]/[SEP]
  trim_padding_multiple: int = 0      # cut train batches to the longest example (0: off)
  lowercase: bool = True
  min_word_count: int = 1
  pretrained_dir: Optional[str] = None  # its vocab.txt and do_lower_case are used
  verify_records: bool = False        # records: hash every shard against the manifest

  @property
  def is_text(self) -> bool:
    if self.dataset == "records":  # a records folder of a text data set (--mode=convert)
      from datadiet_jax.data.records import is_text_records
      return is_text_records(self.data_dir)
    return self.dataset in TEXT_DATASET_NAMES


def load_data(config: DataConfig, log_fn: Optional[Callable[[str], None]] = None):
  """The Dataset (image) or TextDataset of `config` (log_fn: text loading's notes; default
  the datadiet_jax logger)."""
  if config.dataset == "records" and config.is_text:  # token ids as converted: no tokenizer
    from datadiet_jax.data.records import load_text_records
    if config.train_per_class is not None:
      raise ValueError("--train_per_class with --dataset=records: give it to --mode=convert "
                       "instead, or train a subset of the records with --example_ids_file")
    return load_text_records(config.data_dir, config.verify_records).replace(
        trim_multiple=config.trim_padding_multiple)
  if not config.is_text:
    return load_dataset(config.dataset, data_dir=config.data_dir, cache_dir=config.cache_dir,
                        sort_by_class=config.sort_by_class,
                        train_per_class=config.train_per_class,
                        subset_seed=config.subset_seed,
                        verify_records=config.verify_records)
  vocab_file, lowercase = None, config.lowercase
  if config.pretrained_dir:
    from datadiet_jax.models.pretrained import vocab_and_lowercase
    vocab_file, lowercase = vocab_and_lowercase(config.pretrained_dir)
  dataset = load_text_dataset(config.dataset, config.data_dir, config.max_length,
                              config.text_subset, vocab_file, lowercase, config.min_word_count,
                              config.sort_by_class, config.train_per_class, config.subset_seed,
                              log_fn=log_fn or logging.getLogger("datadiet_jax").info)
  return dataset.replace(trim_multiple=config.trim_padding_multiple)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """The architecture; the bert_* sizes and dropout build a text encoder from scratch
  (ignored with pretrained_dir, whose config.json decides)."""

  name: str = "small_cnn"
  num_filters: Optional[int] = None   # image models' width (default: the architecture's)
  dtype: str = "float32"
  conv_impl: str = "xla"
  pretrained_dir: Optional[str] = None
  bert_layers: int = 2
  bert_hidden: int = 64
  bert_heads: int = 2
  bert_intermediate: int = 128
  dropout: float = 0.1
  max_length: int = 64                # sizes the position embeddings (at least 8)


def build_model(config: ModelConfig, dataset_name: str, num_classes: int, dataset=None,
                text_data: Optional[bool] = None):
  """The model of `config` for data set `dataset_name`; text data sets (pass `dataset`, a
  TextDataset: vocabulary size, slot tags) need the bert model. A pretrained checkpoint is
  read in full now, so a bad one fails before anything is written. text_data: whether the
  data is text (default: from the name; pass DataConfig.is_text for a records folder)."""
  if text_data is None:
    text_data = dataset_name in TEXT_DATASET_NAMES
  text_model = config.name in TEXT_MODEL_NAMES
  if text_data != text_model:
    raise ValueError(f"--model {config.name} does not fit --dataset {dataset_name}; use "
                     f"{'--model bert' if text_data else 'an image model'}")
  if not text_model:
    return get_model(config.name, num_classes, config.num_filters, config.dtype,
                     config.conv_impl)
  from datadiet_jax.models.bert import BertConfig
  bert = None
  if config.pretrained_dir:
    from datadiet_jax.models.pretrained import load_encoder
    load_encoder(config.pretrained_dir)
  else:
    bert = BertConfig(vocab_size=dataset.vocab_size, hidden_size=config.bert_hidden,
                      num_hidden_layers=config.bert_layers,
                      num_attention_heads=config.bert_heads,
                      intermediate_size=config.bert_intermediate,
                      max_position_embeddings=max(config.max_length, 8),
                      hidden_dropout_prob=config.dropout,
                      attention_probs_dropout_prob=config.dropout)
  return get_text_model(num_classes, dataset.num_tags, bert, config.dtype,
                        config.pretrained_dir)


def model_record(model) -> dict:
  """Extra config.json entries of a text model (its sizes and checkpoint); for images {}
  (image workdirs keep their config.json unchanged) unless conv_impl is not xla."""
  config = getattr(model, "config", None)
  if config is None:  # an image model: only a non-default conv_impl (it changes the bits)
    impl = getattr(model, "conv_impl", "xla")
    return {} if impl == "xla" else {"conv_impl": impl}
  return {"bert_config": dataclasses.asdict(config),
          "pretrained_dir": getattr(model, "pretrained_dir", None),
          "num_tags": getattr(model, "num_tags", 0)}


def train_config_for(num_train: int, batch_size: int = 128, num_epochs: int = 200,
                     num_steps: int = 0, **options) -> TrainConfig:
  """A TrainConfig of `num_steps` steps, or (num_steps 0) `num_epochs` epochs of
  num_train // batch_size steps; options: TrainConfig's other fields."""
  steps_per_epoch = num_train // batch_size
  if steps_per_epoch == 0:
    raise ValueError(f"--batch_size={batch_size} exceeds the {num_train} "
                     "training examples; lower it")
  return TrainConfig(num_steps=num_steps or num_epochs * steps_per_epoch,
                     batch_size=batch_size, **options)


def check_score_step(step: int, train: TrainConfig, num_train: int) -> None:
  """Raises ValueError unless the runs' save schedule checkpoints `step`."""
  steps = checkpoint_steps(train, num_train // train.batch_size)
  if step in steps:
    return
  shown = steps if len(steps) <= 12 else steps[:6] + ["..."] + steps[-3:]
  available = "[" + ", ".join(str(s) for s in shown) + "]"
  raise ValueError(f"--score_step={step}: no checkpoint for step {step} in the runs' save "
                   f"schedule (available: {available}); pick one of those, or save it with "
                   "--save_steps / --early_save_steps + --early_step")


@dataclasses.dataclass(frozen=True)
class SeedScheme:
  """Run r's (model seed, data seed): the original 42 + r * 424242, 4242 + r * 424242.
  Callable, so it is the `seeds_of` every pipeline takes."""

  model_seed: int = 42
  data_seed: int = 4242
  stride: int = 424242

  def __call__(self, run: int) -> tuple[int, int]:
    return self.model_seed + run * self.stride, self.data_seed + run * self.stride

  def record(self) -> dict:
    """The config.json entry of the scheme."""
    return {"model_seed": self.model_seed, "data_seed": self.data_seed,
            "seed_stride": self.stride}
