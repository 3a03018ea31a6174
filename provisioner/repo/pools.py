"""Thread pools kept for the life of the process, one per use.

Starting a pool's threads per call costs more than a publish's few reads and writes on a busy
machine, so the stores' batch writes and the site's work ahead keep theirs. A forked child gets
fresh pools: its parent's threads are not there, and work submitted to their executors would wait
forever.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait

_POOLS: dict[tuple[int, str], ThreadPoolExecutor] = {}


def process_pool(name: str, workers: int) -> ThreadPoolExecutor:
    """This process's pool called `name` (its threads' name prefix), started on first use."""
    pid = os.getpid()
    pool = _POOLS.get((pid, name))
    if pool is None:
        for key in [key for key in _POOLS if key[0] != pid]:
            del _POOLS[key]  # inherited through fork: no thread of theirs runs here
        pool = _POOLS[(pid, name)] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
    return pool


def finish_all(futures: Sequence[Future[object]]) -> None:
    """Wait for every future, then raise the first error: no call is left running behind one."""
    wait(futures)
    for f in futures:
        f.result()
