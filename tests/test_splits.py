"""mia_prune's splits: sizes, disjointness, no target data in any shadow, determinism."""

import numpy as np
from sklearn.model_selection import train_test_split

from jaxmia.data import mia_prune_splits


def test_location_sizes_match_the_paper_code():
    s = mia_prune_splits(5010, num_shadows=5, seed=7)
    assert (len(s[0].train), len(s[0].dev), len(s[0].test)) == (1126, 251, 1128)
    assert len(s) == 6


def test_members_nonmembers_disjoint_and_target_never_in_shadows():
    s = mia_prune_splits(1797, num_shadows=5, seed=7)
    target = np.concatenate([s[0].train, s[0].dev, s[0].test])
    assert len(np.unique(target)) == len(target)  # train/dev/test disjoint
    for shadow in s[1:]:
        assert not set(shadow.train) & set(shadow.test)
        assert not set(shadow.train) & set(shadow.dev)
        shadow_all = np.concatenate([shadow.train, shadow.dev, shadow.test])
        assert not set(shadow_all) & set(target)
    assert len(set(target) | set(np.concatenate([s[1].train, s[1].dev, s[1].test]))) == 1797


def test_shadows_use_seed_plus_i_on_the_shadow_half():
    s = mia_prune_splits(1000, num_shadows=3, seed=11)
    _, shadow_half = train_test_split(list(range(1000)), test_size=0.5, random_state=11)
    rest, test = train_test_split(shadow_half, test_size=0.45, random_state=11 + 2)
    np.testing.assert_array_equal(s[3].test, test)
    assert not np.array_equal(s[1].test, s[2].test)  # Different random_state per shadow.


def test_same_seed_same_split_other_seed_other_split():
    a, b, c = (mia_prune_splits(500, 2, seed) for seed in (7, 7, 8))
    np.testing.assert_array_equal(a[0].train, b[0].train)
    assert not np.array_equal(a[0].train, c[0].train)
