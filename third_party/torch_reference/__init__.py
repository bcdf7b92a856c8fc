"""An independent PyTorch reference of the models and scores (tests and benchmarks only;
`datadiet_jax` never imports torch)."""

from third_party.torch_reference.convert import from_flax
from third_party.torch_reference.models import (TorchResNet18, TorchResNetLowres,
                                                TorchSimpleCNN, same_padding)
from third_party.torch_reference.scores import SCORE_FNS

__all__ = ["SCORE_FNS", "TorchResNet18", "TorchResNetLowres", "TorchSimpleCNN", "from_flax",
           "same_padding"]
