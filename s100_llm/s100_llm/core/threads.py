"""The model's thread count: num_thread 0 (automatic) resolved to the cores the model may use.

llama.cpp's threads wait for each other at every token, so a thread without a core of its own
stalls them all: num_thread 4 on 2 cores gave 0.2 tokens/s where 2 threads gave 110
(shared/reference/ollama-real.md). The model may use the cores of cpu_cores (the server and
its runners are pinned to them), else the node's CPU affinity (they inherit it), and no more
than the CPU quota of the cgroup the node runs in (they run in it too) allows. Ollama itself
treats num_thread 0 as "the runner decides" (one thread per performance core, blind to
affinity and quotas), so the node never sends 0: it sends what is resolved here.
"""

import dataclasses
import math
import os
from typing import AbstractSet, Callable, Iterable, List, Optional, Tuple

# What automatic gives a machine with cores to spare: 4 of the S100's 6 cores, 2 left to the
# robot's own nodes.
AUTOMATIC_MAX = 4
# Where cgroup file systems are mounted: the unified (v2) hierarchy at the top, or under
# unified/ on a hybrid system; v1 controllers each in a directory named after them.
_V2_MOUNTS = ('sys/fs/cgroup', 'sys/fs/cgroup/unified')
_V1_MOUNT = 'sys/fs/cgroup'


def format_cores(cores: Iterable[int]) -> str:
    """Core ids as ranges: (0, 1, 2, 4) -> '0-2,4'."""
    ranges: List[List[int]] = []
    for core in sorted(cores):
        if ranges and core == ranges[-1][1] + 1:
            ranges[-1][1] = core
        else:
            ranges.append([core, core])
    return ','.join(str(first) if first == last else f'{first}-{last}'
                    for first, last in ranges)


@dataclasses.dataclass(frozen=True)
class UsableCores:
    """How many cores the model may use, and what limits it (for the log and diagnostics)."""

    count: int
    why: str            # e.g. 'affinity 0-1', 'cpu_cores 2-5, cgroup CPU quota 1.5 cores (...)'


@dataclasses.dataclass(frozen=True)
class Threads:
    """The num_thread sent to Ollama and how it was chosen."""

    count: int
    automatic: bool         # num_thread 0: chosen from the usable cores
    usable: UsableCores

    @property
    def why(self) -> str:
        """E.g. 'automatic: 2 usable cores: affinity 0-1'."""
        return (f"{'automatic' if self.automatic else 'set'}: {self.usable.count} usable "
                f'cores: {self.usable.why}')

    @property
    def oversubscribed(self) -> bool:
        """More threads than usable cores (only a num_thread set explicitly can be)."""
        return self.count > self.usable.count

    def __str__(self) -> str:
        return f'{self.count} ({self.why})'


def _read(path: str, limit: int = 256) -> Optional[str]:
    """The start of a small kernel file (at most `limit` characters); None if unreadable."""
    try:
        with open(path, encoding='ascii') as file:
            return file.read(limit).strip()
    except (OSError, UnicodeDecodeError):
        return None


def _quota_v2(directory: str) -> Optional[float]:
    """cpu.max 'QUOTA PERIOD' in cores; None for 'max' (no quota) or no such file."""
    words = (_read(os.path.join(directory, 'cpu.max')) or '').split()
    try:
        return int(words[0]) / int(words[1]) if len(words) == 2 and words[0] != 'max' else None
    except (ValueError, ZeroDivisionError):
        return None


def _quota_v1(directory: str) -> Optional[float]:
    """cpu.cfs_quota_us / cpu.cfs_period_us in cores; None for -1 (no quota) or no files."""
    try:
        quota = int(_read(os.path.join(directory, 'cpu.cfs_quota_us')) or '-1')
        period = int(_read(os.path.join(directory, 'cpu.cfs_period_us')) or '0')
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _quotas_up(mount: str, path: str,
               quota_of: Callable[[str], Optional[float]]) -> List[Tuple[float, str]]:
    """The quotas on the cgroup `path` under `mount` and on each of its ancestors (a parent's
    quota limits its children too). Directories missing on the way are skipped: in a container
    without its own cgroup namespace, /proc/self/cgroup names the host's path while the
    container's own cgroup is mounted as the root."""
    found = []
    mount = os.path.normpath(mount)
    directory = os.path.normpath(os.path.join(mount, path.lstrip('/')))
    while True:
        quota = quota_of(directory)
        if quota is not None:
            found.append((quota, directory))
        if directory == mount or not directory.startswith(mount + os.sep):
            return found
        directory = os.path.dirname(directory)


def cgroup_quota(root: str = '/') -> Optional[Tuple[float, str]]:
    """The tightest CPU quota on this process's cgroups (v2 cpu.max, v1 CFS quota) as (cores,
    the directory that sets it); None when there is none or it cannot be read. `root` is where
    /proc and /sys are found (a test passes a fake tree)."""
    # A line per v1 hierarchy (a dozen, each with its path) and the v2 one.
    text = _read(os.path.join(root, 'proc/self/cgroup'), limit=65536)
    quotas: List[Tuple[float, str]] = []
    for line in (text or '').splitlines():
        number, _, rest = line.partition(':')
        controllers, _, path = rest.partition(':')
        if number == '0' and not controllers:
            for mount in _V2_MOUNTS:
                quotas += _quotas_up(os.path.join(root, mount), path, _quota_v2)
        elif 'cpu' in controllers.split(','):
            for name in dict.fromkeys((controllers, 'cpu,cpuacct', 'cpu')):
                mount = os.path.join(root, _V1_MOUNT, name)
                if os.path.isdir(mount):
                    quotas += _quotas_up(mount, path, _quota_v1)
                    break
    return min(quotas) if quotas else None


def usable_cores(cpu_cores: AbstractSet[int], affinity: Optional[AbstractSet[int]] = None,
                 root: str = '/') -> UsableCores:
    """The cores the model may use: cpu_cores when set (the server is pinned to them), else
    `affinity` (default: this process's, which the server inherits), fewer when a cgroup CPU
    quota allows fewer. A fractional quota is rounded down (at least 1): a thread on the
    fraction would be throttled at every period and stall the others."""
    if cpu_cores:
        count, why = len(cpu_cores), f'cpu_cores {format_cores(cpu_cores)}'
    else:
        cores = os.sched_getaffinity(0) if affinity is None else affinity
        count, why = len(cores), f'affinity {format_cores(cores)}'
    quota = cgroup_quota(root)
    if quota is not None and math.floor(quota[0]) < count:
        count = max(1, math.floor(quota[0]))
        why += f', cgroup CPU quota {quota[0]:g} cores ({quota[1]})'
    return UsableCores(count, why)


def resolve(num_thread: int, usable: UsableCores) -> Threads:
    """The num_thread to send: the one set, or for 0 (automatic) the usable cores up to
    AUTOMATIC_MAX."""
    if num_thread:
        return Threads(num_thread, False, usable)
    return Threads(min(AUTOMATIC_MAX, usable.count), True, usable)
