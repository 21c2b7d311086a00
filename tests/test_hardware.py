"""muonkit.hardware: flags read from the real /proc/cpuinfo, bf16 decided from flags."""

import os

import pytest
import torch

from muonkit import hardware


def test_native_bf16_follows_the_flags():
    assert hardware.cpu_native_bf16(frozenset({"avx2", "avx512f", "avx512_bf16"}))
    assert hardware.cpu_native_bf16(frozenset({"avx2", "amx_bf16", "amx_tile"}))
    assert not hardware.cpu_native_bf16(frozenset({"avx2", "avx512f", "fma"}))
    assert not hardware.cpu_native_bf16(frozenset())


@pytest.mark.skipif(not os.path.exists("/proc/cpuinfo"), reason="Linux only")
def test_flags_match_proc_cpuinfo(monkeypatch):
    monkeypatch.delenv("MUONKIT_CPU_NATIVE_BF16")  # conftest pins it for the other tests
    line = next(x for x in open("/proc/cpuinfo") if x.startswith("flags"))
    expected = set(line.split(":", 1)[1].split())
    assert hardware.cpu_flags() == expected
    assert hardware.cpu_native_bf16() == bool({"avx512_bf16", "amx_bf16"} & expected)


def test_machine_info_reports_what_affects_timing():
    info = hardware.machine_info("cpu")
    assert info["torch_threads"] == torch.get_num_threads()
    assert set(info["cpu_flags"]) <= set(hardware.TIMING_FLAGS)
    assert set(info["cpu_flags"]) <= hardware.cpu_flags()
    assert info["cpu_native_bf16"] == hardware.cpu_native_bf16()
    assert info["logical_cores"] == os.cpu_count()
    if hasattr(os, "getloadavg"):
        assert info["load_1min"] >= 0


def test_bf16_speedup_follows_the_fastest_native_bf16_unit():
    assert hardware.bf16_speedup(frozenset({"avx2", "avx512_bf16", "amx_bf16", "amx_tile"})) == 3.5
    assert hardware.bf16_speedup(frozenset({"avx2", "avx512f", "avx512_bf16"})) == 2.0
    assert hardware.bf16_speedup(frozenset({"avx2", "fma"})) == 1.0


def test_the_environment_overrides_the_native_bf16_detection(monkeypatch):
    monkeypatch.setenv("MUONKIT_CPU_NATIVE_BF16", "0")
    assert not hardware.cpu_native_bf16()
    monkeypatch.setenv("MUONKIT_CPU_NATIVE_BF16", "1")
    assert hardware.cpu_native_bf16()
    assert not hardware.cpu_native_bf16(frozenset({"avx2"}))  # explicit flags win
    monkeypatch.setenv("MUONKIT_CPU_NATIVE_BF16", "yes")
    with pytest.raises(ValueError, match="MUONKIT_CPU_NATIVE_BF16"):
        hardware.cpu_native_bf16()
