"""``--gpus`` parsing, the reserve per GPU, and detection through NVML or torch.cuda (faked)."""

from __future__ import annotations

import sys
import types
from typing import Any

import pytest

from seedx.placement.inventory import (
    GB,
    GIB,
    GPU_RESERVE_FIXED_BYTES,
    GPU_RESERVE_FRACTION,
    MIB,
    Gpu,
    detect,
    format_spec,
    parse_gpus,
)


def test_counts_sizes_and_indices_in_the_order_written() -> None:
    gpus = parse_gpus("2x24GB,1x80GB:h100, 1x141GB:fp8")
    assert [g.index for g in gpus] == [0, 1, 2, 3]
    assert [g.total_bytes for g in gpus] == [24 * GB, 24 * GB, 80 * GB, 141 * GB]
    assert [g.fp8 for g in gpus] == [False, False, True, True]
    assert [g.name for g in gpus] == ["24GB", "24GB", "H100 80GB", "141GB"]


@pytest.mark.parametrize(
    ("spec", "total"),
    [
        ("80GB", 80 * GB),
        ("1x80GiB", 80 * GIB),
        ("1x81559MiB", 81559 * MIB),
        ("1X24gb", 24 * GB),
        ("1x1500MB", 1500 * 10**6),
        ("1x23.5GB", int(23.5 * GB)),
    ],
)
def test_units(spec: str, total: int) -> None:
    assert parse_gpus(spec)[0].total_bytes == total


@pytest.mark.parametrize(
    ("spec", "fp8"),
    [("1x24GB", False), ("1x24GB:l4", True), ("1x80GB:a100", False), ("1x80GB:H100", True)],
)
def test_fp8_is_stated_never_guessed_from_the_size(spec: str, fp8: bool) -> None:
    assert parse_gpus(spec)[0].fp8 is fp8


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("", "give items"),
        ("2x24GB,,1x80GB", "give items"),
        ("1x80", "SIZE UNIT"),
        ("1x80TB", "SIZE UNIT"),
        ("0x80GB", "count >= 1"),
        ("1x0.5GB", "above 1 GiB"),
        ("1x80GB:tpu", "unknown tag 'tpu'"),
        ("1x80GB:a100:fp8", "a100 has no fp8"),
        ("1x80GB:h100:a100", "two GPU models"),
        ("65x80GB", "at most 64"),
    ],
)
def test_bad_specs_say_what_is_wrong(spec: str, words: str) -> None:
    with pytest.raises(ValueError, match="--gpus") as error:
        parse_gpus(spec)
    assert words in str(error.value)


def test_reserve_is_one_gib_plus_three_percent() -> None:
    gpu = Gpu(0, "80GB", 80 * GB)
    assert GPU_RESERVE_FIXED_BYTES == GIB
    assert GPU_RESERVE_FRACTION == 0.03
    assert gpu.reserved_bytes == GIB + int(80 * GB * 0.03)
    assert gpu.usable_bytes == 80 * GB - GIB - int(2.4 * GB)


def test_format_spec_parses_back() -> None:
    gpus = parse_gpus("2x24GB:fp8,1x81559MiB,1x141GB")
    assert format_spec(gpus) == "2x24GB:fp8,1x81559MiB,1x141GB"
    again = parse_gpus(format_spec(gpus))
    assert [(g.total_bytes, g.fp8) for g in again] == [(g.total_bytes, g.fp8) for g in gpus]


# -- detection --------------------------------------------------------------------------------


def _fake_pynvml(devices: list[tuple[str, int, tuple[int, int]]], fail: bool = False) -> Any:
    module: Any = types.ModuleType("pynvml")
    calls: list[str] = []

    def init() -> None:
        if fail:
            raise RuntimeError("NVML Shared Library Not Found")
        calls.append("init")

    module.nvmlInit = init
    module.nvmlShutdown = lambda: calls.append("shutdown")
    module.nvmlDeviceGetCount = lambda: len(devices)
    module.nvmlDeviceGetHandleByIndex = lambda i: i
    module.nvmlDeviceGetName = lambda h: devices[h][0].encode()
    module.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(total=devices[h][1])
    module.nvmlDeviceGetCudaComputeCapability = lambda h: devices[h][2]
    module.calls = calls
    return module


def test_detect_reads_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    nvml = _fake_pynvml(
        [
            ("NVIDIA A100-SXM4-80GB", 81920 * MIB, (8, 0)),
            ("NVIDIA H100 80GB HBM3", 81559 * MIB, (9, 0)),
        ]
    )
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    gpus = detect()
    assert gpus == [
        Gpu(0, "NVIDIA A100-SXM4-80GB", 81920 * MIB, False),
        Gpu(1, "NVIDIA H100 80GB HBM3", 81559 * MIB, True),
    ]
    assert nvml.calls == ["init", "shutdown"]


def test_detect_keeps_the_visible_devices_with_their_physical_indices(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    devices = [("L4", 23034 * MIB, (8, 9))] * 4
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml(devices))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,3")
    assert [g.index for g in detect()] == [1, 3]
    assert all(g.fp8 for g in detect())


def test_detect_falls_back_to_torch_and_finds_nothing_without_a_gpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml([], fail=True))
    torch: Any = types.ModuleType("torch")
    torch.cuda = types.SimpleNamespace(is_available=lambda: False)
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    assert detect() == []


def test_detect_through_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml raises ImportError
    props = [types.SimpleNamespace(name="NVIDIA L40S", total_memory=46068 * MIB, major=8, minor=9)]
    torch: Any = types.ModuleType("torch")
    torch.cuda = types.SimpleNamespace(
        is_available=lambda: True,
        device_count=lambda: 1,
        get_device_properties=lambda i: props[i],
    )
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")
    assert detect() == [Gpu(2, "NVIDIA L40S", 46068 * MIB, True)]
