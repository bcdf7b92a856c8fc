r"""Data Diet experiments on text, from flags: the same modes, pipeline and workdir layout
as experiments/cifar.py (this is a thin entry point over its mode dispatch).

  python -m experiments.text --flagfile=experiments/flags/snips_joint.flags
  python -m experiments.text --flagfile=experiments/flags/sst2.flags --mode=score

Data (--dataset): joint_nlu (<split>/seq.in, seq.out, label: ATIS, SNIPS), text_tsv
(<split>.tsv with `sentence<TAB>label`: SST-2), or a TFDS text name (glue/sst2), from a
folder or a .tar/.tar.gz (--data_dir; --text_subset picks one data set of an archive
holding several, e.g. snips in ../shared/data/nlp-text.tar.gz). Tokens: a word-level
vocabulary of the train split, or --pretrained_dir's WordPiece vocab.txt; --max_length.

Model (--model=bert): a BERT encoder from scratch (--bert_layers, --bert_hidden,
--bert_heads, --bert_intermediate, --dropout) or --pretrained_dir's (config.json +
model.safetensors, loaded with numpy; never downloads). Joint data gets the intent + slot
head, sentence data the sequence head. Optimizer: --optimizer=adamw --lr_schedule=linear
--warmup_steps.

Modes (--mode): train, score, train_score, figure1, dynamic, dynamic_sweep, score_timing
as in experiments/cifar.py. Scores:
el2n (joint: sqrt(e_int^2 + sum_t e_t^2)), el2n_sum, el2n_mean, loss, entropy, margins,
grand, grand_head (classifier head only), forgetting (of the sequence label / intent).
metrics.csv also has test_slot_f1 (seqeval span F1) for joint data.
"""

from __future__ import annotations

from absl import app, flags

from experiments import cifar

FLAGS = flags.FLAGS

# Text defaults; every one can be changed by flags or a flagfile.
FLAGS.set_default("dataset", "joint_nlu")
FLAGS.set_default("model", "bert")
FLAGS.set_default("augment", False)
FLAGS.set_default("optimizer", "adamw")
FLAGS.set_default("lr_schedule", "linear")
FLAGS.set_default("lr", 1e-3)
FLAGS.set_default("weight_decay", 0.01)
FLAGS.set_default("batch_size", 32)
FLAGS.set_default("num_epochs", 3)
FLAGS.set_default("sort_by_class", False)
FLAGS.set_default("scores", ["el2n", "loss", "grand_head"])
FLAGS.set_default("figure1_scores", ["el2n", "grand_head", "forgetting"])
FLAGS.set_default("methods", ["random", "el2n:hardest", "grand_head:hardest"])


def main(argv) -> None:
  cifar.main(argv)


if __name__ == "__main__":
  app.run(main)
