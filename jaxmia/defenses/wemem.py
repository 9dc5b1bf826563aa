"""WeMem's data schedules, the defenses of Shang et al., "Defending Against Membership Inference
Attacks on Iteratively Pruned Deep Neural Networks" (NDSS 2025), as their code (Sj5876/WeMeM,
``data_process.py`` and ``base_model.train_defend_ml2``) runs them while pruned models are
fine-tuned. Each ranks a model's training rows by a per-example memorization score (Feldman's
estimate; ``experiments/lira.py`` writes one for every row of a dataset) and changes what each
epoch trains on, never the loss:

- **RSW** (sliding window): per class, the model's rows sorted by score (``low_first``: L->H,
  the authors' best; ``high_first``: H->L; ``random``: a seeded shuffle, their baseline); epoch
  ``e`` trains on rows ``[stride * e, stride * e + width)`` of every class (a class that has run
  out gives none), so no row is reused in every epoch.
- **RMR** (risky-memory regularization): rows with score ``>= threshold`` are trained first each
  epoch, with a second optimizer of weight decay ``weight_decay`` (0.1 in the authors' scripts)
  and its own state; then the other rows with the stage's optimizer.
- **SWMR**: RSW's window of each epoch, split as RMR splits.

Ties keep the model's row order (the code's stable ``sorted``). The code clamps the window's end
to a short class's size and keeps the clamped end for the classes after it (``end`` is not reset);
``windows='code'`` reproduces that, ``'per_class'`` (the default) clamps each class on its own.
"""

from __future__ import annotations

import numpy as np

from jaxmia.base import Phase, Schedule
from jaxmia.errors import UserError

KINDS = ("rsw", "rmr", "swmr")
ORDERS = ("low_first", "high_first", "random")
WINDOWS = ("per_class", "code")
# The authors' settings (run_shell.sh; Location, whose values serve as defaults): RSW L->H and
# SWMR H->L, window 15 rows per class moved 1 row an epoch, threshold 0.6, risky weight decay 0.1.
DEFAULT_ORDER = {"rsw": "low_first", "swmr": "high_first"}
DEFAULT_WIDTH = 15
DEFAULT_STRIDE = 1
DEFAULT_THRESHOLD = 0.6
DEFAULT_WEIGHT_DECAY = 0.1


def ranked_by_class(rows, labels, scores, order: str, seed: int = 0) -> list[np.ndarray]:
    """One model's rows split by class (classes in increasing label order), each sorted by
    memorization score as ``order`` says; ties keep ``rows``' order."""
    if order not in ORDERS:
        raise UserError(f"unknown --wemem_order '{order}'; choose one of {', '.join(ORDERS)}")
    rows = np.asarray(rows)
    rng = np.random.default_rng(seed)
    out = []
    for c in np.unique(labels[rows]):
        members = rows[labels[rows] == c]
        if order == "random":
            members = members[rng.permutation(len(members))]
        else:
            key = scores[members] if order == "low_first" else -scores[members]
            members = members[np.argsort(key, kind="stable")]
        out.append(members)
    return out


def window(ranked: list[np.ndarray], epoch: int, width: int, stride: int,
           windows: str = "per_class") -> np.ndarray:
    """The rows of epoch ``epoch``'s window over every class of ``ranked``."""
    start = stride * epoch
    end = start + width
    taken = []
    for members in ranked:
        if start >= len(members):
            continue
        if windows == "per_class":
            taken.append(members[start:min(end, len(members))])
        else:  # the released code: a clamped end stays clamped for the later classes
            end = min(end, len(members))
            taken.append(members[start:end])
    return np.concatenate(taken) if taken else np.zeros((0,), np.int64)


def risky(rows, scores, threshold: float) -> np.ndarray:
    """Which of ``rows`` RMR trains with its own optimizer: memorization ``>= threshold``."""
    return scores[np.asarray(rows)] >= threshold


def check(kind: str, width: int = DEFAULT_WIDTH, stride: int = DEFAULT_STRIDE,
          order: str | None = None, threshold: float = DEFAULT_THRESHOLD,
          weight_decay: float = DEFAULT_WEIGHT_DECAY, windows: str = "per_class") -> str:
    """Refuses a bad setting of ``make`` (before any data is read); returns the order."""
    if kind not in KINDS:
        raise UserError(f"unknown WeMem schedule '{kind}'; choose one of {', '.join(KINDS)}")
    if windows not in WINDOWS:
        raise UserError(f"unknown --wemem_windows '{windows}'; choose one of "
                        f"{', '.join(WINDOWS)}")
    if width < 1 or stride < 0:
        raise UserError(f"--wemem_width must be >= 1 and --wemem_stride >= 0, got {width} and "
                        f"{stride}")
    if not weight_decay >= 0:
        raise UserError(f"--wemem_weight_decay must be >= 0, got {weight_decay}")
    if not np.isfinite(threshold):
        raise UserError(f"--wemem_threshold must be a number, got {threshold}")
    order = order or DEFAULT_ORDER.get(kind, "low_first")
    if order not in ORDERS:
        raise UserError(f"unknown --wemem_order '{order}'; choose one of {', '.join(ORDERS)}")
    return order


def make(kind: str, train_lists, labels, scores, *, epochs: int, width: int = DEFAULT_WIDTH,
         stride: int = DEFAULT_STRIDE, order: str | None = None,
         threshold: float = DEFAULT_THRESHOLD, weight_decay: float = DEFAULT_WEIGHT_DECAY,
         windows: str = "per_class", defended=None, seed: int = 0) -> Schedule:
    """The ``kind`` schedule ('rsw', 'rmr' or 'swmr') of a fit of ``epochs`` epochs.

    Args:
      kind: which of WeMem's schedules.
      train_lists: each model's training rows (pool indices), as the fit's data holds them.
      labels: int ``[N]``, the pool's labels (RSW's windows are per class).
      scores: float ``[N]``, memorization score of every pool row (NaN: none); every training
        row of a defended model needs one.
      epochs: the fit's epochs; RSW/SWMR refuse a window that leaves a model an epoch without
        rows.
      width, stride: RSW's window, rows per class, and its move per epoch.
      order: RSW's ranking (``ORDERS``); None: the authors' best for ``kind``.
      threshold, weight_decay: RMR's memorization cut and its risky rows' weight decay.
      windows: 'per_class' or the released code's clamping ('code'); see the module docstring.
      defended: optional bool ``[K]``; an undefended model trains on all its rows every epoch
        with the stage's optimizer (a non-adaptive shadow). None: all models are defended.
      seed: the seed of the 'random' order (model k's permutations use ``seed + k``).

    Raises:
      UserError: a bad setting, or a defended model's training row without a score.
    """
    order = check(kind, width, stride, order, threshold, weight_decay, windows)
    labels, scores = np.asarray(labels), np.asarray(scores, np.float64)
    train_lists = [np.asarray(r) for r in train_lists]
    num_models = len(train_lists)
    defended = (np.ones(num_models, bool) if defended is None else np.asarray(defended, bool))
    for k in np.flatnonzero(defended):
        missing = int(np.isnan(scores[train_lists[k]]).sum())
        if missing:
            raise UserError(f"{missing} of model {k}'s {len(train_lists[k])} training rows have "
                            "no memorization score; compute scores for every row (e.g. "
                            "experiments/lira.py --population_fraction=0 on the same dataset)")

    if kind == "rmr":
        windowed = [lambda e, r=r: r for r in train_lists]
    else:
        ranked = [ranked_by_class(r, labels, scores, order, seed + k)
                  for k, r in enumerate(train_lists)]
        # A window's rows in the model's own row order: the pass shuffles them anyway, and so a
        # window over every row trains exactly the unscheduled model.
        windowed = [(lambda e, k=k, r=r: r[np.isin(r, window(ranked[k], e, width, stride,
                                                             windows))])
                    if defended[k] else (lambda e, r=r: r) for k, r in enumerate(train_lists)]
        for k in np.flatnonzero(defended):
            for e in range(epochs):
                if len(windowed[k](e)) == 0:
                    raise UserError(
                        f"WeMem's window (--wemem_width={width}, --wemem_stride={stride}) "
                        f"leaves model {k} no rows from epoch {e} of {epochs} (its largest "
                        f"class has {max(len(m) for m in ranked[k])} rows); lower the stride "
                        "or the fine-tuning epochs")
    if kind == "rsw":
        capacity = max(len(windowed[k](e)) for k in range(num_models) for e in range(epochs))
        return Schedule(name=kind, phases=(Phase(rows=lambda e: [w(e) for w in windowed],
                                                 capacity=capacity),))

    def split(e, take_risky):
        out = []
        for k, w in enumerate(windowed):
            rows = w(e)
            if not defended[k]:
                out.append(rows[:0] if take_risky else rows)
                continue
            r = risky(rows, scores, threshold)
            out.append(rows[r] if take_risky else rows[~r])
        return out

    epochs_seen = range(epochs) if kind == "swmr" else range(1)
    capacity = [max(len(rows) for e in epochs_seen for rows in split(e, side))
                for side in (True, False)]
    return Schedule(name=kind, phases=(
        Phase(rows=lambda e: split(e, True), capacity=capacity[0], weight_decay=weight_decay),
        Phase(rows=lambda e: split(e, False), capacity=capacity[1])))
