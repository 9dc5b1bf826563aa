"""The membership-inference audit of a pruned model (Yuan & Zhang, USENIX Security 2022).

Pipeline: train the target and its shadows as one ensemble -> prune every model with the same
method and sparsity -> fine-tune each for ``epochs // 2`` epochs with a fresh optimizer -> attack
the target twice: unpruned (attacks fit on the unpruned shadows) and pruned (fit on the pruned
shadows). Every stage checkpoints under ``<workdir>/ckpt``; a rerun with the same settings resumes.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxmia import (
    accounting,
    attacks,
    clipping,
    data,
    defenses,
    dp,
    features,
    io,
    metrics,
    models,
    pretrained,
    pruning,
    reporting,
    sharding,
    training,
)
from jaxmia.attacks import label_only_text
from jaxmia.data import wordnet
from jaxmia.defenses import wemem
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
    # None: 50 for tabular data and digits, 100 for images, 5 for text (fine-tuning a BERT).
    epochs: int | None = None
    finetune_epochs: int | None = None  # None: epochs // 2.
    batch_size: int | None = None  # None: 128 (the papers'); 32 on text (BERT fine-tuning)
    lr: float | None = None  # None: models.default_lr (1e-3; 5e-5 for the pretrained BERTs)
    weight_decay: float = 5e-4
    patience: int = 5
    seed: int = 7
    # Rows drawn (with the seed) from the dataset's pool before it is split; None: all of them.
    pool_size: int | None = None
    imp_rounds: int = 3
    imp_method: str = "l1_unstructured"
    imp_rewind: bool = False
    # With imp_rewind: the survivors go back to their weights after this many pretraining
    # epochs (Frankle et al.'s late rewinding); 0 = the initialization.
    imp_rewind_epoch: int = 0
    # True: each IMP round continues from the previous round's last epoch with its optimizer
    # (and ADV's inference model) state, as WeMem's code runs its rounds; False: from the
    # previous round's best-on-dev model with a fresh optimizer.
    imp_continue: bool = False
    slim_l1: float = 0.0
    attacks: tuple[str, ...] = ("all",)  # names, or the sets 'all', 'paper', 'threshold'
    # Which targets are attacked: the pruning paper's code attacks only the pruned one.
    attack_stages: tuple[str, ...] = ("unpruned", "pruned")
    # m of the sensitivity feature; 0 skips it (and SAMIA). None: 10, or 5 on text, where the
    # noise goes to the word embeddings and each copy is a whole BERT pass (m = 5 is "Sparsity
    # can improve privacy"'s setting).
    sensitivity_samples: int | None = None
    sensitivity_epsilon: float = 1e-3
    sensitivity_noise: str = "auto"  # features.NOISE; auto: projected for the MLP, else fast
    label_only_examples: int = 500  # per split and model, for the label-only attacks
    wordnet_dir: str = wordnet.DEBIAN_DIR  # WordNet 3.0's database files, for label_synonym
    blindmi_reference: int = 200  # generated non-members BlindMI compares against
    attack_epochs: int | None = None  # None: each classifier attack's own (paper) epochs
    shadow_pruning: str | None = None  # unknown pruning knowledge: shadows pruned otherwise
    shadow_sparsity: float | None = None
    optimizer: str = "adam"  # 'adam' or 'sgd' (momentum 0.9); with --defense=dp: DP-Adam/DP-SGD
    # 'none', 'dp' (DP-SGD) or a loss-term defense (defenses.REGISTRY: ppb, adv, relaxloss,
    # label_smoothing); the shadows get the same settings (an adaptive attacker).
    defense: str = "none"
    # A loss-term defense's strength (ppb: lambda, adv: theta, relaxloss: alpha,
    # label_smoothing: epsilon); None: the defense's default (4, 1, 1, 0.1).
    defense_strength: float | None = None
    # Where a loss-term defense trains: 'all' (pretraining and fine-tuning) or 'finetune'; None:
    # the defense's paper (defenses.DEFAULT_STAGES: ppb finetune, the others all).
    defense_stages: str | None = None
    relaxloss_upper: float = 1.0  # RelaxLoss's cap on the flattened targets' true class
    relaxloss_variant: str = "tabular"  # RelaxLoss's flattening: the authors' tabular or image
    # ADV's target steps (adv.TARGET_STEPS): one per batch (Nasr et al.) or, as the released
    # code runs it, one per epoch.
    adv_target_steps: str = "every_batch"
    # True: the shadows train with the defense too (an adaptive attacker); False: only the
    # target does (mia_prune's default; its adaptive mode loads defended shadows).
    defense_shadows: bool = True
    # WeMem's data schedules (--defense=rsw|rmr|swmr, jaxmia.defenses.wemem): the per-row
    # memorization scores they rank by (experiments/lira.py's memorization.npz), RSW's window
    # (rows per class, move per epoch) and order, RMR's threshold and risky-row weight decay.
    memorization_scores: str | None = None
    wemem_width: int = wemem.DEFAULT_WIDTH
    wemem_stride: int = wemem.DEFAULT_STRIDE
    wemem_order: str | None = None  # None: the authors' best (rsw low_first, swmr high_first)
    wemem_threshold: float = wemem.DEFAULT_THRESHOLD
    wemem_weight_decay: float = wemem.DEFAULT_WEIGHT_DECAY
    wemem_windows: str = "per_class"  # or 'code': the released code's clamping of windows
    noise_multiplier: float | None = None  # DP: sigma; or give target_epsilon instead
    target_epsilon: float | None = None  # DP: calibrate sigma to this epsilon over the max steps
    clip_norm: float = 1.0  # DP: per-example clipping bound C
    delta: float = 1e-5  # DP: the delta of (epsilon, delta)
    dp_stages: str = "all"  # 'all': DP training from scratch and DP fine-tuning; 'finetune':
    # non-private pretraining, then DP fine-tuning after pruning (the pruning paper's baseline)
    dp_clipping: str = "auto"  # clipping.METHODS ('auto' = ghost)
    dp_microbatch: int = 64  # --dp_clipping=microbatch: rows per clipped group (mia_prune: 64)
    dp_ghost_form: str = "auto"  # clipping.GHOST_FORMS: per layer by cost, or forced
    physical_batch: int | None = None  # DP: rows per forward/backward pass (None: batch_size)
    accountant: str = "rdp"  # accounting.ACCOUNTANTS
    dp_noise_rng: str = "threefry"  # dp.NOISE_RNGS
    data_dir: str | None = None
    workdir: str = "workdir/audit"
    checkpoint_every: int = 1

    def resolved(self) -> AuditConfig:
        model = self.model or data.default_model(self.dataset)
        text = data.is_text(self.dataset)
        epochs = self.epochs if self.epochs is not None else (
            50 if data.is_small(self.dataset) else 5 if text else 100)
        lr = self.lr if self.lr is not None else models.default_lr(model)
        batch = self.batch_size if self.batch_size is not None else (32 if text else 128)
        sensitivity = self.sensitivity_samples
        if sensitivity is None:
            sensitivity = 5 if text else 10
        finetune = self.finetune_epochs if self.finetune_epochs is not None else epochs // 2
        strength, stages = self.defense_strength, self.defense_stages
        order = self.wemem_order
        if self.defense in defenses.REGISTRY:
            strength = defenses.DEFAULT_STRENGTH[self.defense] if strength is None else strength
            stages = defenses.DEFAULT_STAGES[self.defense] if stages is None else stages
        if self.defense in wemem.KINDS:  # WeMem defends the fine-tuning of pruned models
            stages = "finetune" if stages is None else stages
            if self.defense != "rmr":
                order = wemem.DEFAULT_ORDER[self.defense] if order is None else order
        return dataclasses.replace(self, model=model, epochs=epochs, finetune_epochs=finetune,
                                   lr=lr, batch_size=batch, sensitivity_samples=sensitivity,
                                   defense_strength=strength, defense_stages=stages,
                                   wemem_order=order)

    def fingerprint(self) -> dict:
        """The settings a checkpoint depends on (paths and attack choice excluded)."""
        d = dataclasses.asdict(self.resolved())
        for k in ("data_dir", "workdir", "attacks", "attack_stages", "checkpoint_every",
                  "sensitivity_samples", "sensitivity_epsilon", "sensitivity_noise",
                  "label_only_examples", "wordnet_dir", "blindmi_reference", "attack_epochs",
                  "memorization_scores"):
            d.pop(k)
        if self.defense in wemem.KINDS and self.memorization_scores:
            # The scores' content, not their path, fixes the result.
            try:
                with open(self.memorization_scores, "rb") as f:
                    d["memorization_scores_sha256"] = hashlib.sha256(f.read()).hexdigest()
            except OSError:
                d["memorization_scores_sha256"] = None
        return d


def imp_start(cfg: AuditConfig) -> str:
    """Where each IMP round starts: ``rewind`` (``--imp_rewind``), ``last_epoch``
    (``--imp_continue``) or ``best_model`` (the previous round's best, the default)."""
    return "rewind" if cfg.imp_rewind else "last_epoch" if cfg.imp_continue else "best_model"


def validate(cfg: AuditConfig) -> AuditConfig:
    """Checks every setting before anything is read or written; returns the resolved config."""
    data.check_name(cfg.dataset)
    data.check_seed(cfg.seed)
    cfg = cfg.resolved()
    models.check_name(cfg.model)
    models.check_data(cfg.model, cfg.dataset, data.is_text(cfg.dataset))
    if cfg.pool_size is not None and cfg.pool_size < 40:
        raise UserError(f"--pool_size must be >= 40 rows (every model's train, dev and test "
                        f"splits need some), got {cfg.pool_size}")
    models.check_norm(cfg.model, cfg.norm)
    if cfg.pruning not in PRUNING_CHOICES:
        raise UserError(f"unknown pruning method '{cfg.pruning}'; choose one of "
                        f"{', '.join(PRUNING_CHOICES)}")
    if cfg.pruning == "imp":
        pruning.check_method(cfg.imp_method)
        if cfg.imp_rounds < 1:
            raise UserError(f"--imp_rounds must be >= 1, got {cfg.imp_rounds}")
        if cfg.imp_continue and cfg.imp_rewind:
            raise UserError("--imp_continue carries each round's last weights into the next, "
                            "--imp_rewind resets them to the initialization; choose one")
    elif cfg.imp_continue:
        raise UserError(f"--imp_continue sets the rounds of --pruning=imp, not "
                        f"--pruning={cfg.pruning}")
    if not 0 <= cfg.imp_rewind_epoch <= cfg.epochs:
        raise UserError(f"--imp_rewind_epoch must be in [0, --epochs={cfg.epochs}] (the "
                        f"pretraining epoch to rewind to), got {cfg.imp_rewind_epoch}")
    if cfg.imp_rewind_epoch and not (cfg.pruning == "imp" and cfg.imp_rewind):
        raise UserError("--imp_rewind_epoch sets where --imp_rewind goes back to; pass "
                        "--pruning=imp --imp_rewind with it")
    pruning.check_sparsity(cfg.sparsity)
    for name, value, low in (("num_shadows", cfg.num_shadows, 1), ("epochs", cfg.epochs, 1),
                             ("finetune_epochs", cfg.finetune_epochs, 0),
                             ("batch_size", cfg.batch_size, 1), ("patience", cfg.patience, 0),
                             ("checkpoint_every", cfg.checkpoint_every, 1)):
        if value < low:
            raise UserError(f"--{name} must be >= {low}, got {value}")
    training.check_rates(cfg.lr, cfg.weight_decay)
    if not (np.isfinite(cfg.slim_l1) and cfg.slim_l1 >= 0):
        raise UserError(f"--slim_l1 must be a finite number >= 0, got {cfg.slim_l1}")
    cfg = dataclasses.replace(cfg, attacks=expand_attacks(cfg))
    if not cfg.attack_stages or set(cfg.attack_stages) - set(ATTACK_STAGES):
        raise UserError(f"--attack_stages must name one or both of {', '.join(ATTACK_STAGES)}; "
                        f"got '{','.join(cfg.attack_stages)}'")
    cfg = dataclasses.replace(cfg, attack_stages=tuple(
        s for s in ATTACK_STAGES if s in cfg.attack_stages))
    if cfg.sensitivity_samples < 0 or not cfg.sensitivity_epsilon > 0:
        raise UserError("--sensitivity_samples must be >= 0 and --sensitivity_epsilon > 0")
    features.resolve_noise(cfg.sensitivity_noise, cfg.model)  # refuses a bad choice
    needs = [a for a in cfg.attacks if a in attacks.NEEDS_SENSITIVITY]
    if needs and cfg.sensitivity_samples == 0:
        raise UserError(f"attack(s) {', '.join(needs)} need the sensitivity feature; drop them "
                        "or set --sensitivity_samples >= 1")
    if cfg.attack_epochs is not None and cfg.attack_epochs < 1:
        raise UserError(f"--attack_epochs must be >= 1, got {cfg.attack_epochs}")
    if cfg.label_only_examples < 1 or cfg.blindmi_reference < 2:
        raise UserError("--label_only_examples must be >= 1 and --blindmi_reference >= 2")
    if cfg.shadow_pruning is not None and cfg.shadow_pruning not in pruning.METHODS:
        raise UserError(f"unknown --shadow_pruning '{cfg.shadow_pruning}'; choose one of "
                        f"{', '.join(pruning.METHODS)}")
    if cfg.shadow_sparsity is not None:
        pruning.check_sparsity(cfg.shadow_sparsity)
    if unknown_knowledge(cfg) and cfg.pruning in ("imp", "none"):
        raise UserError("--shadow_pruning/--shadow_sparsity need a one-shot --pruning method")
    if unknown_knowledge(cfg) and "pruned" not in cfg.attack_stages:
        raise UserError("--shadow_pruning/--shadow_sparsity compare attacks on the pruned "
                        "target; add 'pruned' to --attack_stages")
    if cfg.optimizer not in ("adam", "sgd"):
        raise UserError(f"unknown --optimizer '{cfg.optimizer}'; choose adam or sgd")
    _validate_defense(cfg)
    return cfg


DEFENSES = ("none", "dp") + tuple(defenses.REGISTRY) + wemem.KINDS
WEMEM_FLAGS = ("memorization_scores", "wemem_width", "wemem_stride", "wemem_order",
               "wemem_threshold", "wemem_weight_decay", "wemem_windows")
# The flags of one loss-term defense, set only with it (WeMem's are WEMEM_FLAGS).
OWN_FLAGS = {"relaxloss": ("relaxloss_upper", "relaxloss_variant"),
             "adv": ("adv_target_steps",)}
ATTACK_STAGES = ("unpruned", "pruned")
DP_STAGES = ("all", "finetune")


def _validate_defense(cfg: AuditConfig) -> None:
    if cfg.defense not in DEFENSES:
        raise UserError(f"unknown --defense '{cfg.defense}'; choose one of {', '.join(DEFENSES)}")
    if cfg.defense_strength is not None and cfg.defense not in defenses.REGISTRY:
        raise UserError(f"--defense_strength sets a loss-term defense "
                        f"({', '.join(defenses.REGISTRY)}), not --defense={cfg.defense}")
    if cfg.defense in wemem.KINDS and cfg.pool_size is not None:
        raise UserError(f"--defense={cfg.defense} ranks the rows experiments/lira.py scored over "
                        "the whole pool; drop --pool_size")
    trained = tuple(defenses.REGISTRY) + wemem.KINDS
    if cfg.defense_stages is not None and cfg.defense not in trained:
        raise UserError(f"--defense_stages sets a loss-term defense or a WeMem schedule "
                        f"({', '.join(trained)}), not --defense={cfg.defense}")
    if cfg.defense not in wemem.KINDS:
        for flag in WEMEM_FLAGS:
            if getattr(cfg, flag) != getattr(AuditConfig, flag):
                raise UserError(f"--{flag} sets WeMem's schedules (--defense="
                                f"{'|'.join(wemem.KINDS)}), not --defense={cfg.defense}")
    else:
        _validate_wemem(cfg)
    for owner, own in OWN_FLAGS.items():
        for flag in own:
            if getattr(cfg, flag) != getattr(AuditConfig, flag) and cfg.defense != owner:
                raise UserError(f"--{flag} sets --defense={owner}")
    if cfg.defense == "adv":
        defenses.adv.check_target_steps(cfg.adv_target_steps)
    if not cfg.defense_shadows and cfg.defense not in trained:
        raise UserError(f"--nodefense_shadows leaves the shadows without a loss-term defense or "
                        f"WeMem schedule ({', '.join(trained)}); --defense={cfg.defense} has "
                        "none")
    if cfg.defense in trained:
        _defense(cfg)  # refuses a bad strength
        if cfg.defense_stages not in defenses.STAGES:
            raise UserError(f"unknown --defense_stages '{cfg.defense_stages}'; choose one of "
                            f"{', '.join(defenses.STAGES)}")
        if cfg.defense_stages == "finetune" and (cfg.pruning == "none"
                                                 or cfg.finetune_epochs == 0):
            raise UserError(f"--defense={cfg.defense} with --defense_stages=finetune is applied "
                            "while the pruned models are fine-tuned; it needs a --pruning "
                            "method and --finetune_epochs >= 1 (or --defense_stages=all)")
    if cfg.defense != "dp":
        if cfg.noise_multiplier is not None or cfg.target_epsilon is not None:
            raise UserError("--noise_multiplier/--target_epsilon need --defense=dp")
        return
    if (cfg.noise_multiplier is None) == (cfg.target_epsilon is None):
        raise UserError("--defense=dp needs exactly one of --noise_multiplier or "
                        "--target_epsilon")
    if cfg.noise_multiplier is not None and not cfg.noise_multiplier > 0:
        raise UserError(f"--noise_multiplier must be > 0, got {cfg.noise_multiplier}")
    if cfg.target_epsilon is not None and not cfg.target_epsilon > 0:
        raise UserError(f"--target_epsilon must be > 0, got {cfg.target_epsilon}")
    if not 0 < cfg.delta < 1:
        raise UserError(f"--delta must be in (0, 1), got {cfg.delta}")
    if cfg.dp_stages not in DP_STAGES:
        raise UserError(f"unknown --dp_stages '{cfg.dp_stages}'; choose one of "
                        f"{', '.join(DP_STAGES)}")
    if cfg.accountant not in accounting.ACCOUNTANTS:
        raise UserError(f"unknown --accountant '{cfg.accountant}'; choose one of "
                        f"{', '.join(accounting.ACCOUNTANTS)}")
    if cfg.dp_stages == "finetune" and (cfg.pruning == "none" or cfg.finetune_epochs == 0):
        raise UserError("--dp_stages=finetune needs a fine-tuning stage (a --pruning method and "
                        "--finetune_epochs >= 1)")
    if cfg.pruning == "slim":
        raise UserError("network slimming needs BatchNorm, which DP-SGD cannot train; choose "
                        "another --pruning method with --defense=dp")
    _dp_config(cfg, 1.0).validate(cfg.batch_size)


def _validate_wemem(cfg: AuditConfig) -> None:
    if not cfg.memorization_scores:
        raise UserError(f"--defense={cfg.defense} ranks rows by memorization: pass "
                        "--memorization_scores=<memorization.npz of experiments/lira.py "
                        "--population_fraction=0 on this dataset>")
    if not os.path.isfile(cfg.memorization_scores):
        raise UserError(f"--memorization_scores file {cfg.memorization_scores} does not exist; "
                        "pass the memorization.npz that experiments/lira.py wrote")
    if cfg.defense == "rmr" and cfg.wemem_order is not None:
        raise UserError("--wemem_order sets RSW's and SWMR's windows; --defense=rmr has none")
    wemem.check(cfg.defense, cfg.wemem_width, cfg.wemem_stride, cfg.wemem_order,
                cfg.wemem_threshold, cfg.wemem_weight_decay, cfg.wemem_windows)


def memorization_scores(path: str, ds) -> np.ndarray:
    """Every row's memorization score (NaN where the file has none) from an
    ``experiments/lira.py`` ``memorization.npz`` of the same dataset.

    Raises:
      UserError: the file cannot be read, or is another dataset's.
    """
    try:
        with np.load(path, allow_pickle=False) as f:
            rows, mem = np.asarray(f["row"]), np.asarray(f["memorization"], np.float64)
            name = str(f["dataset"]) if "dataset" in f else None
            num_rows = int(f["num_rows"]) if "num_rows" in f else None
    except (OSError, ValueError, KeyError, EOFError) as e:
        raise UserError(f"cannot read memorization scores from {path} ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:80] if str(e) else 'corrupt'}); pass the "
                        "memorization.npz that experiments/lira.py wrote") from None
    if (name is not None and name != ds.name) or (num_rows is not None and num_rows != len(ds)) \
            or rows.shape != mem.shape or (len(rows) and (rows.min() < 0 or rows.max() >= len(ds))):
        raise UserError(f"the memorization scores in {path} are of another dataset "
                        f"({name or 'unnamed'}, {num_rows or 'unknown'} rows) than "
                        f"{ds.name} ({len(ds)} rows); compute them with experiments/lira.py "
                        f"--dataset={ds.name}")
    scores = np.full(len(ds), np.nan)
    scores[rows] = mem
    return scores


def _schedule(cfg: AuditConfig, scores, ens: training.EnsembleData, epochs: int,
              stream: int = 0):
    """The data schedule of a fit of ``epochs`` epochs over ``ens``'s models (None without):
    WeMem's, or ADV's one target step an epoch; ``stream`` tells the fits of a run apart for
    ADV's draws (WeMem's windows restart every fit, as in the authors' code)."""
    adv_code = cfg.defense == "adv" and cfg.adv_target_steps == "one_per_epoch"
    if cfg.defense not in wemem.KINDS and not adv_code:
        return None
    train_n = np.asarray(ens.train_n)
    lists = [np.asarray(ens.train_idx[k, : train_n[k]]) for k in range(ens.num_models)]
    defended = None if cfg.defense_shadows else np.arange(ens.num_models) == 0
    if adv_code:
        return defenses.adv.one_step_per_epoch(lists, cfg.batch_size, defended=defended,
                                               seed=cfg.seed, stream=stream)
    return wemem.make(cfg.defense, lists, np.asarray(ens.y), scores, epochs=epochs,
                      width=cfg.wemem_width, stride=cfg.wemem_stride, order=cfg.wemem_order,
                      threshold=cfg.wemem_threshold, weight_decay=cfg.wemem_weight_decay,
                      windows=cfg.wemem_windows,
                      defended=defended,
                      seed=cfg.seed)


def defense_strength(cfg: AuditConfig) -> float:
    """The weight of ``--defense``'s loss term: ``--defense_strength`` or the defense's default."""
    return cfg.resolved().defense_strength


def _defense(cfg: AuditConfig):
    """The loss-term defense of ``--defense`` (None for 'none' and 'dp')."""
    if cfg.defense not in defenses.REGISTRY:
        return None
    options = ({"upper": cfg.relaxloss_upper, "variant": cfg.relaxloss_variant}
               if cfg.defense == "relaxloss" else {})
    return defenses.REGISTRY[cfg.defense](strength=defense_strength(cfg), **options)


def _defended(cfg: AuditConfig, num_models: int, defense):
    """Which models of a fit the defense trains: all (adaptive), or the target (model 0) only."""
    if defense is None or cfg.defense_shadows:
        return None
    return np.arange(num_models) == 0


def _dp_config(cfg: AuditConfig, noise_multiplier: float) -> dp.DPConfig:
    return dp.DPConfig(noise_multiplier=noise_multiplier, clip_norm=cfg.clip_norm,
                       clipping=cfg.dp_clipping, microbatch_size=cfg.dp_microbatch,
                       physical_batch=cfg.physical_batch, ghost_form=cfg.dp_ghost_form,
                       noise_rng=cfg.dp_noise_rng)


def expand_attacks(cfg: AuditConfig) -> tuple[str, ...]:
    """Attack names with the sets ('all', 'paper', 'threshold') expanded. 'all' leaves out the
    label-only attacks on tabular data (they are defined for images and, with edits of the token
    ids, for text) and on text (each of their ~100 queries per row is a BERT pass: ask for them
    by name)."""
    text = data.is_text(cfg.dataset)
    out = []
    for name in cfg.attacks:
        if name in attacks.SETS:
            out += [a for a in attacks.SETS[name]
                    if name != "all" or data.is_image(cfg.dataset) or a not in attacks.LABEL_ONLY]
        elif name in attacks.REGISTRY:
            out.append(name)
        else:
            raise UserError(f"unknown attack '{name}'; choose from {', '.join(attacks.SETS)}, "
                            f"{', '.join(attacks.REGISTRY)}")
    label_only = [a for a in out if a in attacks.LABEL_ONLY]
    if label_only and not (data.is_image(cfg.dataset) or text):
        raise UserError(f"label-only attack(s) {', '.join(label_only)} need an image or text "
                        f"dataset (they perturb images or edit token ids); {cfg.dataset} is "
                        "tabular")
    text_only = [a for a in out if a in attacks.TEXT_ONLY]
    if text_only and not text:
        raise UserError(f"attack(s) {', '.join(text_only)} replace words of a text; "
                        f"{cfg.dataset} is not a text dataset")
    if text_only:
        wordnet.synonyms(cfg.wordnet_dir)  # a missing or corrupt file: refused before training
    return tuple(dict.fromkeys(out))


def unknown_knowledge(cfg: AuditConfig) -> bool:
    """Whether the shadows are pruned differently from the target (paper §5.2.5)."""
    return ((cfg.shadow_pruning or cfg.pruning) != cfg.pruning
            or (cfg.shadow_sparsity if cfg.shadow_sparsity is not None else cfg.sparsity)
            != cfg.sparsity)


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


def _model_features(cfg, model, params, state, masks, x, y, idx_lists, key, mesh=None):
    """Features of each model on its own rows: dict of [K, n_max, ...] (+ counts)."""
    idx, n = training.pad_indices(idx_lists)
    idx_j = jnp.asarray(idx)
    sens = None
    if cfg.sensitivity_samples:  # one pass gives the logits too
        sens, logits = features.ensemble_sensitivity(
            model, params, state, masks, x, idx_j, key, num_samples=cfg.sensitivity_samples,
            epsilon=cfg.sensitivity_epsilon, noise=cfg.sensitivity_noise, mesh=mesh,
            return_logits=True)
    else:
        logits = training.predict_logits(model, params, state, masks, x, idx_j, mesh=mesh)
    feats = jax.device_get(features.extract(logits, y[idx_j]))
    feats["labels"] = np.asarray(y)[idx]
    if sens is not None:
        feats["sensitivity"] = np.asarray(sens)
    return feats, n


def _gather(feats, n, models_):
    """Concatenates the valid rows of the given models."""
    return {k: np.concatenate([v[m, : n[m]] for m in models_]) for k, v in feats.items()}


def _one_model(tree, k):
    return jax.tree.map(lambda a: a[k:k + 1], tree)


def _label_predictor(model, params, state, masks, k, chunk=512):
    """Model k's predicted labels of a host batch: the only access label-only attacks have.
    Batches go in pieces of ``chunk`` rows, a smaller one padded to the next power of two (so a
    few shapes compile, and 50 rows of a BERT do not pay for 512)."""
    p, s, m = _one_model(params, k), _one_model(state, k), _one_model(masks, k)

    def predict(xb):
        out = []
        for i in range(0, len(xb), chunk):
            part = np.asarray(xb[i:i + chunk], np.float32)
            size = min(chunk, 1 << (len(part) - 1).bit_length())
            padded = np.concatenate([part, np.zeros((size - len(part),) + part.shape[1:],
                                                    np.float32)])
            logits = training.predict_logits(model, p, s, m, jnp.asarray(padded),
                                             jnp.arange(size)[None], size)
            out.append(np.asarray(jnp.argmax(logits[0], -1))[: len(part)])
        return np.concatenate(out)

    return predict


def _reference_features(cfg, model, params, state, masks, x, source_rows):
    """Model 0's features on BlindMI's generated non-members (labels: its own predictions)."""
    gen = attacks.blindmi.generate_inputs(np.asarray(x)[source_rows], cfg.blindmi_reference,
                                          cfg.seed)
    idx = jnp.arange(len(gen))[None]
    logits = training.predict_logits(model, _one_model(params, 0), _one_model(state, 0),
                                     _one_model(masks, 0), jnp.asarray(gen), idx)[0]
    return jax.device_get(features.extract(logits, jnp.argmax(logits, -1)))


def _label_only_query(cfg):
    """The label-only feature function of the dataset's kind (on text, only the features
    asked for are queried, and WordNet is read only for label_synonym)."""
    if not data.is_text(cfg.dataset):
        return attacks.label_only.query_features
    asked = tuple(a for a in cfg.attacks if a in attacks.LABEL_ONLY)
    synonyms = _synonym_table(cfg.wordnet_dir) if "label_synonym" in asked else None
    return functools.partial(label_only_text.query_features, features=asked,
                             synonyms=synonyms)


@functools.lru_cache(maxsize=1)
def _synonym_table(wordnet_dir: str) -> label_only_text.SynonymTable:
    """The tokenizer's synonym table, built once per run (not once per attack stage)."""
    return label_only_text.synonym_table(pretrained.tokenizer(), wordnet.synonyms(wordnet_dir))


def _label_only_features(cfg, query, model, params, state, masks, x, y, idx_lists):
    """Label-only features of each model on (at most ``label_only_examples`` of) its rows."""
    rng = np.random.default_rng(cfg.seed)
    out = []
    for k, rows in enumerate(idx_lists):
        rows = np.asarray(rows)
        rows = np.sort(rng.permutation(rows)[: cfg.label_only_examples])
        f = query(_label_predictor(model, params, state, masks, k), np.asarray(x)[rows],
                  np.asarray(y)[rows], cfg.seed + k)
        out.append(f)
    return out


def attack_stage(cfg, model, params, state, masks, model_splits, x, y, key,
                 shadow_models=None, mesh=None) -> dict:
    """Runs every attack for one stage; returns metrics, accuracies, gaps, scores and features.

    Attacks are fit on the shadows' features (members: their train rows, non-members: their
    test rows, all shadows concatenated) and score the target's train and test rows. Model 0 is
    the target; ``shadow_models`` (default: all others) are the shadows. ``model_splits[k]`` is
    model k's split. With a ``mesh`` the features of the models are computed sharded over it.
    """
    t_start = time.perf_counter()
    shadows = list(shadow_models or range(1, len(model_splits)))
    train_key, test_key = jax.random.split(key)
    train_lists = [s.train for s in model_splits]
    test_lists = [s.test for s in model_splits]
    train_f, train_n = _model_features(cfg, model, params, state, masks, x, y, train_lists,
                                       train_key, mesh)
    test_f, test_n = _model_features(cfg, model, params, state, masks, x, y, test_lists, test_key,
                                     mesh)
    s_in, s_out = _gather(train_f, train_n, shadows), _gather(test_f, test_n, shadows)
    t_in, t_out = _gather(train_f, train_n, [0]), _gather(test_f, test_n, [0])

    def join(a, b):
        return ({k: np.concatenate([a[k], b[k]]) for k in a},
                np.r_[np.ones(len(next(iter(a.values()))), bool),
                      np.zeros(len(next(iter(b.values()))), bool)])

    shadow, shadow_member = join(s_in, s_out)
    target, is_member = join(t_in, t_out)
    if any(a in attacks.NEEDS_REFERENCE for a in cfg.attacks):
        attacker_rows = np.unique(np.concatenate([np.r_[model_splits[k].train,
                                                        model_splits[k].test] for k in shadows]))
        target["reference"] = _reference_features(cfg, model, params, state, masks, x,
                                                  attacker_rows)
    label_only = [a for a in cfg.attacks if a in attacks.LABEL_ONLY]
    seconds = {"features": round(time.perf_counter() - t_start, 2)}
    if label_only:
        t0 = time.perf_counter()
        query = _label_only_query(cfg)
        lo_in = _label_only_features(cfg, query, model, params, state, masks, x, y, train_lists)
        lo_out = _label_only_features(cfg, query, model, params, state, masks, x, y, test_lists)
        lo_shadow, lo_shadow_member = join(*(
            {k: np.concatenate([lo[m][k] for m in shadows]) for k in lo[0]}
            for lo in (lo_in, lo_out)))
        lo_target, lo_member = join(lo_in[0], lo_out[0])
        seconds["label_only_queries"] = round(time.perf_counter() - t0, 2)
    results, scores = {}, {"is_member": is_member}
    for name in cfg.attacks:
        t0 = time.perf_counter()
        extra = ({"epochs": cfg.attack_epochs}
                 if name in attacks.CLASSIFIERS and cfg.attack_epochs else {})
        attack = attacks.REGISTRY[name](seed=cfg.seed, **extra)
        if name in attacks.LABEL_ONLY:
            s = attack.score(attack.fit(lo_shadow, lo_shadow_member), lo_target)
            results[name] = metrics.summarize_with_ci(s, lo_member, seed=cfg.seed)
            results[name]["num_examples"] = len(s)
            scores[name], scores[f"{name}/is_member"] = s, lo_member
        else:
            s = attack.score(attack.fit(shadow, shadow_member), target)
            results[name] = metrics.summarize_with_ci(s, is_member, seed=cfg.seed)
            scores[name] = s
        seconds[name] = round(time.perf_counter() - t0, 2)
    acc = {"target_train_acc": float(t_in["correct"].mean()),
           "target_test_acc": float(t_out["correct"].mean()),
           "shadow_train_acc": float(s_in["correct"].mean()),
           "shadow_test_acc": float(s_out["correct"].mean())}
    return {"attacks": results, "accuracy": acc,
            "gaps": metrics.gaps(t_in, t_out, target["probs"].shape[-1]),
            "scores": scores, "target_features": (t_in, t_out), "seconds": seconds}


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
    ds = data.subsample(data.load(cfg.dataset, cfg.data_dir), cfg.pool_size, cfg.seed)
    model = models.make(cfg.model, ds.num_classes, ds.input_shape, norm=cfg.norm)
    methods = {cfg.pruning, cfg.shadow_pruning or cfg.pruning} | (
        {cfg.imp_method} if cfg.pruning == "imp" else set())
    shapes, _ = jax.eval_shape(model.init, jax.random.key(0))
    for method in sorted(methods):
        pruning.check_model(method, shapes, cfg.model)
    if cfg.defense == "dp":
        clipping.check_model(model)
    splits = data.mia_prune_splits(len(ds), cfg.num_shadows, cfg.seed)
    ens = training.make_ensemble_data(ds.x, ds.y, [s.train for s in splits],
                                      [s.dev for s in splits])
    # WeMem's schedules read their scores and refuse a bad window before anything is written.
    scores = (memorization_scores(cfg.memorization_scores, ds) if cfg.defense in wemem.KINDS
              else None)
    fine_tunes = cfg.pruning != "none" and (cfg.finetune_epochs > 0 or cfg.pruning == "imp")
    pre_schedule = _schedule(cfg, scores, ens, cfg.epochs) if cfg.defense_stages == "all" else None
    ft_schedule = (_schedule(cfg, scores, ens, max(cfg.finetune_epochs, 1), stream=1)
                   if fine_tunes else None)
    timing["load_data"] = time.perf_counter() - t0

    io.claim_workdir(cfg.workdir)
    check_workdir(cfg)  # again, under the lock: a run that ended meanwhile may have written
    io.write_json(os.path.join(cfg.workdir, "config.json"),
                  {"fingerprint": cfg.fingerprint(), "config": dataclasses.asdict(cfg)})
    io.write_json(os.path.join(cfg.workdir, "splits.json"),
                  {"target": splits[0].as_dict(),
                   "shadows": [s.as_dict() for s in splits[1:]]})
    metrics_path = os.path.join(cfg.workdir, "metrics.jsonl")
    ckpt = os.path.join(cfg.workdir, "ckpt")

    # Every visible device trains a share of the models (results equal one device's; tested).
    mesh = sharding.training_mesh()  # training: every device of every process
    root = jax.random.key(cfg.seed)
    init_key, train_key, finetune_key, attack_key = jax.random.split(root, 4)
    num_models = 1 + cfg.num_shadows
    train_cfg = training.TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                                     weight_decay=cfg.weight_decay, patience=cfg.patience,
                                     optimizer=cfg.optimizer,
                                     checkpoint_every=cfg.checkpoint_every)
    ft_cfg = dataclasses.replace(train_cfg, epochs=max(cfg.finetune_epochs, 1))
    privacy = None
    if cfg.defense == "dp":
        privacy = _privacy_plan(cfg, ens)
        dp_cfg = _dp_config(cfg, privacy["noise_multiplier"])
        ft_cfg = dataclasses.replace(ft_cfg, dp=dp_cfg)
        if cfg.dp_stages == "all":
            train_cfg = dataclasses.replace(train_cfg, dp=dp_cfg)
    init_params, init_state = training.init_ensemble(model, jax.random.split(init_key, num_models))
    ones = pruning.ones_like(init_params)
    defense = _defense(cfg)  # a loss term of every model's training (adaptive shadows)
    pre_defense = defense if cfg.defense_stages == "all" else None

    t0 = time.perf_counter()
    _log(f"[audit] training target + {cfg.num_shadows} shadows on {cfg.dataset} "
         f"({cfg.model}, {cfg.epochs} epochs max)")
    reg = ((lambda p: pruning.slim_penalty(p, cfg.slim_l1))
           if cfg.pruning == "slim" and cfg.slim_l1 > 0 else None)
    pre = training.fit(model, init_params, init_state, ones, ens, train_cfg,
                       jax.random.split(train_key, num_models), regularizer=reg,
                       checkpoint_dir=os.path.join(ckpt, "pretrain"), metrics_path=metrics_path,
                       stage="pretrain", mesh=mesh, defense=pre_defense,
                       defended=_defended(cfg, num_models, pre_defense), schedule=pre_schedule,
                       keep_epoch=(cfg.imp_rewind_epoch if cfg.pruning == "imp"
                                   and cfg.imp_rewind else None))
    timing["pretrain"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    finetunes = []  # the fit results of every fine-tuning (IMP: every round), for accounting
    ft_keys = jax.random.split(finetune_key, num_models)
    if cfg.pruning == "none" or (cfg.finetune_epochs == 0 and cfg.pruning != "imp"):
        masks = pruning.make_masks("none" if cfg.pruning == "none" else cfg.pruning,
                                   pre.params, cfg.sparsity, ensemble=True)
        pruned = dataclasses.replace(pre, params=pruning.apply_masks(pre.params, masks),
                                     masks=masks)
    elif cfg.pruning == "imp":
        _log(f"[audit] iterative magnitude pruning: {cfg.imp_rounds} rounds to {cfg.sparsity}"
             + (f", rewinding to pretraining epoch {cfg.imp_rewind_epoch}" if cfg.imp_rewind
                else ""))
        results_by_round = {}

        def retrain(params, masks, r):
            # A round starts from the previous one's best model (its BatchNorm statistics too)
            # and a fresh optimizer, or, --imp_continue, from its last epoch's whole state.
            before = results_by_round.get(r - 1)
            carried = before is not None and cfg.imp_continue
            res = training.fit(model, params,
                               pre.model_state if before is None else
                               before.last.model_state if carried else before.model_state,
                               masks, ens, ft_cfg,
                               jax.vmap(jax.random.fold_in, in_axes=(0, None))(ft_keys, r),
                               checkpoint_dir=os.path.join(ckpt, f"imp_round{r}"),
                               metrics_path=metrics_path, stage=f"imp_round{r}", mesh=mesh,
                               defense=defense, defended=_defended(cfg, num_models, defense),
                               schedule=_schedule(cfg, scores, ens, ft_cfg.epochs,
                                                  stream=2 + r),
                               start=before.last if carried else None,
                               return_last=cfg.imp_continue)
            if carried:  # the round before has handed its state on
                results_by_round[r - 1] = dataclasses.replace(before, last=None)
            results_by_round[r] = res
            finetunes.append(dataclasses.replace(res, last=None))
            return res.last.params if cfg.imp_continue else res.params

        _, masks = pruning.iterative_magnitude(
            pre.params, cfg.sparsity, cfg.imp_rounds, retrain, method=cfg.imp_method,
            rewind_params=pre.kept_params, ensemble=True)  # None: no rewinding
        pruned = dataclasses.replace(results_by_round[cfg.imp_rounds - 1], last=None)
    else:
        masks = pruning.make_masks(cfg.pruning, pre.params, cfg.sparsity, ensemble=True)
        params, model_state, ft_ens = pre.params, pre.model_state, ens
        if unknown_knowledge(cfg):
            # Unknown pruning knowledge: a second copy of every pretrained shadow is pruned with
            # the shadow method/sparsity; models 1..S stay the known-knowledge shadows.
            shadow_rows = slice(1, num_models)
            shadow_params = jax.tree.map(lambda a: a[shadow_rows], pre.params)
            other = pruning.make_masks(cfg.shadow_pruning or cfg.pruning, shadow_params,
                                       _shadow_sparsity(cfg), ensemble=True)
            def append(tree, extra):  # models of ``extra`` after those of ``tree``
                return jax.tree.map(lambda a, b: jnp.concatenate([a, b]), tree, extra)

            masks = append(masks, other)
            params = append(pre.params, shadow_params)
            model_state = append(pre.model_state,
                                 jax.tree.map(lambda a: a[shadow_rows], pre.model_state))
            ft_ens = training.make_ensemble_data(
                ds.x, ds.y, [s.train for s in splits + splits[1:]],
                [s.dev for s in splits + splits[1:]])
            ft_keys = jnp.concatenate([ft_keys, jax.random.split(
                jax.random.fold_in(finetune_key, 1), cfg.num_shadows)])
            ft_schedule = _schedule(cfg, scores, ft_ens, ft_cfg.epochs, stream=1)
        _log(f"[audit] pruned ({cfg.pruning}, {cfg.sparsity}); fine-tuning "
             f"{cfg.finetune_epochs} epochs max")
        pruned = training.fit(model, pruning.apply_masks(params, masks), model_state,
                              masks, ft_ens, ft_cfg, ft_keys,
                              checkpoint_dir=os.path.join(ckpt, "finetune"),
                              metrics_path=metrics_path, stage="finetune", mesh=mesh,
                              defense=defense,
                              defended=_defended(cfg, ft_ens.num_models, defense),
                              schedule=ft_schedule)
        finetunes.append(pruned)
    timing["prune_finetune"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    stages = {"unpruned": (pre, splits, None), "pruned": (pruned, splits, None)}
    stages = {s: stages[s] for s in cfg.attack_stages}
    if unknown_knowledge(cfg):
        both = splits + splits[1:]
        stages["pruned"] = (pruned, both, range(1, num_models))
        stages["pruned_unknown_knowledge"] = (pruned, both, range(num_models, 2 * num_models - 1))
    results = {"attacks": {}, "accuracy": {}, "gaps": {}}
    all_scores, target_features, attack_seconds = {}, {}, {}
    for i, (stage, (res, model_splits, shadow_models)) in enumerate(stages.items()):
        _log(f"[audit] attacks on the {stage} target: {', '.join(cfg.attacks)}")
        # The same key for every stage: the unpruned and pruned targets see the same noise.
        out = attack_stage(cfg, model, res.params, res.model_state, res.masks, model_splits,
                           ens.x, ens.y, attack_key, shadow_models, sharding.local_mesh())
        results["attacks"][stage] = out["attacks"]
        results["accuracy"][stage] = out["accuracy"]
        results["gaps"][stage] = out["gaps"]
        attack_seconds[stage] = out["seconds"]
        target_features[stage] = out["target_features"]
        all_scores.update({f"{stage}/{k}": v for k, v in out["scores"].items()})
    timing["attacks"] = time.perf_counter() - t0

    report = pruning.report(jax.tree.map(lambda m: m[0], pruned.masks))
    out = {
        "dataset": cfg.dataset, "model": cfg.model, "norm": cfg.norm, "pruning": cfg.pruning,
        "sparsity": cfg.sparsity, "seed": cfg.seed, "num_shadows": cfg.num_shadows,
        "epochs": cfg.epochs, "finetune_epochs": cfg.finetune_epochs,
        "data_source": ds.source,
        "split_sizes": {"target_train": len(splits[0].train), "target_dev": len(splits[0].dev),
                        "target_test": len(splits[0].test)},
        **{f"{prefix}target_{split}_acc": results["accuracy"][stage][f"target_{split}_acc"]
           for stage, prefix in (("unpruned", ""), ("pruned", "pruned_"))
           if stage in results["accuracy"] for split in ("train", "test")},
        "accuracy": results["accuracy"],
        "attack_stages": list(cfg.attack_stages),
        "achieved_sparsity": {"target_overall": report["overall"],
                              "target_bn_scales": report["overall_bn_scales"],
                              "target_layers": report["layers"]},
        "best_epoch": {"pretrain": pre.best_epoch.tolist(), "pruned": pruned.best_epoch.tolist()},
        "attacks": results["attacks"],
        "gaps": results["gaps"],
        "sensitivity": {"samples": cfg.sensitivity_samples, "epsilon": cfg.sensitivity_epsilon,
                        "noise": features.resolve_noise(cfg.sensitivity_noise, cfg.model)},
        "timing_s": {k: round(v, 2) for k, v in timing.items()},
        "attack_timing_s": attack_seconds,  # per stage: feature extraction, then each attack
        "jax": {"version": jax.__version__, "backend": jax.default_backend(),
                "devices": jax.device_count(),
                "processes": jax.process_count()},
    }
    if cfg.pruning == "imp":
        out["imp"] = {"rounds": cfg.imp_rounds, "method": cfg.imp_method,
                      "rounds_start_from": imp_start(cfg),
                      "rewind_epoch": cfg.imp_rewind_epoch if cfg.imp_rewind else None}
    if privacy is not None:
        out["dp"] = _privacy_report(cfg, privacy, pre, finetunes)
    if defense is not None or cfg.defense in wemem.KINDS:
        trained = ["pretrain"] if cfg.defense_stages == "all" else []
        if fine_tunes:
            trained.append("imp_rounds" if cfg.pruning == "imp" else "finetune")
        out["defense"] = {"name": cfg.defense, "strength": defense_strength(cfg),
                          "stages": trained,
                          "models": ("target and shadows" if cfg.defense_shadows
                                     else "target only (shadows undefended)")}
        if cfg.defense == "relaxloss":
            out["defense"].update(upper=cfg.relaxloss_upper,
                                  variant=cfg.relaxloss_variant)
        if cfg.defense == "adv":
            # The target's optimizer steps in each defended stage (one an epoch, as the
            # released code runs ADV, with --adv_target_steps=one_per_epoch).
            taken = {"pretrain": int(pre.steps[0])} if cfg.defense_stages == "all" else {}
            if fine_tunes:
                taken[trained[-1]] = sum(int(r.steps[0]) for r in finetunes)
            out["defense"].update(target_steps=cfg.adv_target_steps, target_steps_taken=taken)
        if cfg.defense in wemem.KINDS:
            out["defense"].update(_wemem_report(cfg, scores, splits))
    if unknown_knowledge(cfg):
        out["unknown_pruning_knowledge"] = {
            "shadow_pruning": cfg.shadow_pruning or cfg.pruning,
            "shadow_sparsity": _shadow_sparsity(cfg),
            # (acc_known - acc_unknown) / acc_known, balanced accuracy (paper §5.2.5).
            "attack_accuracy_loss": {
                a: (k["balanced_accuracy"] - results["attacks"]["pruned_unknown_knowledge"][a]
                    ["balanced_accuracy"]) / k["balanced_accuracy"]
                for a, k in results["attacks"]["pruned"].items()}}
    io.write_npz(os.path.join(cfg.workdir, "scores.npz"), **all_scores)
    _figures(cfg, all_scores, stages, target_features, results["gaps"])
    io.write_json(os.path.join(cfg.workdir, "results.json"), out)
    return out


def _wemem_report(cfg: AuditConfig, scores, splits) -> dict:
    """A WeMem schedule's settings and what it did to the target's rows."""
    target = np.asarray(splits[0].train)
    out = {"memorization_scores": cfg.memorization_scores,
           "target_mean_memorization": float(np.mean(scores[target]))}
    if cfg.defense != "rsw":
        out.update(threshold=cfg.wemem_threshold, weight_decay=cfg.wemem_weight_decay,
                   target_risky_rows=int(wemem.risky(target, scores, cfg.wemem_threshold).sum()))
    if cfg.defense != "rmr":
        out.update(width=cfg.wemem_width, stride=cfg.wemem_stride, order=cfg.wemem_order,
                   windows=cfg.wemem_windows)
    return out


def _privacy_plan(cfg: AuditConfig, ens: training.EnsembleData) -> dict:
    """The target's sampling rate and the noise multiplier (given, or calibrated to
    ``target_epsilon`` over the most steps the run can take)."""
    q = dp.sampling_rate(cfg.batch_size, int(ens.train_n[0]))
    per_epoch = training.epoch_steps(ens, cfg.batch_size)
    rounds = cfg.imp_rounds if cfg.pruning == "imp" else int(
        cfg.pruning != "none" and cfg.finetune_epochs > 0)
    max_steps = (per_epoch * cfg.epochs * (cfg.dp_stages == "all")
                 + per_epoch * max(cfg.finetune_epochs, 1) * rounds)
    factor = _dp_config(cfg, 1.0).sensitivity_factor
    sigma = cfg.noise_multiplier
    if sigma is None:
        sigma = accounting.calibrate(cfg.target_epsilon, [(q, max_steps)], cfg.delta,
                                     cfg.accountant, factor)
        _log(f"[audit] DP: noise multiplier {sigma:.4f} gives epsilon {cfg.target_epsilon} at "
             f"delta {cfg.delta} over at most {max_steps} steps (q = {q:.4f})")
    return {"noise_multiplier": float(sigma), "sampling_rate": q, "max_steps": max_steps,
            "sensitivity_factor": factor}


def _privacy_report(cfg: AuditConfig, plan: dict, pre, finetunes) -> dict:
    """epsilon of the target after each stage, from the steps it really took."""
    sigma, q, factor = plan["noise_multiplier"], plan["sampling_rate"], plan["sensitivity_factor"]
    pre_steps = int(pre.steps[0]) if cfg.dp_stages == "all" else 0
    ft_steps = sum(int(r.steps[0]) for r in finetunes)

    def eps(steps):
        return accounting.epsilon(sigma, [(q, steps)], cfg.delta, cfg.accountant, factor)

    return {
        "epsilon": eps(pre_steps + ft_steps),  # the released (pruned) target
        "epsilon_unpruned": eps(pre_steps) if cfg.dp_stages == "all" else None,
        "delta": cfg.delta, "noise_multiplier": sigma, "target_epsilon": cfg.target_epsilon,
        "sampling_rate": q, "steps": {"pretrain": pre_steps, "finetune": ft_steps},
        "clip_norm": cfg.clip_norm, "accountant": f"dp_accounting {cfg.accountant}",
        "clipping": cfg.dp_clipping, "sensitivity_factor": factor, "stages": cfg.dp_stages,
        "covers": ("training from scratch and fine-tuning" if cfg.dp_stages == "all" else
                   "fine-tuning only: pretraining on the same data was not private, so the "
                   "pruned model is not differentially private end to end"),
        "shadows": "trained with the same DP settings (adaptive attacker)",
    }


def _shadow_sparsity(cfg: AuditConfig) -> float:
    return cfg.shadow_sparsity if cfg.shadow_sparsity is not None else cfg.sparsity


def _figures(cfg, all_scores, stages, target_features, gaps) -> None:
    """ROC per stage, member/non-member histograms and per-class gap bars (PNG, in workdir)."""
    title = f"{cfg.dataset} / {cfg.model}"
    for stage in stages:
        curves = {}
        for a in cfg.attacks:
            member = all_scores.get(f"{stage}/{a}/is_member", all_scores[f"{stage}/is_member"])
            curves[a] = (all_scores[f"{stage}/{a}"], member)
        reporting.plot_roc(curves, os.path.join(cfg.workdir, f"roc_{stage}.png"),
                           f"{title}, {stage} target")
    pair = {s: target_features[s] for s in cfg.attack_stages}
    reporting.plot_histograms(pair, os.path.join(cfg.workdir, "histograms.png"), title)
    reporting.plot_per_class({s: gaps[s]["per_class"] for s in cfg.attack_stages},
                             os.path.join(cfg.workdir, "per_class.png"), title)


def format_table(results: dict) -> str:
    """The human-readable summary printed at the end of an audit."""
    attacked = [s for s in ATTACK_STAGES if s in results["attacks"]]
    acc = "   ".join(f"{s}: train {results['accuracy'][s]['target_train_acc']:.4f} test "
                     f"{results['accuracy'][s]['target_test_acc']:.4f}" for s in attacked)
    imp = results.get("imp")
    rounds = "" if imp is None else f", {imp['rounds']} rounds" + (
        f" rewound to epoch {imp['rewind_epoch']}" if imp["rewind_epoch"] is not None else
        " continued" if imp["rounds_start_from"] == "last_epoch" else "")
    lines = [f"{results['dataset']} / {results['model']} / {results['pruning']} "
             f"@ {results['sparsity']}{rounds} "
             f"(achieved {results['achieved_sparsity']['target_overall']:.3f})",
             f"target accuracy  {acc}", "",
             f"{'attack':<18}" + "".join(f"{'bal.acc (' + s + ')':>20}{'AUC':>8}" for s in attacked)
             + (f"{'TPR@1%FPR pruned':>18}" if "pruned" in attacked else "")]
    for name in results["attacks"][attacked[0]]:
        row = [results["attacks"][s][name] for s in attacked]
        lines.append(f"{name:<18}" + "".join(f"{r['balanced_accuracy']:>20.4f}{r['auc']:>8.4f}"
                                             for r in row)
                     + (f"{row[-1]['tpr@1%fpr']:>18.4f}" if "pruned" in attacked else ""))
    lines.append("")
    for stage, g in results["gaps"].items():
        lines.append(f"{stage + ' gaps':<26}" + "  ".join(
            f"{k.replace('_gap', '')} {g[k]:.4f}" for k in
            ("generalization_gap", "confidence_gap", "sensitivity_gap") if g[k] is not None)
            + f"  JS {g['js_divergence']:.4f}")
    if "unknown_pruning_knowledge" in results:
        u = results["unknown_pruning_knowledge"]
        lines.append(f"unknown pruning knowledge (shadows: {u['shadow_pruning']} @ "
                     f"{u['shadow_sparsity']}), attack accuracy loss: " + ", ".join(
                         f"{a} {v:+.3f}" for a, v in u["attack_accuracy_loss"].items()))
    if "dp" in results:
        d = results["dp"]
        unpruned = ("" if d["epsilon_unpruned"] is None
                    else f", unpruned target epsilon {d['epsilon_unpruned']:.3f}")
        lines.append(f"DP-SGD ({d['clipping']} clipping, C = {d['clip_norm']}, sigma = "
                     f"{d['noise_multiplier']:.4f}, q = {d['sampling_rate']:.4f}, steps "
                     f"{d['steps']['pretrain']} + {d['steps']['finetune']}): epsilon "
                     f"{d['epsilon']:.3f} at delta {d['delta']:g} ({d['accountant']})"
                     f"{unpruned}; covers {d['covers']}")
    if "defense" in results:
        d = results["defense"]
        strength = "" if d["strength"] is None else f" (strength {d['strength']:g})"
        per_epoch = (", one target step an epoch" if d.get("target_steps") == "one_per_epoch"
                     else "")
        lines.append(f"defense {d['name']}{strength}{per_epoch} while "
                     f"{' and '.join(d['stages'])}, {d['models']}")
    t = results["timing_s"]
    lines.append("")
    lines.append("wall time (s): " + ", ".join(f"{k} {v}" for k, v in t.items()))
    return "\n".join(lines)
