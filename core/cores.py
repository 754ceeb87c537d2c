"""How many CPU cores this process may use for its worker pools (the math checker's, the code sandbox's).

Under ``accelerate launch`` / ``torchrun`` N processes on one node share its cores: each gets its share, not all
of them (N pools of ``cpu_count`` workers would oversubscribe the node N times).
"""

from __future__ import annotations

import os


def cores_per_process() -> int:
    """The cores this process may run on, divided by the processes on this node (``LOCAL_WORLD_SIZE``), at least 1.

    >>> import os
    >>> n = len(os.sched_getaffinity(0))
    >>> os.environ["LOCAL_WORLD_SIZE"] = str(n * 2)
    >>> cores_per_process()
    1
    >>> del os.environ["LOCAL_WORLD_SIZE"]
    >>> cores_per_process() == n
    True
    """
    try:
        available = len(os.sched_getaffinity(0))  # a CPU quota or taskset narrows this; cpu_count() ignores it
    except AttributeError:  # not on Linux
        available = os.cpu_count() or 1
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, available // max(local, 1))
