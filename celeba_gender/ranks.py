"""This process's rank in a distributed job, read from the launcher's environment: a neutral
helper below the data and training layers (both decide what only rank 0 writes)."""

from __future__ import annotations

import os


def global_rank() -> int:
    """This process's rank among all processes of the job, from the launcher's environment:
    RANK (torchrun, and our DDP launch), else SLURM's task id (srun), else LOCAL_RANK on the
    first node (Lightning's own launch). A process on another node whose global rank is not
    known counts as some rank other than 0. 0 outside distributed runs."""
    for name in ("RANK", "SLURM_PROCID"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    local_rank = os.environ.get("LOCAL_RANK", "")
    if not local_rank.isdigit():
        return 0
    node_rank = os.environ.get("NODE_RANK") or os.environ.get("GROUP_RANK") or "0"
    if node_rank == "0":
        return int(local_rank)
    return int(local_rank) + 1  # not 0: some rank of a later node
