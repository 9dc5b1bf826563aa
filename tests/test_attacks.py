"""Features, threshold attacks and metrics against hand-worked values and a reference loop."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxmia import attacks, features, metrics
from jaxmia.attacks.threshold import best_threshold


def test_features_hand_worked():
    # logits log([.7, .2, .1]) -> probs .7, .2, .1; label 1.
    f = features.extract(jnp.log(jnp.array([[0.7, 0.2, 0.1]])), jnp.array([1]))
    np.testing.assert_allclose(f["confidence"], [0.2], rtol=1e-6)
    np.testing.assert_allclose(f["top1"], [0.7], rtol=1e-6)
    np.testing.assert_allclose(f["loss"], [-np.log(0.2)], rtol=1e-6)
    ent = -(0.7 * np.log(0.7) + 0.2 * np.log(0.2) + 0.1 * np.log(0.1))
    np.testing.assert_allclose(f["entropy"], [ent], rtol=1e-6)
    # Mentr = -(1 - p_y) log p_y - sum_{c != y} p_c log(1 - p_c)
    mentr = -(0.8 * np.log(0.2)) - (0.7 * np.log(0.3) + 0.1 * np.log(0.9))
    np.testing.assert_allclose(f["modified_entropy"], [mentr], rtol=1e-6)
    assert not bool(f["correct"][0])


def test_features_broadcast_over_models():
    logits = jnp.arange(24.0).reshape(2, 4, 3) / 7
    f = features.extract(logits, jnp.zeros((2, 4), jnp.int32))
    assert f["loss"].shape == (2, 4) and f["probs"].shape == (2, 4, 3)


def _reference_threshold(tr, te):
    """Song & Mittal's loop: first value (in [tr..., te...] order) with the best balanced acc."""
    thre, best = 0, 0
    for v in np.concatenate([tr, te]):
        acc = 0.5 * (np.mean(tr >= v) + np.mean(te < v))
        if acc > best:
            thre, best = v, acc
    return thre


def test_best_threshold_hand_worked():
    # members .9 .8 .4, non-members .5 .3: t = .8 gives TPR 2/3, TNR 1 -> 5/6, the best.
    assert best_threshold(np.array([.9, .8, .4]), np.array([.5, .3])) == pytest.approx(.8)


@pytest.mark.parametrize("seed", range(5))
def test_best_threshold_matches_reference_loop(seed):
    rng = np.random.default_rng(seed)
    tr = rng.integers(0, 6, 30) / 5.0  # Many ties.
    te = rng.integers(0, 6, 25) / 5.0 - 0.1
    assert best_threshold(tr, te) == pytest.approx(_reference_threshold(tr, te))


def test_classwise_confidence_attack_hand_worked():
    attack = attacks.REGISTRY["confidence"]()
    probs = np.zeros((6, 2))
    shadow = {"confidence": np.array([.9, .8, .3, .6, .5, .1]),
              "labels": np.array([0, 0, 0, 1, 1, 1]), "probs": probs}
    member = np.array([True, True, False, True, False, False])
    state = attack.fit(shadow, member)
    # class 0: members .9 .8, non-member .3 -> t=.8 (first max); class 1: member .6, non .5 .1 -> .6
    np.testing.assert_allclose(state["classwise"], [.8, .6])
    target = {"confidence": np.array([.85, .7, .65, .55]), "labels": np.array([0, 0, 1, 1])}
    np.testing.assert_allclose(attack.score(state, target), [.05, -.1, .05, -.05])


def test_entropy_attacks_flip_sign():
    attack = attacks.REGISTRY["entropy"]()
    shadow = {"entropy": np.array([0.1, 0.2, 1.0, 1.2]), "labels": np.zeros(4, int),
              "probs": np.zeros((4, 1))}
    state = attack.fit(shadow, np.array([True, True, False, False]))
    scores = attack.score(state, {"entropy": np.array([0.05, 1.5]), "labels": np.zeros(2, int)})
    assert scores[0] >= 0 > scores[1]  # low entropy = member


def test_top1_code_variant_equals_loss_ranking():
    rng = np.random.default_rng(0)
    p = rng.uniform(0.01, 1, 50)
    f = {"confidence": p, "loss": -np.log(p), "labels": np.zeros(50, int),
         "probs": np.zeros((50, 2)), "top1": p}
    member = rng.uniform(size=50) > 0.5
    a, b = attacks.REGISTRY["top1_code"](), attacks.REGISTRY["loss"]()
    sa, sb = a.score(a.fit(f, member), f), b.score(b.fit(f, member), f)
    np.testing.assert_array_equal(np.argsort(sa, kind="stable"), np.argsort(sb, kind="stable"))


FAST_CLASSIFIERS = {"nn", "top3", "nncls", "samia", "grip_nn", "sparsity_mlp1", "sparsity_mlp2",
                    "sparsity_mlp3"}


def _make_fast(name):
    """The attack with its classifier trained for a few epochs (the toy is easy)."""
    import dataclasses

    from jaxmia.attacks import classifier, grip_nn, samia, sparsity_nn

    if name not in FAST_CLASSIFIERS:
        return attacks.REGISTRY[name]()
    if name == "samia":
        return samia.make(config=dataclasses.replace(samia.TRAIN, epochs=8))
    if name == "grip_nn":
        return grip_nn.make(config=dataclasses.replace(grip_nn.TRAIN, epochs=8))
    if name.startswith("sparsity"):
        return sparsity_nn.make(name, config=dataclasses.replace(sparsity_nn.TRAIN, epochs=20))
    return classifier.make(name, config=dataclasses.replace(classifier.TRAIN, epochs=20,
                                                            lr=1e-2))


@pytest.mark.parametrize("name", list(attacks.REGISTRY))
def test_every_attack_beats_chance_when_members_are_separable(name):
    from tests.toys import toy_features

    f, member = toy_features()
    attack = _make_fast(name)
    s = attack.score(attack.fit(f, member), f)
    assert s.shape == member.shape
    assert metrics.balanced_accuracy(s >= 0, member) > 0.65  # chance: 0.5
    assert metrics.roc_auc(s, member) > 0.75


def test_metrics_hand_worked():
    scores = np.array([0.9, 0.8, -0.1, 0.7, -0.2, -0.5])
    member = np.array([1, 1, 1, 0, 0, 0], bool)
    # predictions >= 0: members 2/3 right, non-members 2/3 right.
    assert metrics.balanced_accuracy(scores >= 0, member) == pytest.approx(2 / 3)
    # AUC: pairs (member > non-member): .9 > all 3, .8 > all 3, -.1 > -.2,-.5 -> 8/9.
    assert metrics.roc_auc(scores, member) == pytest.approx(8 / 9)
    # Thresholds: at > .7 FPR 0 with TPR 2/3.
    assert metrics.tpr_at_fpr(scores, member, 0.0) == pytest.approx(2 / 3)
    assert metrics.tpr_at_fpr(scores, member, 0.34) == pytest.approx(1.0)
    s = metrics.summarize(scores, member)
    assert set(s) == {"balanced_accuracy", "auc", "tpr@1%fpr", "tpr@0.1%fpr", "tpr@0%fpr"}


def test_bootstrap_interval_brackets_the_estimate_and_is_reproducible():
    rng = np.random.default_rng(0)
    member = np.arange(400) < 200
    scores = rng.normal(size=400) + member  # AUC about 0.76
    lo, hi = metrics.bootstrap_ci(scores, member, num_resamples=100, seed=3)["auc"]
    assert lo < metrics.roc_auc(scores, member) < hi and hi - lo < 0.2
    assert (lo, hi) == metrics.bootstrap_ci(scores, member, num_resamples=100, seed=3)["auc"]
    full = metrics.summarize_with_ci(scores, member, num_resamples=50)
    assert full["tpr@1%fpr_ci95"][0] <= full["tpr@1%fpr"] <= full["tpr@1%fpr_ci95"][1]


def test_classifier_attack_inputs_and_shapes():
    from jaxmia.attacks import classifier

    f = {"probs": np.array([[0.2, 0.5, 0.1, 0.2]]), "labels": np.array([3])}
    np.testing.assert_allclose(classifier.attack_inputs("top3", f), [[0.5, 0.2, 0.2]])
    np.testing.assert_allclose(classifier.attack_inputs("nncls", f),
                               [[0.2, 0.5, 0.1, 0.2, 0, 0, 0, 1]])
    np.testing.assert_allclose(classifier.attack_inputs("nn", f), f["probs"])


def test_gaps_hand_worked():
    member = {"confidence": np.array([0.9, 0.8, 0.6]), "correct": np.array([1, 1, 0]),
              "labels": np.array([0, 0, 1]),
              "sensitivity": np.array([[0.1, 0.1], [0.2, 0.0], [0.3, 0.3]])}
    non = {"confidence": np.array([0.5, 0.4]), "correct": np.array([1, 0]),
           "labels": np.array([0, 1]), "sensitivity": np.array([[0.5, 0.5], [1.0, 0.0]])}
    g = metrics.gaps(member, non, 3)
    assert g["generalization_gap"] == pytest.approx(2 / 3 - 1 / 2)
    assert g["confidence_gap"] == pytest.approx(0.7667 - 0.45, abs=1e-4)
    # Sensitivities (row sums): members .2 .2 .6 -> .3333; non-members 1, 1 -> 1.
    assert g["sensitivity_gap"] == pytest.approx(1 - 1 / 3)
    # Class 0: members .9 .8 vs .5 -> .35; class 1: .6 vs .4 -> .2; class 2: absent.
    np.testing.assert_allclose(g["per_class"]["confidence_gap"][:2], [0.35, 0.2])
    assert g["per_class"]["confidence_gap"][2] is None


def test_js_divergence_hand_worked():
    # Disjoint histograms: 1 bit; identical: 0; half overlap (p = [.5, .5, 0], q = [0, .5, .5]):
    # m = [.25, .5, .25], KL(p||m) = .5 log2 2 + .5 log2 1 = .5 -> JS = .5.
    assert metrics.js_divergence([0.1, 0.1], [0.9, 0.9], bins=2) == pytest.approx(1.0)
    assert metrics.js_divergence([0.1, 0.9], [0.1, 0.9], bins=2) == pytest.approx(0.0)
    assert metrics.js_divergence([0.1, 0.5], [0.5, 0.9], bins=3) == pytest.approx(0.5)


def test_correctness_attack_is_the_fixed_gap_rule():
    attack = attacks.REGISTRY["correctness"]()
    # Shadows where "everyone is a member" would fit better: the rule does not move.
    state = attack.fit({"correct": np.array([True, True, True]), "labels": np.zeros(3, int),
                        "probs": np.zeros((3, 2))}, np.array([True, True, False]))
    s = attack.score(state, {"correct": np.array([True, False]), "labels": np.zeros(2, int)})
    np.testing.assert_allclose(s, [0.5, -0.5])
