"""Container facts read from a fake /proc and /sys."""

from pathlib import Path

from llem_agent.environment import cpu_model, cpu_quota, memory_limit_mb


def write(root: Path, name: str, text: str) -> None:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_limits(tmp_path: Path):
    write(tmp_path, "proc/cpuinfo", "processor\t: 0\nmodel name\t: AMD EPYC 9654\n")
    write(tmp_path, "sys/fs/cgroup/memory.max", f"{16 * 2**30}\n")
    write(tmp_path, "sys/fs/cgroup/cpu.max", "400000 100000\n")
    assert cpu_model(tmp_path) == "AMD EPYC 9654"
    assert memory_limit_mb(tmp_path) == 16 * 1024
    assert cpu_quota(tmp_path) == 4.0


def test_unlimited_and_cgroup_v1(tmp_path: Path):
    write(tmp_path, "sys/fs/cgroup/memory/memory.limit_in_bytes", str(2**63 - 4096))
    write(tmp_path, "sys/fs/cgroup/cpu/cpu.cfs_quota_us", "-1")
    write(tmp_path, "sys/fs/cgroup/cpu/cpu.cfs_period_us", "100000")
    assert memory_limit_mb(tmp_path) is None
    assert cpu_quota(tmp_path) is None
    assert cpu_model(tmp_path) is None
