r"""LiRA and RMIA with the membership-matrix protocol: M models on random halves of a pool, each
in turn the target and the others its references; memorization scores per example.

  python experiments/lira.py --dataset=location --data_dir=../shared/data --num_models=16 \
      --workdir=/tmp/lira_loc

Writes config.json, metrics.jsonl, results.json (each attack: metrics averaged over targets and
pooled over targets with bootstrap CIs), scores.npz, memorization.npz and roc.png into --workdir.
Bad input prints one line starting with "error:" and exits with status 2.
"""

from __future__ import annotations

import dataclasses

from absl import app, flags

from jaxmia import cli
from jaxmia import reference_audit as lib

D = lib.StudyConfig()
flags.DEFINE_string("dataset", D.dataset, "location | purchase100 | texas100 | digits | cifar10 "
                    "| fashion_mnist | sst2 | cola | mrpc | rte | ...")
flags.DEFINE_string("model", None, "default: mlp for tabular data and digits, minilm for text, "
                    "resnet18 otherwise")
flags.DEFINE_string("norm", None, "batch | group | none")
flags.DEFINE_integer("num_models", D.num_models, "models of the membership matrix (>= 4)")
flags.DEFINE_float("population_fraction", D.population_fraction, "fraction of rows no model "
                   "trains on (RMIA's population samples); 0: none, RMIA left out, a "
                   "memorization score for every row (what --defense=rsw|rmr|swmr needs)")
flags.DEFINE_integer("epochs", D.epochs, "training epochs, no early stopping (default: 30; 5 "
                     "on text)")
flags.DEFINE_integer("batch_size", D.batch_size, "batch size (default: 128; 32 on text)")
flags.DEFINE_float("lr", None, "Adam learning rate (default: 1e-3; 5e-5 for the pretrained "
                   "minilm and minilm_2l)")
flags.DEFINE_integer("pool_size", None, "rows drawn (by --seed) from the dataset's pool first "
                     "(default: all)")
flags.DEFINE_float("weight_decay", D.weight_decay, "L2 weight decay")
flags.DEFINE_string("pruning", D.pruning, "none, or a one-shot pruning method (l1_unstructured, "
                    "...)")
flags.DEFINE_float("sparsity", D.sparsity, "sparsity when pruning")
flags.DEFINE_integer("finetune_epochs", D.finetune_epochs, "fine-tuning epochs after pruning "
                     "(default: 15; 2 on text)")
flags.DEFINE_integer("num_targets", None, "how many models take a turn as the target "
                     "(default: all)")
flags.DEFINE_integer("query_shift", D.query_shift, "image queries: largest shift in pixels "
                     "(mirror x shifts; 0: mirror only)")
flags.DEFINE_integer("query_stride", D.query_stride, "image queries: step between shifts")
flags.DEFINE_float("rmia_gamma", D.rmia_gamma, "RMIA's pairwise threshold")
flags.DEFINE_float("rmia_offline_a", D.rmia_offline_a, "RMIA's offline approximation parameter")
flags.DEFINE_integer("seed", D.seed, "root PRNG seed")
flags.DEFINE_string("data_dir", None, "data folder (default: $JAXMIA_DATA_DIR)")
flags.DEFINE_string("workdir", D.workdir, "output folder")
flags.DEFINE_integer("checkpoint_every", D.checkpoint_every, "epochs between checkpoints")
cli.define_device_flags()
FLAGS = flags.FLAGS


def main(argv):
    cfg = lib.StudyConfig(**{f.name: getattr(FLAGS, f.name)
                             for f in dataclasses.fields(lib.StudyConfig)})

    def body():
        results = lib.run(cfg)
        return lib.format_table(results), f"{cfg.workdir}/results.json"

    cli.run(body, argv)


if __name__ == "__main__":
    app.run(main)
