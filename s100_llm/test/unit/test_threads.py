"""num_thread 0 (automatic): never more threads than the cores the model may use (cpu_cores,
the affinity, a cgroup CPU quota), 4 where there are cores to spare. The cgroup trees are fake
ones in tmp_path: what /proc/self/cgroup and /sys/fs/cgroup hold on a v2, a v1 and a hybrid
system."""

import os
import pathlib
from typing import Dict

import pytest

from s100_llm.core.threads import cgroup_quota
from s100_llm.core.threads import format_cores
from s100_llm.core.threads import resolve
from s100_llm.core.threads import usable_cores

S100 = frozenset(range(6))


def tree(root: pathlib.Path, files: Dict[str, str]) -> str:
    for path, text in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text + '\n')
    return str(root)


def test_without_a_cgroup_tree_the_affinity_decides(tmp_path):
    usable = usable_cores(frozenset(), affinity={0, 1}, root=str(tmp_path))
    assert (usable.count, usable.why) == (2, 'affinity 0-1')
    assert str(resolve(0, usable)) == '2 (automatic: 2 usable cores: affinity 0-1)'


def test_the_s100_gets_4_of_its_6_cores_and_cpu_cores_replaces_the_affinity(tmp_path):
    root = str(tmp_path)
    assert resolve(0, usable_cores(frozenset(), affinity=S100, root=root)).count == 4
    assert resolve(0, usable_cores(frozenset({2, 3, 4, 5}), affinity={0}, root=root)).count == 4
    pinned = resolve(0, usable_cores(frozenset({4, 5}), affinity=S100, root=root))
    assert (pinned.count, pinned.why) == (2, 'automatic: 2 usable cores: cpu_cores 4-5')
    assert resolve(0, usable_cores(frozenset(), affinity={3}, root=root)).count == 1


def test_an_explicit_value_is_sent_as_set_and_flagged_when_it_oversubscribes(tmp_path):
    usable = usable_cores(frozenset(), affinity={0, 1}, root=str(tmp_path))
    beyond = resolve(4, usable)
    assert (beyond.count, beyond.oversubscribed) == (4, True)
    assert str(beyond) == '4 (set: 2 usable cores: affinity 0-1)'
    assert not resolve(2, usable).oversubscribed
    assert not resolve(0, usable).oversubscribed


def test_a_cgroup_v2_quota_limits_the_cores(tmp_path):
    root = tree(tmp_path, {
        'proc/self/cgroup': '0::/robot.slice/llm.service',
        'sys/fs/cgroup/cpu.max': 'max 100000',
        'sys/fs/cgroup/robot.slice/cpu.max': 'max 100000',
        'sys/fs/cgroup/robot.slice/llm.service/cpu.max': '200000 100000'})
    assert cgroup_quota(root) == (2.0, f'{root}/sys/fs/cgroup/robot.slice/llm.service')
    usable = usable_cores(frozenset(), affinity=S100, root=root)
    assert usable.count == 2
    assert usable.why == (f'affinity 0-5, cgroup CPU quota 2 cores ({root}/sys/fs/cgroup/'
                          'robot.slice/llm.service)')
    assert resolve(0, usable).count == 2


def test_a_parents_quota_limits_its_children_and_the_tightest_wins(tmp_path):
    root = tree(tmp_path, {
        'proc/self/cgroup': '0::/robot.slice/llm.service',
        'sys/fs/cgroup/robot.slice/cpu.max': '150000 100000',
        'sys/fs/cgroup/robot.slice/llm.service/cpu.max': '300000 100000'})
    assert cgroup_quota(root) == (1.5, f'{root}/sys/fs/cgroup/robot.slice')
    # 1.5 cores: a second thread would be throttled at every period and stall the first.
    assert usable_cores(frozenset(), affinity={0, 1}, root=root).count == 1


def test_no_quota_or_a_looser_one_leaves_the_cores(tmp_path):
    unlimited = tree(tmp_path / 'a', {'proc/self/cgroup': '0::/x',
                                      'sys/fs/cgroup/x/cpu.max': 'max 100000'})
    assert cgroup_quota(unlimited) is None
    loose = tree(tmp_path / 'b', {'proc/self/cgroup': '0::/x',
                                  'sys/fs/cgroup/x/cpu.max': '800000 100000'})
    assert usable_cores(frozenset(), affinity={0, 1}, root=loose).why == 'affinity 0-1'
    # A quota below one core still leaves one thread.
    tiny = tree(tmp_path / 'c', {'proc/self/cgroup': '0::/x',
                                 'sys/fs/cgroup/x/cpu.max': '50000 100000'})
    assert usable_cores(frozenset(), affinity={0, 1}, root=tiny).count == 1


def test_a_container_sees_the_host_path_but_has_its_own_cgroup_mounted_as_root(tmp_path):
    # Without a cgroup namespace /proc/self/cgroup names the host's path, which does not
    # exist inside the container: the quota of the mount's root (the container's) counts.
    root = tree(tmp_path, {'proc/self/cgroup': '0::/system.slice/docker-0123.scope',
                           'sys/fs/cgroup/cpu.max': '100000 100000'})
    assert cgroup_quota(root) == (1.0, f'{root}/sys/fs/cgroup')


def test_a_cgroup_v1_cfs_quota_limits_the_cores(tmp_path):
    root = tree(tmp_path, {
        'proc/self/cgroup': '4:memory:/x\n3:cpu,cpuacct:/robot\n0::/',
        'sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us': '-1',
        'sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us': '100000',
        'sys/fs/cgroup/cpu,cpuacct/robot/cpu.cfs_quota_us': '100000',
        'sys/fs/cgroup/cpu,cpuacct/robot/cpu.cfs_period_us': '50000'})
    assert cgroup_quota(root) == (2.0, f'{root}/sys/fs/cgroup/cpu,cpuacct/robot')
    assert usable_cores(frozenset({0, 1, 2, 3}), root=root).count == 2


def test_a_long_proc_self_cgroup_is_read_to_its_cpu_line(tmp_path):
    # A systemd v1 host lists a dozen hierarchies, each with the session's path.
    path = '/user.slice/user-1000.slice/session-2.scope'
    others = '\n'.join(f'{number}:{name}:{path}' for number, name in enumerate(
        ('blkio', 'devices', 'freezer', 'hugetlb', 'memory', 'net_cls,net_prio', 'perf_event',
         'pids', 'rdma', 'misc', 'name=systemd'), start=2))
    root = tree(tmp_path, {
        'proc/self/cgroup': f'{others}\n1:cpu,cpuacct:{path}\n0::{path}',
        f'sys/fs/cgroup/cpu,cpuacct{path}/cpu.cfs_quota_us': '300000',
        f'sys/fs/cgroup/cpu,cpuacct{path}/cpu.cfs_period_us': '100000'})
    assert cgroup_quota(root) == (3.0, f'{root}/sys/fs/cgroup/cpu,cpuacct{path}')


def test_v1_with_cpu_mounted_alone_as_on_this_machine(tmp_path):
    # This development machine: cpu and cpuacct mounted separately, cgroup v2 (unified) without
    # the cpu controller; no quota at the root.
    root = tree(tmp_path, {
        'proc/self/cgroup': '2:cpuacct:/\n1:cpu:/llm\n0::/',
        'sys/fs/cgroup/cpu/cpu.cfs_quota_us': '-1',
        'sys/fs/cgroup/cpu/cpu.cfs_period_us': '100000',
        'sys/fs/cgroup/cpu/llm/cpu.cfs_quota_us': '100000',
        'sys/fs/cgroup/cpu/llm/cpu.cfs_period_us': '100000',
        'sys/fs/cgroup/unified/cgroup.controllers': ''})
    assert cgroup_quota(root) == (1.0, f'{root}/sys/fs/cgroup/cpu/llm')


@pytest.mark.parametrize('text', ['', 'garbage', 'max', '100000', 'x 100000', '100000 0'])
def test_unreadable_cpu_max_is_no_quota(tmp_path, text):
    root = tree(tmp_path, {'proc/self/cgroup': '0::/x', 'sys/fs/cgroup/x/cpu.max': text})
    assert cgroup_quota(root) is None


def test_this_process_resolves_within_its_own_affinity():
    affinity = os.sched_getaffinity(0)
    threads = resolve(0, usable_cores(frozenset()))
    assert 1 <= threads.count <= min(4, len(affinity))
    assert threads.why.startswith(f'automatic: {threads.usable.count} usable cores: affinity '
                                  f'{format_cores(affinity)}')
