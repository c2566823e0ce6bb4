import pytest

from unet.folds import check_partition, kfold


@pytest.mark.parametrize(("n", "k"), [(30, 5), (30, 4), (7, 3), (5, 5), (2, 2)])
def test_exact_partition(n, k):
    folds = kfold(n, k, seed=1)
    check_partition(folds, n)
    vals = [f["val"] for f in folds["folds"]]
    assert sorted(i for v in vals for i in v) == list(range(n))  # each slice validated exactly once
    assert max(map(len, vals)) - min(map(len, vals)) <= 1
    assert folds["k"] == k and folds["seed"] == 1


def test_seeded():
    assert kfold(30, 5, 3) == kfold(30, 5, 3)
    assert kfold(30, 5, 3) != kfold(30, 5, 4)


@pytest.mark.parametrize("k", [1, 0, 31])
def test_bad_k(k):
    with pytest.raises(ValueError, match=rf"split.k: invalid value {k}: must be in \[2, 30\]"):
        kfold(30, k, 0)


def test_check_partition_rejects_overlap():
    folds = kfold(6, 2, 0)
    folds["folds"][1]["val"] = folds["folds"][0]["val"]
    with pytest.raises(ValueError, match="partition"):
        check_partition(folds, 6)
