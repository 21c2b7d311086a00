"""``destroy_process_group`` frees the group however late DCP is imported (the train loop
imports it on its first checkpoint). ``torch.distributed.nn.functional`` takes
``group=group.WORLD`` as default arguments; imported after the group exists, it held the group
past ``destroy_process_group``, and a gloo worker finishing a collective at interpreter exit
aborted the process (SIGABRT after a clean end; seen in CI as a flaky multi-rank test).

This module must not import torch.distributed.checkpoint itself: a spawned rank imports it
before joining the group."""

from __future__ import annotations

import os
import subprocess
import sys

from muonkit.distributed.env import free_port, spawn

HELD_AFTER_IMPORT = """
import sys
import torch.distributed as dist
from muonkit.distributed import compute_cleanup, compute_init
compute_init(device="cpu")
group = dist.group.WORLD
held = sys.getrefcount(group)
import torch.distributed.checkpoint
print(sys.getrefcount(group) - held)
compute_cleanup()
"""


def late_dcp_import_holds_no_group(rank: int, world: int) -> None:
    import torch.distributed as dist

    group = dist.group.WORLD
    held = sys.getrefcount(group)
    import torch.distributed.checkpoint  # noqa: F401

    assert sys.getrefcount(group) == held


def test_a_spawned_group_is_not_held_by_a_late_dcp_import():
    spawn(late_dcp_import_holds_no_group, 2, timeout_s=60)


def test_a_torchrun_group_is_not_held_by_a_late_dcp_import():
    env = {**os.environ, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    done = subprocess.run([sys.executable, "-c", HELD_AFTER_IMPORT], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0"]
