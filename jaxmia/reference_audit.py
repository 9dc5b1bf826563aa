"""The membership-matrix study behind ``experiments/lira.py``: M models on random halves of a
pool, each in turn the target and the others its references; LiRA, RMIA and the global loss
threshold compared on the same scores; Feldman memorization per example.

Every model trains in one ensemble (sharded over all visible devices), optionally pruned and
fine-tuned. Outputs in the workdir: config.json, metrics.jsonl, results.json (per attack: the
metrics averaged over targets, and pooled over targets with bootstrap CIs), scores.npz,
memorization.npz, roc.png.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxmia import (
    data,
    features,
    io,
    metrics,
    models,
    pruning,
    reporting,
    shadow,
    sharding,
    training,
)
from jaxmia.attacks import lira, rmia
from jaxmia.errors import UserError


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    dataset: str = "location"
    model: str | None = None
    norm: str | None = None
    num_models: int = 16
    # Rows no model trains on (RMIA's population z); 0: none, so every row gets a memorization
    # score (what WeMem's schedules need) and RMIA is left out.
    population_fraction: float = 0.1
    epochs: int | None = None  # None: 30; 5 on text (fine-tuning a BERT)
    batch_size: int | None = None  # None: 128; 32 on text
    lr: float | None = None  # None: models.default_lr (1e-3; 5e-5 for the pretrained BERTs)
    weight_decay: float = 5e-4
    # Rows drawn (with the seed) from the dataset's pool first; None: all of them.
    pool_size: int | None = None
    pruning: str = "none"
    sparsity: float = 0.7
    finetune_epochs: int | None = None  # None: 15; 2 on text
    num_targets: int | None = None  # None: every model is a target once
    # Image queries (Carlini et al.'s code): the image and its mirror, each shifted by every
    # offset in range(-query_shift, query_shift + 1, query_stride) pixels in both directions on a
    # reflect-padded copy: 2 x 3 x 3 = 18 queries with the defaults; 0 = mirror only.
    query_shift: int = 2
    query_stride: int = 2
    rmia_gamma: float = 1.0
    rmia_offline_a: float = 0.3
    seed: int = 0
    data_dir: str | None = None
    workdir: str = "workdir/lira"
    checkpoint_every: int = 5


def validate(cfg: StudyConfig) -> StudyConfig:
    data.check_name(cfg.dataset)
    data.check_seed(cfg.seed)
    model = cfg.model or data.default_model(cfg.dataset)
    text = data.is_text(cfg.dataset)

    def default(value, text_value, other):
        return value if value is not None else text_value if text else other

    cfg = dataclasses.replace(cfg, model=model,
                              lr=cfg.lr if cfg.lr is not None else models.default_lr(model),
                              epochs=default(cfg.epochs, 5, 30),
                              batch_size=default(cfg.batch_size, 32, 128),
                              finetune_epochs=default(cfg.finetune_epochs, 2, 15))
    models.check_name(cfg.model)
    models.check_data(cfg.model, cfg.dataset, text)
    if cfg.pool_size is not None and cfg.pool_size < 2 * cfg.num_models:
        raise UserError(f"--pool_size must be >= 2 x --num_models = {2 * cfg.num_models} (each "
                        f"model trains on half the rows), got {cfg.pool_size}")
    if cfg.num_models < 4:
        raise UserError(f"--num_models must be >= 4 (targets need in- and out-references), "
                        f"got {cfg.num_models}")
    if not 0 <= cfg.population_fraction < 0.5:
        raise UserError(f"--population_fraction must be in [0, 0.5), got "
                        f"{cfg.population_fraction}")
    models.check_norm(cfg.model, cfg.norm)
    for name in ("epochs", "batch_size", "checkpoint_every"):
        if getattr(cfg, name) < 1:
            raise UserError(f"--{name} must be >= 1, got {getattr(cfg, name)}")
    training.check_rates(cfg.lr, cfg.weight_decay)
    if cfg.pruning != "none":
        pruning.check_method(cfg.pruning)
        pruning.check_sparsity(cfg.sparsity)
        if cfg.finetune_epochs < 0:
            raise UserError(f"--finetune_epochs must be >= 0, got {cfg.finetune_epochs}")
    if not (math.isfinite(cfg.rmia_gamma) and cfg.rmia_gamma > 0):
        raise UserError(f"--rmia_gamma (RMIA's pairwise threshold) must be a finite number > 0, "
                        f"got {cfg.rmia_gamma}")
    if not 0 <= cfg.rmia_offline_a <= 1:
        raise UserError(f"--rmia_offline_a (RMIA's offline approximation) must be in [0, 1], "
                        f"got {cfg.rmia_offline_a}")
    if cfg.query_shift < 0 or cfg.query_stride < 1 or cfg.query_shift % cfg.query_stride:
        raise UserError(f"--query_shift must be >= 0 and a multiple of --query_stride >= 1 (so "
                        f"the unshifted image is one of the queries), got {cfg.query_shift} and "
                        f"{cfg.query_stride}")
    if cfg.num_targets is not None and not 1 <= cfg.num_targets <= cfg.num_models:
        raise UserError(f"--num_targets must be in [1, {cfg.num_models}], got {cfg.num_targets}")
    return cfg


@functools.lru_cache(maxsize=None)
def query_view(flip: bool, dy: int, dx: int, shift: int):
    """A batch of NHWC images mirrored (``flip``) and shifted: reflect-padded by ``shift`` and
    cropped at offset (``dy``, ``dx``); (False, shift, shift, shift) is the identity. Cached, so
    equal views are the same function (and compile once)."""

    def view(x):
        if flip:
            x = x[:, :, ::-1]
        if shift:
            h, w = x.shape[1:3]
            x = jnp.pad(x, ((0, 0), (shift, shift), (shift, shift), (0, 0)), mode="reflect")
            x = x[:, dy:dy + h, dx:dx + w]
        return x

    return view


def query_views(shift: int, stride: int) -> list:
    """The image queries, the unshifted image first: mirror x shifts (see ``StudyConfig``)."""
    offsets = range(0, 2 * shift + 1, stride)
    views = [query_view(flip, dy, dx, shift) for flip in (False, True)
             for dy in offsets for dx in offsets]
    views.remove(query_view(False, shift, shift, shift))
    return [query_view(False, shift, shift, shift)] + views


def _augmented_logits(model, res, x, idx, views, mesh):
    """Logits ``[M, N, A, C]`` on the queries (``views``; None: the rows themselves)."""
    return jnp.stack([training.predict_logits(model, res.params, res.model_state, res.masks, x,
                                              idx, mesh=mesh, transform=v) for v in views],
                     axis=2)


def run(cfg: StudyConfig) -> dict:
    cfg = validate(cfg)
    t0 = time.perf_counter()
    ds = data.subsample(data.load(cfg.dataset, cfg.data_dir), cfg.pool_size, cfg.seed)
    model = models.make(cfg.model, ds.num_classes, ds.input_shape, norm=cfg.norm)
    pruning.check_model(cfg.pruning, jax.eval_shape(model.init, jax.random.key(0))[0], cfg.model)
    root = jax.random.key(cfg.seed)
    split_key, member_key, init_key, train_key, ft_key = jax.random.split(root, 5)
    n = len(ds)
    order = np.asarray(jax.random.permutation(split_key, n))
    num_pop = int(round(cfg.population_fraction * n))
    population, pool = order[:num_pop], order[num_pop:]
    in_mask = shadow.membership_matrix(member_key, cfg.num_models, len(pool))
    train_lists = [pool[in_mask[m]] for m in range(cfg.num_models)]
    dev_lists = [population] * cfg.num_models  # monitoring only: no early stopping
    settings = {k: v for k, v in dataclasses.asdict(cfg).items()
                if k not in ("data_dir", "workdir", "num_targets", "rmia_gamma",
                             "rmia_offline_a", "checkpoint_every", "query_shift",
                             "query_stride")}
    config_path = os.path.join(cfg.workdir, "config.json")
    io.claim_workdir(cfg.workdir)  # nothing after this can refuse a folder it created
    if os.path.isfile(config_path):
        with open(config_path) as f:
            previous = json.load(f)
        if previous.get("settings") != settings:
            raise UserError(f"workdir {cfg.workdir} holds another study (settings differ); "
                            "pass a fresh --workdir or delete that folder")
    io.write_json(config_path, {"settings": settings, "config": dataclasses.asdict(cfg)})
    metrics_path = os.path.join(cfg.workdir, "metrics.jsonl")
    ckpt = os.path.join(cfg.workdir, "ckpt")
    mesh = sharding.training_mesh()  # training: every device of every process
    ens = training.make_ensemble_data(ds.x, ds.y, train_lists, dev_lists)
    tc = training.TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                              weight_decay=cfg.weight_decay, patience=None, keep="last",
                              checkpoint_every=cfg.checkpoint_every)
    params, state = training.init_ensemble(model, jax.random.split(init_key, cfg.num_models))
    timing = {"load_data": time.perf_counter() - t0}
    t0 = time.perf_counter()
    res = training.fit(model, params, state, pruning.ones_like(params), ens, tc,
                       jax.random.split(train_key, cfg.num_models),
                       checkpoint_dir=os.path.join(ckpt, "train"), metrics_path=metrics_path,
                       stage="train", mesh=mesh)
    if cfg.pruning != "none":
        masks = pruning.make_masks(cfg.pruning, res.params, cfg.sparsity, ensemble=True)
        res = training.fit(model, pruning.apply_masks(res.params, masks), res.model_state, masks,
                           ens, dataclasses.replace(tc, epochs=max(cfg.finetune_epochs, 1)),
                           jax.random.split(ft_key, cfg.num_models),
                           checkpoint_dir=os.path.join(ckpt, "finetune"),
                           metrics_path=metrics_path, stage="finetune", mesh=mesh)
    timing["train"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    rows = np.concatenate([pool, population])
    idx = jnp.asarray(np.broadcast_to(rows, (cfg.num_models, len(rows))))
    views = query_views(cfg.query_shift, cfg.query_stride) if ds.x.ndim == 4 else [None]
    logits = _augmented_logits(model, res, ens.x, idx, views, sharding.local_mesh())
    labels = jnp.broadcast_to(ens.y[rows][None, :, None], logits.shape[:3])
    feats = features.extract(logits, labels)
    stat = np.asarray(feats["logit_scaled"], np.float64)  # [M, N + Z, A]
    conf = np.asarray(feats["confidence"][..., 0], np.float64)  # [M, N + Z]
    loss = np.asarray(feats["loss"][..., 0], np.float64)
    correct = np.asarray(jnp.argmax(logits[:, :, 0], -1) == labels[..., 0])
    p = len(pool)
    targets = range(cfg.num_targets or cfg.num_models)
    attacks = {
        "lira_online": lambda t, r, ri: lira.scores(stat[t, :p], stat[r, :p], ri),
        "lira_online_fixed_var": lambda t, r, ri: lira.scores(stat[t, :p], stat[r, :p], ri,
                                                                fixed_variance=True),
        "lira_offline": lambda t, r, ri: lira.scores(stat[t, :p], stat[r, :p], ri,
                                                      online=False),
        "lira_offline_fixed_var": lambda t, r, ri: lira.scores(
            stat[t, :p], stat[r, :p], ri, online=False, fixed_variance=True),
        "rmia_online": lambda t, r, ri: rmia.scores(
            conf[t, :p], conf[r, :p], ri, conf[t, p:], conf[r, p:], gamma=cfg.rmia_gamma) - 0.5,
        "rmia_offline": lambda t, r, ri: rmia.scores(
            conf[t, :p], conf[r, :p], ri, conf[t, p:], conf[r, p:], gamma=cfg.rmia_gamma,
            online=False, a=cfg.rmia_offline_a) - 0.5,
        # The global loss threshold: one cut for all examples, halfway between the references'
        # mean member and non-member losses (Yeom et al.).
        "loss_threshold": lambda t, r, ri: 0.5 * (loss[r, :p][ri].mean()
                                                  + loss[r, :p][~ri].mean()) - loss[t, :p],
    }
    results, pooled, per_target = {}, {}, {}
    if num_pop == 0:  # RMIA compares against population rows; there are none
        attacks = {k: v for k, v in attacks.items() if not k.startswith("rmia")}
    for name, fn in attacks.items():
        runs = list(shadow.leave_one_out(fn, in_mask, targets))
        per_target[name] = [metrics.summarize(s, m) for _, s, m in runs]
        scores = np.concatenate([s for _, s, _ in runs])
        member = np.concatenate([m for _, _, m in runs])
        pooled[name] = (scores, member)
        results[name] = {
            "mean_over_targets": {k: float(np.mean([r[k] for r in per_target[name]]))
                                  for k in per_target[name][0]},
            "pooled": metrics.summarize_with_ci(scores, member, seed=cfg.seed),
        }
    timing["attacks"] = time.perf_counter() - t0
    mem = shadow.memorization(correct[:, :p], in_mask)
    io.write_npz(os.path.join(cfg.workdir, "memorization.npz"), row=pool, **mem,
                 dataset=np.asarray(cfg.dataset), num_rows=np.asarray(n))
    io.write_npz(os.path.join(cfg.workdir, "scores.npz"),
                 **{f"{k}/scores": v[0] for k, v in pooled.items()},
                 **{f"{k}/is_member": v[1] for k, v in pooled.items()},
                 in_mask=in_mask, pool=pool, population=population)
    reporting.plot_roc(pooled, os.path.join(cfg.workdir, "roc.png"),
                       f"{cfg.dataset} / {cfg.model}, {cfg.num_models} models"
                       + (f", {cfg.pruning} {cfg.sparsity}" if cfg.pruning != "none" else ""))
    out = {
        "dataset": cfg.dataset, "model": cfg.model, "num_models": cfg.num_models,
        "pool_size": int(p), "population_size": int(num_pop), "targets": len(targets),
        "queries_per_example": len(views),
        "pruning": cfg.pruning, "sparsity": cfg.sparsity if cfg.pruning != "none" else 0.0,
        "train_accuracy": float(np.mean([correct[m, :p][in_mask[m]].mean()
                                         for m in range(cfg.num_models)])),
        "test_accuracy": float(np.mean([correct[m, :p][~in_mask[m]].mean()
                                        for m in range(cfg.num_models)])),
        "attacks": results,
        "memorization": {"mean": float(np.nanmean(mem["memorization"])),
                         "num_in_per_example": int(mem["num_in"][0]),
                         "num_out_per_example": int(mem["num_out"][0])},
        "timing_s": {k: round(v, 2) for k, v in timing.items()},
        "jax": {"version": jax.__version__, "backend": jax.default_backend(),
                "devices": jax.device_count(),
                "processes": jax.process_count()},
    }
    io.write_json(os.path.join(cfg.workdir, "results.json"), out)
    return out


def format_table(results: dict) -> str:
    lines = [f"{results['dataset']} / {results['model']}: {results['num_models']} models, "
             f"{results['targets']} targets; train acc {results['train_accuracy']:.4f}, test acc "
             f"{results['test_accuracy']:.4f}", "",
             "means over targets, then TPR@0.1%FPR of all targets' scores pooled, with its "
             "bootstrap 95% CI",
             f"{'attack':<24}{'AUC':>8}{'TPR@1%FPR':>11}{'TPR@0.1%FPR':>13}{'pooled':>9}  CI"]
    for name, r in results["attacks"].items():
        m, pl = r["mean_over_targets"], r["pooled"]
        ci = pl["tpr@0.1%fpr_ci95"]
        lines.append(f"{name:<24}{m['auc']:>8.4f}{m['tpr@1%fpr']:>11.4f}{m['tpr@0.1%fpr']:>13.4f}"
                     f"{pl['tpr@0.1%fpr']:>9.4f}  [{ci[0]:.4f}, {ci[1]:.4f}]")
    return "\n".join(lines)
