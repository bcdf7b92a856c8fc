"""Models selected by name: `get_model(name, num_classes, num_filters=None, dtype='float32')`."""

from typing import Optional

import jax.numpy as jnp

from datadiet_jax.models.conv_config import CONV_IMPLS
from datadiet_jax.models.resnet import ResNet, ResNet18, ResNet50
from datadiet_jax.models.simple_cnn import SimpleCNN

# name -> (constructor, default num_filters)
_MODELS = {
    "resnet18_lowres": (lambda n, f, d: ResNet18(num_classes=n, num_filters=f, dtype=d), 64),
    "resnet50_lowres": (lambda n, f, d: ResNet50(num_classes=n, num_filters=f, dtype=d), 64),
    # The original's simple_cnn_0: channels (32, 64, 128).
    "simple_cnn": (lambda n, f, d: SimpleCNN(channels=(f, 2 * f, 4 * f), num_classes=n, dtype=d),
                   32),
    # A small two-stage CNN for the embedded 8x8 default.
    "small_cnn": (lambda n, f, d: SimpleCNN(channels=(f, 2 * f), num_classes=n, dtype=d), 16),
}
MODEL_NAMES = tuple(sorted(_MODELS))
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def get_model(name: str, num_classes: int, num_filters: Optional[int] = None,
              dtype: str = "float32", conv_impl: str = "xla"):
  """Returns the flax module `name`; `num_filters` scales its width (None = default).

  conv_impl: how the convolutions are computed (models/conv.py: "xla"; "matmul" = XLA's
  forward, im2col matmul weight gradient; "auto" = matmul on CPU; "onednn" = all of it by
  oneDNN, CPU only, models/onednn_conv.py); the parameters do not depend on it."""
  if name not in _MODELS:
    raise ValueError(f"unknown model '{name}'; choose one of {', '.join(MODEL_NAMES)}")
  if dtype not in _DTYPES:
    raise ValueError(f"unknown dtype '{dtype}'; choose one of {', '.join(_DTYPES)}")
  build, default_filters = _MODELS[name]
  filters = default_filters if num_filters is None else int(num_filters)
  if filters <= 0:
    raise ValueError(f"num_filters must be positive, got {filters}")
  if conv_impl not in CONV_IMPLS:
    raise ValueError(f"unknown conv_impl '{conv_impl}'; choose one of {', '.join(CONV_IMPLS)}")
  if conv_impl == "onednn":  # fail here, before any run writes, if it cannot work
    from datadiet_jax.models.onednn_conv import check_onednn  # pylint: disable=g-import-not-at-top
    check_onednn()
  return build(num_classes, filters, _DTYPES[dtype]).clone(conv_impl=conv_impl)




TEXT_MODEL_NAMES = ("bert",)


def get_text_model(num_classes: int, num_tags: int = 0, config=None, dtype: str = "float32",
                   pretrained_dir: Optional[str] = None):
  """A BERT classifier: joint intent + slot head if num_tags > 0, else sequence head.

  config: a models.bert.BertConfig (sizes); with pretrained_dir, the checkpoint's
  config.json is used and its encoder weights replace the random init.
  """
  from datadiet_jax.models.bert import BertConfig  # pylint: disable=g-import-not-at-top
  from datadiet_jax.models.heads import BertClassifier  # pylint: disable=g-import-not-at-top
  from datadiet_jax.models import pretrained  # pylint: disable=g-import-not-at-top
  if dtype not in _DTYPES:
    raise ValueError(f"unknown dtype '{dtype}'; choose one of {', '.join(_DTYPES)}")
  if pretrained_dir:
    config = pretrained.read_config(pretrained_dir)
  config = config or BertConfig()
  return BertClassifier(config, num_classes, int(num_tags), _DTYPES[dtype],
                        pretrained_dir=pretrained_dir)


__all__ = ["get_model", "get_text_model", "MODEL_NAMES", "TEXT_MODEL_NAMES", "ResNet", "ResNet18",
           "ResNet50", "SimpleCNN"]
