"""The up-front check of image files (trainer.data.images.examine), remembered between runs.

What a check found good is written to a small file under the cache directory (data.cache_dir):
path -> (bytes, modification time in ns, width, height, is a JPEG). A later run over the same files stats each
one and checks again only those whose size or modification time changed, and new ones: over an
unchanged folder of 70,000 files the check takes a fraction of a second instead of many seconds.
Bad files are never remembered (they are refused or left out on every run). The widths and heights
also tell the decoded-image cache (trainer.data.image_cache) its layout without opening the files again.

A memory file that cannot be read (another version, truncated, not JSON) is ignored and rewritten;
a cache directory that cannot be written costs only the memory, with one warning.
"""

import hashlib
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Sequence, Tuple

from trainer.data import images

log = logging.getLogger("trainer")

FORMAT = "trainer file check"
VERSION = 2
# path -> (size in bytes, modification time in ns, width, height, 1 for a JPEG else 0)
Facts = Dict[str, Tuple[int, int, int, int, int]]
# A file modified less than this before it was checked is not remembered: file systems keep times
# in coarse steps, so a change made right after the check could leave size and time as they were.
SETTLED_NS = 2_000_000_000


def settled(mtime_ns: int, now_ns: int) -> bool:
    return mtime_ns < now_ns - SETTLED_NS


def cache_root(cache_dir: Optional[str]) -> str:
    """data.cache_dir, or its default when null: $XDG_CACHE_HOME/trainer, else ~/.cache/trainer."""
    if cache_dir:
        return os.path.abspath(os.path.expanduser(cache_dir))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "trainer")


def memory_path(cache_dir: Optional[str], what: str) -> str:
    """One memory file per set of files (data.root=..., data.val_csv=...), named by a hash of it."""
    digest = hashlib.sha256(what.encode()).hexdigest()[:24]
    return os.path.join(cache_root(cache_dir), "checked", f"{digest}.json")


def read_memory(path: str) -> Facts:
    try:
        with open(path, encoding="utf-8") as f:
            stored = json.load(f)
        if stored.get("format") != FORMAT or stored.get("version") != VERSION:
            log.debug(f"file check memory '{path}' is of another version: checking again")
            return {}
        return {p: tuple(v) for p, v in stored["files"].items()}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as err:
        log.debug(f"file check memory '{path}' is unreadable ({err}): checking again")
        return {}


def write_memory(path: str, facts: Facts) -> None:
    """Atomically (a partial file is never read back): a temporary file, then a rename."""
    temporary = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(temporary, "w", encoding="utf-8") as f:
            json.dump({"format": FORMAT, "version": VERSION, "files": facts}, f, separators=(",", ":"))
        os.replace(temporary, path)
    except OSError as err:
        log.warning(f"warning: cannot remember the file check in '{path}' ({err.strerror or err}); "
                    "every run checks every file again: set data.cache_dir to a folder that can be written")
        try:
            os.remove(temporary)
        except OSError:
            pass


def stat_of(path: str) -> Optional[Tuple[int, int]]:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def examine_with_stat(path: str):
    stat = stat_of(path)  # before the check: a file changed while it is checked is checked again next time
    reason, size = images.examine(path)
    return reason, stat, size


def check_files(paths: Sequence[str], cache_dir: Optional[str], what: str, threads: int = 8) -> Tuple[List[Tuple[int, str]], Facts]:
    """(index, reason) of every unusable file, as images.find_problems, and the facts of the good ones.
    Files the memory of `what` holds with the same size and modification time are not opened."""
    where = memory_path(cache_dir, what)
    remembered = read_memory(where)
    facts: Facts = {}
    unknown = []
    for i, path in enumerate(paths):
        known = remembered.get(path)
        if known is not None and stat_of(path) == tuple(known[:2]):
            facts[path] = known
        else:
            unknown.append(i)
    problems = []
    if unknown:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            results = pool.map(examine_with_stat, [paths[i] for i in unknown], chunksize=64)
            for i, (reason, stat, size) in zip(unknown, results):
                if reason is not None:
                    problems.append((i, reason))
                elif stat is not None:
                    facts[paths[i]] = (*stat, size[0], size[1], int(size[2]))
    log.info(f"file check of {what}: checked {len(unknown)} files, {len(paths) - len(unknown)} remembered")
    # the files of this set only (a file removed from the folder is forgotten), once settled
    now = time.time_ns()
    keep = {path: fact for path, fact in facts.items() if settled(fact[1], now)}
    if keep != remembered:
        write_memory(where, keep)
    return problems, facts


def checked_files(paths: List[str], labels: List[str], skip_bad_files: bool, what: str, cache_dir: Optional[str],
                  skip_key: str = "data.skip_bad_files") -> Tuple[List[str], List[str], Facts]:
    """images.drop_bad_files with a memory: (good paths, their labels, path -> facts)."""
    problems, facts = check_files(paths, cache_dir, what)
    paths, labels = images.drop_bad_files(paths, labels, skip_bad_files, what, skip_key, problems=problems)
    return paths, labels, facts
