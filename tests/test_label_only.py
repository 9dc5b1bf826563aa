"""Label-only features against a linear classifier whose decision boundary is known."""

import numpy as np

from jaxmia.attacks import label_only


def _predict(x):
    return (x.reshape(len(x), -1).sum(1) > 0).astype(int)  # boundary: sum of pixels = 0


def test_boundary_distance_bounds_and_order():
    # Images 2x2x1 with pixel sums 4, 1 (label 1) and -2 (label 1: misclassified).
    x = np.stack([np.full((2, 2, 1), v / 4) for v in (4.0, 1.0, -2.0)]).astype(np.float32)
    y = np.array([1, 1, 1])
    f = label_only.query_features(_predict, x, y, seed=0, directions=16, max_radius=20.0)
    # The true L2 distance to {sum = 0} is sum / |(1,1,1,1)| = sum / 2; a direction search can
    # only overestimate it (to the bisection's resolution).
    assert f["label_boundary"][0] >= 2.0 - 0.05 and f["label_boundary"][1] >= 0.5 - 0.05
    assert f["label_boundary"][0] > f["label_boundary"][1] > 0
    assert f["label_boundary"][2] == 0.0  # misclassified
    assert f["label_noise"][0] == 1.0 and f["label_noise"][2] == 0.0
    assert f["label_aug"][2] == 0.0


def test_augmentations_are_shifts_and_rotations():
    x = np.zeros((1, 5, 5, 1), np.float32)
    x[0, 2, 2, 0] = 1.0
    copies = label_only.augmentations(x, rotation=8.0, shift=1)
    assert len(copies) == 1 + 2 + 8
    np.testing.assert_array_equal(copies[0], x)
    shifted = [c for c in copies[3:] if c[0, 3, 3, 0] == 1.0]  # the (+1, +1) translation
    assert len(shifted) == 1
