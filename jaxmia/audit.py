"""The membership-inference audit of a pruned model (Yuan & Zhang, USENIX Security 2022).

Pipeline: train the target and its shadows as one ensemble -> prune every model with the same
method and sparsity -> fine-tune each for ``epochs // 2`` epochs with a fresh optimizer -> attack
the target twice: unpruned (attacks fit on the unpruned shadows) and pruned (fit on the pruned
shadows). Every stage checkpoints under ``<workdir>/ckpt``; a rerun with the same settings resumes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxmia import attacks, data, features, io, metrics, models, pruning, reporting, training
from jaxmia.errors import UserError

PRUNING_CHOICES = tuple(pruning.METHODS) + ("imp", "none")


@dataclasses.dataclass(frozen=True)
class AuditConfig:
    """Settings of one audit; everything except ``data_dir``/``workdir`` fixes the result."""

    dataset: str = "digits"
    model: str | None = None  # None: mlp for tabular data and digits, resnet18 otherwise.
    norm: str | None = None  # None: the architecture's default.
    pruning: str = "l1_unstructured"
    sparsity: float = 0.7
    num_shadows: int = 5
    epochs: int | None = None  # None: 50 for tabular data and digits, 100 for images.
    finetune_epochs: int | None = None  # None: epochs // 2.
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 5e-4
    patience: int = 5
    seed: int = 7
    imp_rounds: int = 3
    imp_method: str = "l1_unstructured"
    imp_rewind: bool = False
    slim_l1: float = 0.0
    attacks: tuple[str, ...] = attacks.AUDIT_DEFAULT
    data_dir: str | None = None
    workdir: str = "workdir/audit"
    checkpoint_every: int = 1

    def resolved(self) -> "AuditConfig":
        simple = self.dataset in data.TABULAR or self.dataset == "digits"
        model = self.model or ("mlp" if simple else "resnet18")
        epochs = self.epochs if self.epochs is not None else (50 if simple else 100)
        finetune = self.finetune_epochs if self.finetune_epochs is not None else epochs // 2
        return dataclasses.replace(self, model=model, epochs=epochs, finetune_epochs=finetune)

    def fingerprint(self) -> dict:
        """The settings a checkpoint depends on (paths and attack choice excluded)."""
        d = dataclasses.asdict(self.resolved())
        for k in ("data_dir", "workdir", "attacks", "checkpoint_every"):
            d.pop(k)
        return d


def validate(cfg: AuditConfig) -> AuditConfig:
    """Checks every setting before anything is read or written; returns the resolved config."""
    data.check_name(cfg.dataset)
    cfg = cfg.resolved()
    models.check_name(cfg.model)
    if cfg.norm is not None:
        models.layers.check_norm(cfg.norm)
    if cfg.pruning not in PRUNING_CHOICES:
        raise UserError(f"unknown pruning method '{cfg.pruning}'; choose one of "
                        f"{', '.join(PRUNING_CHOICES)}")
    if cfg.pruning == "imp":
        pruning.check_method(cfg.imp_method)
        if cfg.imp_rounds < 1:
            raise UserError(f"--imp_rounds must be >= 1, got {cfg.imp_rounds}")
    pruning.check_sparsity(cfg.sparsity)
    for name, value, low in (("num_shadows", cfg.num_shadows, 1), ("epochs", cfg.epochs, 1),
                             ("finetune_epochs", cfg.finetune_epochs, 0),
                             ("batch_size", cfg.batch_size, 1), ("patience", cfg.patience, 0),
                             ("checkpoint_every", cfg.checkpoint_every, 1)):
        if value < low:
            raise UserError(f"--{name} must be >= {low}, got {value}")
    if not cfg.lr > 0 or cfg.weight_decay < 0 or cfg.slim_l1 < 0:
        raise UserError("--lr must be > 0 and --weight_decay, --slim_l1 must be >= 0")
    unknown = [a for a in cfg.attacks if a not in attacks.REGISTRY]
    if unknown:
        raise UserError(f"unknown attack(s) {', '.join(unknown)}; choose from "
                        f"{', '.join(attacks.REGISTRY)}")
    return cfg


def check_workdir(cfg: AuditConfig) -> None:
    """Refuses a workdir that holds another run (a different config or a foreign checkpoint)."""
    config_path = os.path.join(cfg.workdir, "config.json")
    if os.path.isfile(config_path):
        try:
            with open(config_path) as f:
                previous = json.load(f).get("fingerprint")
        except (OSError, ValueError):
            previous = None
        if previous != cfg.fingerprint():
            diff = sorted(k for k in cfg.fingerprint()
                          if (previous or {}).get(k) != cfg.fingerprint()[k])
            raise UserError(f"workdir {cfg.workdir} holds another run's checkpoint (settings "
                            f"differ: {', '.join(diff) or 'unreadable config.json'}); pass a "
                            "fresh --workdir or delete that folder")
    elif os.path.isdir(os.path.join(cfg.workdir, "ckpt")):
        raise UserError(f"workdir {cfg.workdir} holds a checkpoint but no config.json, so it is "
                        "not known to match this run; pass a fresh --workdir or delete that folder")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _model_features(model, params, state, masks, x, y, idx_lists):
    """Features of each model on its own rows: dict of [K, n_max] (+ counts)."""
    idx, n = training.pad_indices(idx_lists)
    logits = training.predict_logits(model, params, state, masks, x, jnp.asarray(idx))
    feats = jax.device_get(features.extract(logits, y[jnp.asarray(idx)]))
    feats["labels"] = np.asarray(y)[idx]
    return feats, n


def _gather(feats, n, models_):
    """Concatenates the valid rows of the given models."""
    return {k: np.concatenate([v[m, : n[m]] for m in models_]) for k, v in feats.items()}


def attack_stage(cfg, model, params, state, masks, splits, x, y) -> tuple[dict, dict, dict]:
    """Runs every attack for one stage; returns (metrics, accuracies, per-example scores).

    Attacks are fit on the shadows' features (members: their train rows, non-members: their
    test rows, all shadows concatenated) and score the target's train and test rows.
    """
    train_f, train_n = _model_features(model, params, state, masks, x, y,
                                       [s.train for s in splits])
    test_f, test_n = _model_features(model, params, state, masks, x, y, [s.test for s in splits])
    shadows = range(1, len(splits))
    s_in, s_out = _gather(train_f, train_n, shadows), _gather(test_f, test_n, shadows)
    t_in, t_out = _gather(train_f, train_n, [0]), _gather(test_f, test_n, [0])
    shadow = {k: np.concatenate([s_in[k], s_out[k]]) for k in s_in}
    shadow_member = np.r_[np.ones(len(s_in["labels"]), bool), np.zeros(len(s_out["labels"]), bool)]
    target = {k: np.concatenate([t_in[k], t_out[k]]) for k in t_in}
    is_member = np.r_[np.ones(len(t_in["labels"]), bool), np.zeros(len(t_out["labels"]), bool)]
    results, scores = {}, {"is_member": is_member}
    for name in cfg.attacks:
        attack = attacks.REGISTRY[name](seed=cfg.seed)
        s = attack.score(attack.fit(shadow, shadow_member), target)
        results[name] = metrics.summarize_with_ci(s, is_member, seed=cfg.seed)
        scores[name] = s
    acc = {"target_train_acc": float(t_in["correct"].mean()),
           "target_test_acc": float(t_out["correct"].mean()),
           "shadow_train_acc": float(s_in["correct"].mean()),
           "shadow_test_acc": float(s_out["correct"].mean())}
    return results, acc, scores


def run(cfg: AuditConfig) -> dict:
    """Runs the audit and writes ``config.json``, ``metrics.jsonl``, ``splits.json``,
    ``results.json``, ``scores.npz`` and the ROC figures into ``cfg.workdir``. Returns the
    results dict.

    Raises:
      UserError: bad settings, missing/corrupt data, or a workdir of another run; raised before
        anything is written.
    """
    cfg = validate(cfg)
    check_workdir(cfg)
    timing = {}
    t0 = time.perf_counter()
    ds = data.load(cfg.dataset, cfg.data_dir)
    model = models.make(cfg.model, ds.num_classes, ds.input_shape, norm=cfg.norm)
    if cfg.pruning == "slim" and not model.has_batchnorm:
        raise UserError(f"network slimming needs BatchNorm, and {cfg.model} with norm "
                        f"'{cfg.norm}' has none; use --norm=batch with an image model")
    splits = data.mia_prune_splits(len(ds), cfg.num_shadows, cfg.seed)
    timing["load_data"] = time.perf_counter() - t0

    os.makedirs(cfg.workdir, exist_ok=True)
    io.write_json(os.path.join(cfg.workdir, "config.json"),
                  {"fingerprint": cfg.fingerprint(), "config": dataclasses.asdict(cfg)})
    io.write_json(os.path.join(cfg.workdir, "splits.json"),
                  {"target": splits[0].as_dict(),
                   "shadows": [s.as_dict() for s in splits[1:]]})
    metrics_path = os.path.join(cfg.workdir, "metrics.jsonl")
    ckpt = os.path.join(cfg.workdir, "ckpt")

    root = jax.random.key(cfg.seed)
    init_key, train_key, finetune_key = jax.random.split(root, 3)
    num_models = 1 + cfg.num_shadows
    ens = training.make_ensemble_data(ds.x, ds.y, [s.train for s in splits],
                                      [s.dev for s in splits])
    train_cfg = training.TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                                     weight_decay=cfg.weight_decay, patience=cfg.patience,
                                     checkpoint_every=cfg.checkpoint_every)
    init_params, init_state = training.init_ensemble(model, jax.random.split(init_key, num_models))
    ones = pruning.ones_like(init_params)

    t0 = time.perf_counter()
    _log(f"[audit] training target + {cfg.num_shadows} shadows on {cfg.dataset} "
         f"({cfg.model}, {cfg.epochs} epochs max)")
    reg = ((lambda p: pruning.slim_penalty(p, cfg.slim_l1))
           if cfg.pruning == "slim" and cfg.slim_l1 > 0 else None)
    pre = training.fit(model, init_params, init_state, ones, ens, train_cfg,
                       jax.random.split(train_key, num_models), regularizer=reg,
                       checkpoint_dir=os.path.join(ckpt, "pretrain"), metrics_path=metrics_path,
                       stage="pretrain")
    timing["pretrain"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    ft_cfg = dataclasses.replace(train_cfg, epochs=max(cfg.finetune_epochs, 1))
    ft_keys = jax.random.split(finetune_key, num_models)
    if cfg.pruning == "none" or (cfg.finetune_epochs == 0 and cfg.pruning != "imp"):
        masks = pruning.make_masks("none" if cfg.pruning == "none" else cfg.pruning,
                                   pre.params, cfg.sparsity, ensemble=True)
        pruned = dataclasses.replace(pre, params=pruning.apply_masks(pre.params, masks),
                                     masks=masks)
    elif cfg.pruning == "imp":
        _log(f"[audit] iterative magnitude pruning: {cfg.imp_rounds} rounds to {cfg.sparsity}")
        results_by_round = {}

        def retrain(params, masks, r):
            res = training.fit(model, params, pre.model_state, masks, ens, ft_cfg,
                               jax.vmap(jax.random.fold_in, in_axes=(0, None))(ft_keys, r),
                               checkpoint_dir=os.path.join(ckpt, f"imp_round{r}"),
                               metrics_path=metrics_path, stage=f"imp_round{r}")
            results_by_round[r] = res
            return res.params

        _, masks = pruning.iterative_magnitude(
            pre.params, cfg.sparsity, cfg.imp_rounds, retrain, method=cfg.imp_method,
            rewind_params=init_params if cfg.imp_rewind else None, ensemble=True)
        pruned = results_by_round[cfg.imp_rounds - 1]
    else:
        masks = pruning.make_masks(cfg.pruning, pre.params, cfg.sparsity, ensemble=True)
        _log(f"[audit] pruned ({cfg.pruning}, {cfg.sparsity}); fine-tuning "
             f"{cfg.finetune_epochs} epochs max")
        pruned = training.fit(model, pruning.apply_masks(pre.params, masks), pre.model_state,
                              masks, ens, ft_cfg, ft_keys,
                              checkpoint_dir=os.path.join(ckpt, "finetune"),
                              metrics_path=metrics_path, stage="finetune")
    timing["prune_finetune"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    results = {"attacks": {}, "accuracy": {}}
    all_scores = {}
    for stage, res in (("unpruned", pre), ("pruned", pruned)):
        metrics_, acc, scores = attack_stage(cfg, model, res.params, res.model_state, res.masks,
                                             splits, ens.x, ens.y)
        results["attacks"][stage] = metrics_
        results["accuracy"][stage] = acc
        all_scores.update({f"{stage}/{k}": v for k, v in scores.items()})
    timing["attacks"] = time.perf_counter() - t0

    report = pruning.report(jax.tree.map(lambda m: m[0], pruned.masks))
    out = {
        "dataset": cfg.dataset, "model": cfg.model, "norm": cfg.norm, "pruning": cfg.pruning,
        "sparsity": cfg.sparsity, "seed": cfg.seed, "num_shadows": cfg.num_shadows,
        "epochs": cfg.epochs, "finetune_epochs": cfg.finetune_epochs,
        "data_source": ds.source,
        "split_sizes": {"target_train": len(splits[0].train), "target_dev": len(splits[0].dev),
                        "target_test": len(splits[0].test)},
        "target_train_acc": results["accuracy"]["unpruned"]["target_train_acc"],
        "target_test_acc": results["accuracy"]["unpruned"]["target_test_acc"],
        "pruned_target_train_acc": results["accuracy"]["pruned"]["target_train_acc"],
        "pruned_target_test_acc": results["accuracy"]["pruned"]["target_test_acc"],
        "accuracy": results["accuracy"],
        "achieved_sparsity": {"target_overall": report["overall"],
                              "target_bn_scales": report["overall_bn_scales"],
                              "target_layers": report["layers"]},
        "best_epoch": {"pretrain": pre.best_epoch.tolist(), "pruned": pruned.best_epoch.tolist()},
        "attacks": results["attacks"],
        "timing_s": {k: round(v, 2) for k, v in timing.items()},
        "jax": {"version": jax.__version__, "backend": jax.default_backend(),
                "devices": jax.device_count()},
    }
    io.write_npz(os.path.join(cfg.workdir, "scores.npz"), **all_scores)
    for stage in ("unpruned", "pruned"):
        reporting.plot_roc({a: (all_scores[f"{stage}/{a}"], all_scores[f"{stage}/is_member"])
                            for a in cfg.attacks},
                           os.path.join(cfg.workdir, f"roc_{stage}.png"),
                           f"{cfg.dataset} / {cfg.model}, {stage} target")
    io.write_json(os.path.join(cfg.workdir, "results.json"), out)
    return out


def format_table(results: dict) -> str:
    """The human-readable summary printed at the end of an audit."""
    lines = [f"{results['dataset']} / {results['model']} / {results['pruning']} "
             f"@ {results['sparsity']} (achieved {results['achieved_sparsity']['target_overall']:.3f})",
             f"target accuracy  unpruned: train {results['target_train_acc']:.4f} "
             f"test {results['target_test_acc']:.4f}   pruned: train "
             f"{results['pruned_target_train_acc']:.4f} test {results['pruned_target_test_acc']:.4f}",
             "",
             f"{'attack':<18}{'bal.acc (unpruned)':>20}{'AUC':>8}{'bal.acc (pruned)':>19}"
             f"{'AUC':>8}{'TPR@1%FPR pruned':>18}"]
    for name, un in results["attacks"]["unpruned"].items():
        pr = results["attacks"]["pruned"][name]
        lines.append(f"{name:<18}{un['balanced_accuracy']:>20.4f}{un['auc']:>8.4f}"
                     f"{pr['balanced_accuracy']:>19.4f}{pr['auc']:>8.4f}{pr['tpr@1%fpr']:>18.4f}")
    t = results["timing_s"]
    lines.append("")
    lines.append("wall time (s): " + ", ".join(f"{k} {v}" for k, v in t.items()))
    return "\n".join(lines)
