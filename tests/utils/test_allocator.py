from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from common.utils import allocator

REPO = Path(__file__).resolve().parents[2]
GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

# a 64 MiB block (above glibc's largest adaptive mmap threshold, 32 MiB) written and freed five times: with glibc's
# defaults each cycle maps fresh pages (16,384 faults), with the thresholds raised the heap block is reused
_CHILD = """
import ctypes, json, resource
from common.utils.allocator import keep_freed_memory
kept = keep_freed_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
size = 64 << 20
def cycle():
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)
cycle()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    cycle()
print(json.dumps({"kept": kept, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _child(setting: str | None) -> dict[str, int]:
    env = {k: v for k, v in os.environ.items() if k != allocator.ENV_VAR}
    if setting is not None:
        env[allocator.ENV_VAR] = setting
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forget an earlier call of this process, so the test sees the decision made again."""
    monkeypatch.setattr(allocator, "_applied", None)
    monkeypatch.delenv(allocator.ENV_VAR, raising=False)


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt only")
def test_freed_blocks_are_reused_without_page_faults() -> None:
    default, kept = _child("0"), _child(None)
    pages = 5 * (64 << 20) // 4096
    assert not default["kept"] and kept["kept"]
    assert default["faults"] > pages // 2  # glibc's default maps and faults the block again each time
    assert kept["faults"] < default["faults"] // 10


@pytest.mark.parametrize("setting", ["0", "false", "No", " off "])
def test_the_environment_variable_opts_out(fresh: None, monkeypatch: pytest.MonkeyPatch, setting: str) -> None:
    monkeypatch.setenv(allocator.ENV_VAR, setting)
    monkeypatch.setattr(allocator.ctypes, "CDLL", _refuse)
    assert allocator.keep_freed_memory() is False


@pytest.mark.parametrize("libc", [("musl", "1.2"), ("", "")])
def test_other_c_libraries_are_left_alone(fresh: None, monkeypatch: pytest.MonkeyPatch, libc: tuple[str, str]) -> None:
    monkeypatch.setattr(allocator.platform, "libc_ver", lambda: libc)
    monkeypatch.setattr(allocator.ctypes, "CDLL", _refuse)
    assert allocator.keep_freed_memory() is False


@pytest.mark.parametrize("accepted", [(1, 1), (0, 1), (1, 0)])
def test_both_settings_must_be_accepted_and_are_set_once(
    fresh: None, monkeypatch: pytest.MonkeyPatch, accepted: tuple[int, int]
) -> None:
    calls: list[tuple[int, int]] = []

    class FakeMallopt:  # a ctypes function: call it, set argtypes and restype
        def __call__(self, param: int, value: int) -> int:
            calls.append((param, value))
            return accepted[len(calls) - 1]

    class FakeLibc:
        def __init__(self, name: str) -> None:
            self.mallopt = FakeMallopt()

    monkeypatch.setattr(allocator.platform, "libc_ver", lambda: ("glibc", "2.36"))
    monkeypatch.setattr(allocator.sys, "platform", "linux")
    monkeypatch.setattr(allocator.ctypes, "CDLL", FakeLibc)
    expected = all(accepted)
    assert allocator.keep_freed_memory() is expected
    assert calls[0] == (-3, allocator.MMAP_THRESHOLD)  # M_MMAP_THRESHOLD
    if accepted[0]:
        assert calls[1] == (-1, allocator.TRIM_THRESHOLD)  # M_TRIM_THRESHOLD
    count = len(calls)
    assert allocator.keep_freed_memory() is expected  # idempotent: decided once per process
    assert len(calls) == count


def _refuse(name: str) -> None:
    raise AssertionError(f"libc loaded ({name}) although keep_freed_memory had to leave the allocator alone")


CONFIGS = ["configs/train.json", "configs/multi_gpu_train.json", "configs/evaluate.json", "configs/inference.json"]


@pytest.mark.parametrize(
    "config",
    [f"brats_unet3d_baseline/{c}" for c in CONFIGS]
    + [f"brats_unet2d_noiseaug/{c}" for c in CONFIGS]
    + ["brats_robustness_eval/configs/evaluate.json"],
)
def test_every_bundle_entry_point_keeps_freed_memory_first(config: str) -> None:
    initialize = json.loads((REPO / "bundles" / config).read_text())["initialize"]
    calls = [item for item in initialize if "import" not in item]
    assert calls[0] == "$common.utils.keep_freed_memory()", initialize
