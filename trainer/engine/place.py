"""Where this process stands in a torchrun launch, read from torchrun's environment alone.

Free of torch, so the commands' start-up (`--help`) can ask whether torchrun launched them.
"""

import os
from dataclasses import dataclass


def launched_by_torchrun() -> bool:
    """torchrun's variables are set (even for one process)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


@dataclass(frozen=True)
class Place:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launched: bool = False  # started by torchrun (even with one process)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def current_place() -> Place:
    if not launched_by_torchrun():
        return Place()
    return Place(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)), True)
