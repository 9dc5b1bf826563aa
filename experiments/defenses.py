r"""Defense study: the same audit once per defense setting, and the privacy-utility table and
figure across them (the pruning paper's comparison of defenses on the pruned target).

  python experiments/defenses.py --dataset=location --data_dir=../shared/data \
      --settings=none,ppb:4,adv:1,relaxloss:1,label_smoothing:0.1 --workdir=/tmp/defenses_loc

Each setting's audit goes to --workdir/<setting>/ (results.json, figures, checkpoints; a killed
study resumes setting by setting); the study writes study.json, study.csv (a row per setting
and attack) and tradeoff.png into --workdir and prints a table. Settings: none, dp:<noise
multiplier>, or a loss-term defense (ppb, adv, relaxloss, label_smoothing) with an optional
:<strength>, or a WeMem schedule (rsw, rmr, swmr; needs --memorization_scores). Bad input
prints one line starting with "error:" and exits with status 2, writing nothing.

Measured on 2 CPU cores (2026-12-01, BUILD_NOTES.md), the command above with dp:1.5 added:
3 min 18 s; the pruned target's test accuracy 0.5621 undefended, 0.4778-0.5496 with the
loss-term defenses, 0.0904 with DP; its best threshold attack 0.8124 balanced accuracy
undefended, 0.7028 (relaxloss) to 0.8168 (label smoothing) defended, 0.5289 with DP.
"""

from __future__ import annotations

import dataclasses

from absl import app, flags

from jaxmia import audit as audit_lib
from jaxmia import cli
from jaxmia import defense_study as lib

D = audit_lib.AuditConfig()
flags.DEFINE_string("settings", "none,ppb:4,adv:1,relaxloss:1,label_smoothing:0.1",
                    "comma-separated: none | dp:<noise multiplier> | ppb|adv|relaxloss|"
                    "label_smoothing[:<strength>] | rsw | rmr | swmr (WeMem's schedules, with "
                    "--memorization_scores)")
flags.DEFINE_string("dataset", "location", "a dataset name (see experiments/audit.py)")
flags.DEFINE_string("model", None, "default: mlp for tabular data and digits, resnet18 otherwise")
flags.DEFINE_string("pruning", D.pruning, "the pruning method of every setting")
flags.DEFINE_float("sparsity", D.sparsity, "sparsity")
flags.DEFINE_integer("num_shadows", D.num_shadows, "shadow models")
flags.DEFINE_integer("epochs", None, "maximum training epochs (default: 50 tabular, 100 images)")
flags.DEFINE_integer("finetune_epochs", None, "maximum fine-tuning epochs (default: epochs // 2)")
flags.DEFINE_list("attacks", ["threshold"], "attack names or sets, as experiments/audit.py")
flags.DEFINE_list("attack_stages", ["pruned"], "unpruned and/or pruned: the study compares the "
                  "pruned target when it is attacked")
flags.DEFINE_bool("defense_shadows", D.defense_shadows, "adaptive shadows (trained with the "
                  "defense); --nodefense_shadows: the target only")
flags.DEFINE_string("memorization_scores", None, "the WeMem settings' scores: memorization.npz "
                    "of experiments/lira.py --population_fraction=0 on this dataset (their "
                    "other settings are experiments/audit.py's defaults)")
flags.DEFINE_float("relaxloss_upper", D.relaxloss_upper, "the relaxloss settings' cap on the "
                   "true class's probability in the flattened targets")
flags.DEFINE_string("relaxloss_variant", D.relaxloss_variant, "the relaxloss settings' "
                    "flattening: tabular | image")
flags.DEFINE_string("adv_target_steps", D.adv_target_steps, "the adv settings' target steps: "
                    "every_batch | one_per_epoch (the released code's schedule)")
flags.DEFINE_integer("seed", D.seed, "split seed and root PRNG key")
flags.DEFINE_string("data_dir", None, "data folder (default: $JAXMIA_DATA_DIR)")
flags.DEFINE_string("workdir", "workdir/defenses", "the study's folder")
cli.define_device_flags()
FLAGS = flags.FLAGS


def main(argv):
    def body():
        base = dataclasses.replace(
            D, dataset=FLAGS.dataset, model=FLAGS.model, pruning=FLAGS.pruning,
            sparsity=FLAGS.sparsity, num_shadows=FLAGS.num_shadows, epochs=FLAGS.epochs,
            finetune_epochs=FLAGS.finetune_epochs, attacks=tuple(FLAGS.attacks),
            attack_stages=tuple(FLAGS.attack_stages), defense_shadows=FLAGS.defense_shadows,
            seed=FLAGS.seed, data_dir=FLAGS.data_dir,
            memorization_scores=FLAGS.memorization_scores,
            adv_target_steps=FLAGS.adv_target_steps, relaxloss_upper=FLAGS.relaxloss_upper,
            relaxloss_variant=FLAGS.relaxloss_variant)
        study = lib.run(base, lib.parse_settings(FLAGS.settings), FLAGS.workdir)
        return lib.format_table(study), f"{FLAGS.workdir}/study.json"

    cli.run(body, argv)


if __name__ == "__main__":
    app.run(main)
