"""Label-only features on token ids: the edits keep [CLS]/[SEP]/[PAD] and do what they say, and
the features take hand-worked values against classifiers whose behaviour under edits is known."""

import numpy as np
import pytest

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


def _table():
    """Piece 2000 has two synonyms, one of one piece (3000) and one of two (3001 3002); piece
    2500 is a '##' continuation."""
    shortest = np.zeros(30522, np.int64)
    shortest[2000] = 1
    continuation = np.zeros(30522, bool)
    continuation[2500] = True
    return lot.SynonymTable({2000: ((3000,), (3001, 3002))}, shortest, continuation)


def test_synonym_replacement_swaps_one_whole_word_and_keeps_the_rest():
    ids = np.array([[CLS, 2001, 2000, 2002, SEP, 0, 0],      # 2000 replaceable, room for both
                    [CLS, 2000, 2500, SEP, 0, 0, 0],         # 2000 starts a longer word: no
                    [CLS, 2003, 2000, 2004, 2005, 2006, SEP],  # full: only the 1-piece fits
                    [CLS, 2007, SEP, 0, 0, 0, 0]], np.int64)  # nothing replaceable
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(40):
        out = lot.replace_one(ids, rng, _table())
        row = tuple(out[0][out[0] != 0])
        assert row in {(CLS, 2001, 3000, 2002, SEP), (CLS, 2001, 3001, 3002, 2002, SEP)}
        seen.add(row)
        np.testing.assert_array_equal(out[1], ids[1])
        np.testing.assert_array_equal(out[2], [CLS, 2003, 3000, 2004, 2005, 2006, SEP])
        np.testing.assert_array_equal(out[3], ids[3])
    assert len(seen) == 2  # both synonyms get drawn


def test_synonym_table_from_the_tokenizer():
    """Whole words with WordNet synonyms are replaceable, by their synonyms' pieces; stop words,
    '##' pieces and words without synonyms are not."""
    from tests.conftest import require_minilm

    require_minilm()
    from jaxmia import pretrained

    tok = pretrained.tokenizer()
    lemmas = {"movie": ("film", "motion picture"), "the": ("a",), "great": ("outstanding",),
              "zzz": ("sleep",), "lonely": ()}
    table = lot.synonym_table(tok, lemmas)
    vocab = tok.get_vocab()
    ids = {w: tok(w, add_special_tokens=False)["input_ids"] for w in
           ("film", "motion picture", "outstanding")}
    assert table.options[vocab["movie"]] == (tuple(ids["film"]), tuple(ids["motion picture"]))
    assert table.options[vocab["great"]] == (tuple(ids["outstanding"]),)
    assert set(table.options) == {vocab["movie"], vocab["great"]}  # 'the': a stop word
    assert table.shortest[vocab["movie"]] == 1 and table.shortest[vocab["the"]] == 0
    assert table.continuation[vocab["##s"]] and not table.continuation[vocab["movie"]]


def test_synonym_feature_and_asking_for_fewer_features():
    """Label 1 iff piece 2000 is present: every synonym copy of row 0 loses it (1 of 11 kept);
    row 1 has nothing to replace (all 11 kept). Asking for one feature gives the value it has
    among all four, with fewer queries."""
    def predict(x):
        calls.append(len(x))
        return (np.asarray(x) == 2000).any(1).astype(int)

    ids = np.array([[CLS, 2001, 2000, 2002, SEP, 0, 0, 0],
                    [CLS, 2001, 2002, SEP, 0, 0, 0, 0]], np.float32)
    y = np.array([1, 0])
    calls = []
    every = lot.query_features(predict, ids, y, seed=5, features=lot.FEATURES,
                               synonyms=_table())
    all_calls = len(calls)
    np.testing.assert_allclose(every["label_synonym"], [1 / 11, 1.0])
    for name in lot.FEATURES:
        calls = []
        one = lot.query_features(predict, ids, y, seed=5, features=(name,), synonyms=_table())
        assert list(one) == [name] and len(calls) < all_calls
        np.testing.assert_array_equal(one[name], every[name])
    with pytest.raises(ValueError, match="label_synonym needs a SynonymTable"):
        lot.query_features(predict, ids, y, seed=5, features=("label_synonym",))
