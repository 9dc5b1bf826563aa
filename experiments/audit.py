r"""Membership-inference audit of a pruned model (Yuan & Zhang, USENIX Security 2022 protocol).

Trains a target and its shadows as one ensemble, prunes and fine-tunes each, and attacks the
target unpruned and pruned. Writes config.json, metrics.jsonl, splits.json, results.json,
scores.npz, roc_{unpruned,pruned}.png, histograms.png and per_class.png into --workdir and prints
a table.

  python experiments/audit.py                      # embedded default: digits, MLP, L1 0.7
  python experiments/audit.py --dataset=location --data_dir=../shared/data --workdir=/tmp/loc
  python experiments/audit.py --dataset=location --data_dir=../shared/data \
      --attacks=threshold,nn --defense=dp --noise_multiplier=1.5     # DP-SGD, adaptive shadows
  python experiments/audit.py --dataset=sst2 --data_dir=../shared/data --pool_size=2000
      # text: the pretrained all-MiniLM-L6-v2 fine-tuned on a 2,000-row share of SST-2

Measured on 2 CPU cores (2026-11-25, BUILD_NOTES.md), all attacks: the default run 9 min 26 s (digits:
target test accuracy 0.906 / 0.919 pruned; no attack above 0.57 balanced accuracy);
Location 42 min (test accuracy 0.600 unpruned / 0.562 pruned; best attack SAMIA, balanced accuracy
0.846 / 0.823), most of it SAMIA's and the GRIP attack's training; `--attacks=threshold` takes
about a minute on either. The DP line above took 2 min 16 s (epsilon 8.79 at delta 1e-5; test
accuracy 0.107, best attack 0.543 balanced accuracy). The SST-2 line took 29 min (2026-12-07:
test accuracy 0.809 unpruned / 0.800 pruned; confidence attack 0.617 / 0.550 balanced accuracy).

Bad input (unknown dataset/model, missing data, --sparsity=1.5, a workdir of another run) prints
one line starting with "error:" and exits with status 2, writing nothing.
"""

from __future__ import annotations

import dataclasses

from absl import app, flags

from jaxmia import attacks, cli, defenses, features
from jaxmia import audit as audit_lib
from jaxmia.defenses import wemem
from jaxmia.errors import UserError

D = audit_lib.AuditConfig()
flags.DEFINE_string("dataset", D.dataset, "digits | location | purchase100 | texas100 | cifar10 | "
                    "fashion_mnist | cifar100 | svhn | chmnist | sst2 | cola | mrpc | rte")
flags.DEFINE_string("model", None, "mlp | small_cnn | resnet18 | resnet20 | vgg16 | densenet121 "
                    "| minilm | minilm_2l | bert_tiny (default: mlp for tabular data and digits, "
                    "minilm (pretrained all-MiniLM-L6-v2) for text, resnet18 for images)")
flags.DEFINE_string("norm", None, "batch | group | none (default: the architecture's own)")
flags.DEFINE_string("pruning", D.pruning, " | ".join(audit_lib.PRUNING_CHOICES))
flags.DEFINE_float("sparsity", D.sparsity, "fraction of weights (or filters / BN channels) "
                   "removed, in [0, 1)")
flags.DEFINE_integer("num_shadows", D.num_shadows, "number of shadow models")
flags.DEFINE_integer("num_models", None, "models trained together: the target and "
                     "num_models - 1 shadows (another way to say --num_shadows)")
flags.DEFINE_integer("epochs", None, "max training epochs (default: 50 tabular/digits, 100 "
                     "images, 5 text)")
flags.DEFINE_integer("finetune_epochs", None, "max fine-tuning epochs after pruning "
                     "(default: epochs // 2)")
flags.DEFINE_integer("batch_size", None, "batch size (default: 128; 32 on text)")
flags.DEFINE_float("lr", None, "learning rate (default: 1e-3; 5e-5 for the pretrained "
                   "minilm and minilm_2l)")
flags.DEFINE_float("weight_decay", D.weight_decay, "L2 weight decay (PyTorch Adam style)")
flags.DEFINE_integer("patience", D.patience, "early stopping: stop after more than this many "
                     "epochs without dev-accuracy gain")
flags.DEFINE_integer("seed", D.seed, "seed of the splits (mia_prune's random_state) and of "
                     "all random draws")
flags.DEFINE_integer("pool_size", None, "rows drawn (by --seed) from the dataset's pool "
                     "before it is split (default: all; e.g. a CPU-sized share of SST-2)")
flags.DEFINE_integer("imp_rounds", D.imp_rounds, "--pruning=imp: prune-and-retrain rounds")
flags.DEFINE_string("imp_method", D.imp_method, "--pruning=imp: criterion of each round")
flags.DEFINE_bool("imp_rewind", D.imp_rewind, "--pruning=imp: rewind survivors to their "
                  "initialization before each retraining (lottery ticket)")
flags.DEFINE_integer("imp_rewind_epoch", D.imp_rewind_epoch, "--imp_rewind: rewind to the "
                     "weights after this many pretraining epochs instead (late rewinding; "
                     "0 = the initialization)")
flags.DEFINE_bool("imp_continue", D.imp_continue, "--pruning=imp: each round continues from "
                  "the previous round's last epoch with its optimizer state (WeMem's code); "
                  "default: from its best-on-dev model with a fresh optimizer")
flags.DEFINE_float("slim_l1", D.slim_l1, "--pruning=slim: L1-on-gamma sparsity-training strength")
flags.DEFINE_list("attacks", list(D.attacks), "attacks to run: the sets "
                  f"{', '.join(attacks.SETS)} or names: {', '.join(attacks.REGISTRY)}")
flags.DEFINE_list("attack_stages", list(D.attack_stages), "targets to attack: unpruned, pruned "
                  "or both (the pruning paper's code attacks only the pruned one)")
flags.DEFINE_integer("sensitivity_samples", D.sensitivity_samples, "Gaussian perturbations per "
                     "example of the sensitivity feature (0: skip it; default 10, or 5 on text, "
                     "whose noise goes to the word embeddings)")
flags.DEFINE_float("sensitivity_epsilon", D.sensitivity_epsilon, "perturbation size")
flags.DEFINE_string("sensitivity_noise", D.sensitivity_noise, " | ".join(features.NOISE))
flags.DEFINE_integer("label_only_examples", D.label_only_examples, "rows per split and model "
                     "that the label-only attacks query")
flags.DEFINE_string("wordnet_dir", D.wordnet_dir, "WordNet 3.0's database files (data.noun, "
                    "data.verb, data.adj, data.adv) for label_synonym (Debian: wordnet-base)")
flags.DEFINE_integer("blindmi_reference", D.blindmi_reference, "generated non-members for BlindMI")
flags.DEFINE_integer("attack_epochs", None, "train every classifier attack this many epochs "
                     "(default: each paper's: 100, GRIP 300, sparsity discriminators 80)")
flags.DEFINE_string("shadow_pruning", None, "unknown pruning knowledge: prune the shadows with "
                    "this method instead (default: the target's)")
flags.DEFINE_float("shadow_sparsity", None, "unknown pruning knowledge: shadow sparsity")
flags.DEFINE_string("optimizer", D.optimizer, "adam | sgd (momentum 0.9); with --defense=dp "
                    "these become DP-Adam / DP-SGD")
flags.DEFINE_string("defense", D.defense, "none | dp (DP-SGD) | ppb (the pruning paper's "
                    "pair-based posterior balancing) | adv (adversarial regularization) | "
                    "relaxloss (Chen et al. 2022) | label_smoothing | WeMem's data schedules rsw "
                    "(sliding window) | rmr (risky-memory regularization) | swmr (both); for "
                    "the target and, "
                    "adaptively, the shadows")
flags.DEFINE_float("defense_strength", None, "a loss-term defense's strength: ppb's lambda "
                   "(default 4), adv's theta (default 1), relaxloss's target loss alpha "
                   "(default 1), label_smoothing's epsilon (default 0.1)")
flags.DEFINE_string("defense_stages", None, "where a loss-term defense trains: all "
                    "(pretraining and fine-tuning) | finetune (only the pruned models' "
                    "fine-tuning); default: its paper's (ppb, adv and WeMem's finetune, the others "
                    "all)")
flags.DEFINE_bool("defense_shadows", D.defense_shadows, "train the shadows with the loss-term "
                  "defense too (an adaptive attacker); --nodefense_shadows: the target only "
                  "(mia_prune's default)")
flags.DEFINE_string("relaxloss_variant", D.relaxloss_variant, "relaxloss's flattening "
                    "step: tabular (the authors' code for Purchase/Texas) | image (their CIFAR "
                    "code)")
flags.DEFINE_float("relaxloss_upper", D.relaxloss_upper, "relaxloss: cap on the true class's "
                   "probability in the flattened targets (the authors': 0.3 Purchase, 0.1 "
                   "Texas, 1 CIFAR)")
flags.DEFINE_string("adv_target_steps", D.adv_target_steps, "adv: every_batch (the inference "
                    "model's updates before every target step, Nasr et al.) | one_per_epoch "
                    "(the released code: one target batch an epoch)")
flags.DEFINE_string("memorization_scores", None, "rsw/rmr/swmr: the memorization.npz of "
                    "experiments/lira.py --population_fraction=0 on this dataset (a score for "
                    "every row)")
flags.DEFINE_integer("wemem_width", D.wemem_width, "rsw/swmr: window rows per class (the "
                     "authors': 15 Location, 500 CIFAR-10)")
flags.DEFINE_integer("wemem_stride", D.wemem_stride, "rsw/swmr: rows the window moves each "
                     "epoch (the authors': 1 Location, 50 RSW / 100 SWMR CIFAR-10)")
flags.DEFINE_string("wemem_order", None, "rsw/swmr: " + " | ".join(wemem.ORDERS) + " (by "
                    "memorization score; default: the authors' best, rsw low_first, swmr "
                    "high_first)")
flags.DEFINE_float("wemem_threshold", D.wemem_threshold, "rmr/swmr: rows with memorization >= "
                   "this train with their own optimizer (the authors': 0.6 Location, 0.5 "
                   "CIFAR-10)")
flags.DEFINE_float("wemem_weight_decay", D.wemem_weight_decay, "rmr/swmr: that optimizer's "
                   "weight decay")
flags.DEFINE_string("wemem_windows", D.wemem_windows, "rsw/swmr: per_class | code (the "
                    "released code's clamping: a short class's window end carries over)")
flags.DEFINE_float("noise_multiplier", None, "DP: noise standard deviation / clip norm")
flags.DEFINE_float("target_epsilon", None, "DP: calibrate the noise multiplier to this epsilon "
                   "(at --delta, over the most steps the run can take)")
flags.DEFINE_float("clip_norm", D.clip_norm, "DP: per-example gradient clipping bound")
flags.DEFINE_float("delta", D.delta, "DP: delta of (epsilon, delta)")
flags.DEFINE_string("dp_stages", D.dp_stages, "all (DP training and DP fine-tuning) | finetune "
                    "(non-private pretraining, DP fine-tuning after pruning: the pruning paper's "
                    "baseline; not DP end to end)")
flags.DEFINE_string("dp_clipping", D.dp_clipping, "auto | vmap | ghost | microbatch "
                    "(microbatch: mia_prune's clipping of micro-batch means)")
flags.DEFINE_string("dp_ghost_form", D.dp_ghost_form, "ghost clipping, per layer: auto (the "
                    "cheaper of gram and direct) | gram | direct (pruned layers always direct)")
flags.DEFINE_integer("dp_microbatch", D.dp_microbatch, "--dp_clipping=microbatch: rows per group")
flags.DEFINE_integer("physical_batch", None, "DP: rows per forward/backward pass (memory); "
                     "default: --batch_size")
flags.DEFINE_string("accountant", D.accountant, "rdp | pld (dp-accounting)")
flags.DEFINE_string("dp_noise_rng", D.dp_noise_rng, "threefry (JAX's PRNG) | fast "
                    "(jaxmia.fastrand, non-cryptographic)")
flags.DEFINE_string("data_dir", None, "data folder (default: $JAXMIA_DATA_DIR)")
flags.DEFINE_string("workdir", None, "output folder (default: workdir/<dataset>_<model>_"
                    "<pruning><sparsity>_s<seed>)")
flags.DEFINE_integer("checkpoint_every", D.checkpoint_every, "epochs between checkpoints")
cli.define_device_flags()
FLAGS = flags.FLAGS


def main(argv):
    # Every AuditConfig field has a flag of the same name.
    values = {f.name: getattr(FLAGS, f.name) for f in dataclasses.fields(audit_lib.AuditConfig)}
    config = audit_lib.AuditConfig(**{**values, "attacks": tuple(values["attacks"]),
                                      "attack_stages": tuple(values["attack_stages"]),
                                      "workdir": values["workdir"] or ""})

    def body():
        cfg = config
        if FLAGS.num_models is not None:
            if FLAGS.num_models < 2 or (FLAGS["num_shadows"].present
                                        and FLAGS.num_shadows != FLAGS.num_models - 1):
                raise UserError(f"--num_models must be >= 2 (the target and its shadows) and, "
                                f"with --num_shadows, equal to it + 1; got {FLAGS.num_models}")
            cfg = dataclasses.replace(cfg, num_shadows=FLAGS.num_models - 1)
        if not cfg.workdir:
            r = audit_lib.validate(cfg)
            if r.defense == "none":
                defense = ""
            elif r.defense == "dp":
                level = r.noise_multiplier if r.target_epsilon is None else r.target_epsilon
                defense = f"_dp{level}"
            elif r.defense in wemem.KINDS:
                defense = f"_{r.defense}" + ("" if r.defense == "rmr" else
                                             f"_w{r.wemem_width}s{r.wemem_stride}")
                if r.defense_stages != "finetune":
                    defense += f"_{r.defense_stages}"
                if not r.defense_shadows:
                    defense += "_nonadaptive"
            else:
                defense = f"_{r.defense}{audit_lib.defense_strength(r)}"
                if r.defense == "adv" and r.adv_target_steps != D.adv_target_steps:
                    defense += f"_{r.adv_target_steps}"
                if r.defense_stages != defenses.DEFAULT_STAGES[r.defense]:
                    defense += f"_{r.defense_stages}"
                if not r.defense_shadows:
                    defense += "_nonadaptive"
            imp = ""  # IMP's rounds, when they differ from the default's
            if r.pruning == "imp":
                imp = {"rewind": f"_rewind{r.imp_rewind_epoch}", "last_epoch": "_continue",
                       "best_model": ""}[audit_lib.imp_start(r)]
            pool = "" if r.pool_size is None else f"{r.pool_size}"
            cfg = dataclasses.replace(cfg, workdir=f"workdir/{r.dataset}{pool}_{r.model}_"
                                                   f"{r.pruning}{r.sparsity}{imp}{defense}_s{r.seed}")
        results = audit_lib.run(cfg)
        return audit_lib.format_table(results), f"{cfg.workdir}/results.json"

    cli.run(body, argv)


if __name__ == "__main__":
    app.run(main)
