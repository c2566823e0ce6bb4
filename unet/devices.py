"""Which GPUs a run may use, and how fold-parallel training shares them: pure functions of the environment
and the config, so the orchestrator's schedule is testable without a GPU.

A worker (or a Prefect deployment's job variables) grants a run its GPUs through ``CUDA_VISIBLE_DEVICES``;
fold-parallel training gives each fold's process one of *those* ids, never ids of its own invention.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def granted(env: Mapping[str, str], count: int) -> list[str]:
    """The GPU ids this run may use: those in the inherited ``CUDA_VISIBLE_DEVICES`` (indices or ``GPU-…``
    UUIDs, in order), or ``0 .. count-1`` when it is unset.

    As CUDA does, an empty value grants no GPU, and a negative id hides itself and every id after it.
    Repeated ids count once.
    """
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return [str(i) for i in range(count)]
    ids: list[str] = []
    for raw in visible.split(","):
        dev = raw.strip()
        if not dev or dev.startswith("-"):
            break
        if dev not in ids:
            ids.append(dev)
    return ids


def fold_queues(folds: Sequence[int], devices: Sequence[str]) -> dict[str, list[int]]:
    """One queue of folds per device: the ``i``-th fold goes to device ``i mod n``; a device trains its
    queue one fold after another, so with fewer devices than folds the folds run ``n`` at a time.

    Raises:
        ValueError: no device to run on.
    """
    if not devices:
        raise ValueError("fold_queues: no device to run folds on")
    return {dev: list(folds[i :: len(devices)]) for i, dev in enumerate(devices) if folds[i :: len(devices)]}
