"""Resource sampling with psutil into plain dataclasses: the system and the Ollama processes.

A ResourceSampler keeps its psutil.Process objects between samples, so CPU percentages are
over the sampling period and each sample costs a handful of /proc reads.
"""

import dataclasses
import os
import shutil
from typing import Dict, List, Optional, Tuple

import psutil

from .models import models_size


@dataclasses.dataclass(frozen=True)
class SystemSample:
    cpu_percent: float
    per_core_percent: Tuple[float, ...]
    load_average: Tuple[float, float, float]
    cpu_frequency_mhz: Optional[float]
    memory_total: int
    memory_available: int
    memory_used: int
    swap_total: int
    swap_used: int
    temperatures: Tuple[Tuple[str, float], ...]   # (sensor label, degrees C)
    disk_path: str
    disk_free: Optional[int]
    disk_total: Optional[int]
    models_size: int = 0         # bytes of the models in disk_path (their blobs)

    @property
    def memory_used_percent(self) -> float:
        return 100.0 * (self.memory_total - self.memory_available) / max(1, self.memory_total)

    @property
    def hottest(self) -> Optional[Tuple[str, float]]:
        return max(self.temperatures, key=lambda item: item[1]) if self.temperatures else None


@dataclasses.dataclass(frozen=True)
class ProcessSample:
    pid: int
    rss: int
    cpu_percent: float
    cores: Tuple[int, ...] = ()      # its CPU affinity
    nice: int = 0


# No CPU the node runs on clocks below this; a smaller "MHz" value is in GHz.
_LOWEST_MHZ = 100.0


def frequency_mhz(current: Optional[float]) -> Optional[float]:
    """psutil.cpu_freq().current in MHz, None when unknown (0 or missing).

    psutil 5.9.0 (Ubuntu 22.04's python3-psutil) returns GHz on Linux hosts whose /proc/cpuinfo
    lists "cpu MHz" for every cpufreq policy (most x86 machines; psutil issue 2049, fixed in
    5.9.1); the S100's ARM cores are not affected.
    """
    if not current:
        return None
    return current * 1000.0 if current < _LOWEST_MHZ else current


class ResourceSampler:
    def __init__(self, disk_path: str) -> None:
        self.disk_path = disk_path
        self._processes: Dict[int, psutil.Process] = {}
        psutil.cpu_percent(percpu=True)  # prime: the first call has no period to measure

    def system(self) -> SystemSample:
        per_core = tuple(psutil.cpu_percent(percpu=True))
        memory = psutil.virtual_memory()
        swap = psutil.swap_memory()
        try:
            frequency = psutil.cpu_freq()
        except (OSError, NotImplementedError):
            frequency = None
        disk = _disk_usage(self.disk_path)
        return SystemSample(
            cpu_percent=sum(per_core) / max(1, len(per_core)),
            per_core_percent=per_core,
            load_average=tuple(os.getloadavg()),  # type: ignore[arg-type]
            cpu_frequency_mhz=frequency_mhz(frequency.current if frequency else None),
            memory_total=memory.total, memory_available=memory.available,
            memory_used=memory.total - memory.available,
            swap_total=swap.total, swap_used=swap.used,
            temperatures=_temperatures(),
            disk_path=self.disk_path,
            disk_free=disk.free if disk else None, disk_total=disk.total if disk else None,
            models_size=models_size(self.disk_path))

    def processes(self, pids: List[int]) -> List[ProcessSample]:
        """RSS and CPU % (of one core, over the time since the last sample) of each pid."""
        samples = []
        for pid in pids:
            process = self._processes.get(pid)
            try:
                if process is None:
                    process = self._processes[pid] = psutil.Process(pid)
                    process.cpu_percent()
                with process.oneshot():
                    samples.append(ProcessSample(
                        pid, process.memory_info().rss, process.cpu_percent(),
                        tuple(process.cpu_affinity()), process.nice()))
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                self._processes.pop(pid, None)
        for gone in set(self._processes) - set(pids):
            del self._processes[gone]
        return samples


def _temperatures() -> Tuple[Tuple[str, float], ...]:
    try:
        sensors = psutil.sensors_temperatures()
    except (AttributeError, OSError):
        return ()
    readings = []
    for chip, entries in sensors.items():
        for index, entry in enumerate(entries):
            label = f'{chip}/{entry.label or index}'
            readings.append((label, float(entry.current)))
    return tuple(readings)


def _disk_usage(path: str) -> Optional['shutil._ntuple_diskusage']:
    """Free space where path lives (its nearest existing ancestor, before it is created)."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            return None
        probe = parent
    try:
        return shutil.disk_usage(probe)
    except OSError:
        return None
