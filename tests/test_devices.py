"""The GPUs a run is granted and the fold-parallel schedule over them."""

from __future__ import annotations

import pytest

from unet.devices import fold_queues, granted


def test_granted_devices_come_from_the_inherited_cuda_visible_devices():
    assert granted({"CUDA_VISIBLE_DEVICES": "7,9"}, count=4) == ["7", "9"]  # the worker's grant, not 0..3
    assert granted({"CUDA_VISIBLE_DEVICES": " 2, GPU-8f3a ,2"}, count=0) == ["2", "GPU-8f3a"]
    assert granted({}, count=3) == ["0", "1", "2"]  # unset: every GPU, runtime.gpus of them
    assert granted({"CUDA_VISIBLE_DEVICES": ""}, count=3) == []  # set but empty: no GPU
    assert granted({"CUDA_VISIBLE_DEVICES": "1,-1,3"}, count=3) == ["1"]  # CUDA stops at an invalid id


def test_folds_queue_on_the_granted_devices_one_at_a_time():
    assert fold_queues([0, 1, 2, 3, 4], ["7", "9"]) == {"7": [0, 2, 4], "9": [1, 3]}
    assert fold_queues([0, 1, 2], ["3", "4", "5", "6"]) == {"3": [0], "4": [1], "5": [2]}  # no idle queue
    assert fold_queues([0, 1, 2, 3, 4], ["0"]) == {"0": [0, 1, 2, 3, 4]}
    queues = fold_queues(list(range(7)), ["a", "b", "c"])
    assert sorted(k for q in queues.values() for k in q) == list(range(7))  # every fold exactly once
    assert max(map(len, queues.values())) - min(map(len, queues.values())) <= 1  # balanced waves
    with pytest.raises(ValueError, match="no device"):
        fold_queues([0, 1], [])
