"""Label-only features on token ids: the edits keep [CLS]/[SEP]/[PAD] and do what they say, and
the features take hand-worked values against classifiers whose behaviour under edits is known."""

import numpy as np

from jaxmia.attacks import label_only_text as lot
from jaxmia.models.bert import MASK_ID

CLS, SEP = 101, 102


def _rows():
    # Six word pieces; four; a pair with 2 + 1 pieces; none (an empty sentence).
    return np.array([[CLS, 2000, 2001, 2002, 2003, 2004, 2005, SEP, 0, 0],
                     [CLS, 2010, 2011, 2012, 2013, SEP, 0, 0, 0, 0],
                     [CLS, 2020, 2021, SEP, 2022, SEP, 0, 0, 0, 0],
                     [CLS, SEP, 0, 0, 0, 0, 0, 0, 0, 0]], np.float32)


def test_deletion_removes_one_piece_and_keeps_the_rest_in_order():
    ids = _rows().astype(np.int64)
    rng = np.random.default_rng(0)
    deleted_cols = set()
    for _ in range(50):
        out = lot.delete_one(ids, rng)
        for row, new in zip(ids, out):
            kept = list(new[new != 0])
            orig = list(row[row != 0])
            if lot.pieces(row[None]).sum() == 0:
                assert kept == orig
                continue
            assert len(kept) == len(orig) - 1 and sorted(set(orig) - set(kept)) != []
            gone = (set(orig) - set(kept)).pop()
            assert gone not in (CLS, SEP)
            orig.remove(gone)
            assert kept == orig  # the others, in order, moved left
        deleted_cols.add(int(np.argmax(ids[0] != out[0])))
    assert deleted_cols == {1, 2, 3, 4, 5, 6}  # every piece of row 0 gets deleted sometime


def test_substitution_touches_only_pieces_at_its_rate():
    ids = np.tile(_rows().astype(np.int64), (500, 1))
    out = lot.substitute(ids, np.random.default_rng(1), 0.3, 30522)
    where = lot.pieces(ids)
    np.testing.assert_array_equal(out[~where], ids[~where])
    changed = (out != ids)[where]
    assert abs(changed.mean() - 0.3) < 0.03
    assert out[where].min() >= 999 and out[where].max() < 30522


def _count_classifier(k):
    """Label 1 iff at least k unmasked word pieces."""
    def predict(x):
        ids = np.asarray(x).astype(np.int64)
        return ((lot.pieces(ids) & (ids != MASK_ID)).sum(1) >= k).astype(int)
    return predict


def test_features_take_hand_worked_values():
    ids = _rows()
    y = np.array([1, 1, 0, 0])
    f = lot.query_features(_count_classifier(4), ids, y, seed=0, copies=10, directions=5)
    # Row 0: 6 pieces, flips once 3 are masked, whatever the order: boundary 3/6; a deletion
    # leaves 5 >= 4 (aug 1); substitutions keep every piece unmasked (noise 1).
    # Row 1: 4 pieces, flips at 1 masked: 1/4; every deletion flips it (aug 1/11).
    # Row 2: 3 pieces, label 0 and predicted 0; no masking changes that: boundary 1.
    # Row 3: no pieces, predicted 0 = label: nothing to edit, boundary 1, aug and noise 1.
    np.testing.assert_allclose(f["label_boundary"], [0.5, 0.25, 1.0, 1.0])
    np.testing.assert_allclose(f["label_aug"], [1.0, 1 / 11, 1.0, 1.0])
    np.testing.assert_allclose(f["label_noise"], [1.0, 1.0, 1.0, 1.0])
    # Misclassified rows score 0 on the boundary.
    wrong = lot.query_features(_count_classifier(4), ids, 1 - y, seed=0)
    np.testing.assert_array_equal(wrong["label_boundary"], 0.0)


def test_noise_and_boundary_see_a_keyword():
    """Label 1 iff token 2002 is present: substituting every piece removes it (noise 0);
    along a random order it is masked at its rank, so over many orders the smallest r is 1."""
    def predict(x):
        return (np.asarray(x) == 2002).any(1).astype(int)

    ids = _rows()[:1]
    f = lot.query_features(predict, ids, np.array([1]), seed=3, rate=1.0, noise_draws=5,
                           directions=40)
    assert f["label_noise"][0] == 0.0
    np.testing.assert_allclose(f["label_boundary"], [1 / 6])
    none = lot.query_features(predict, ids, np.array([1]), seed=3, rate=0.0, noise_draws=5)
    assert none["label_noise"][0] == 1.0
