"""What this machine offers, for adverts: NVIDIA GPUs through NVML when
present (name, VRAM, driver), else the CPU; cores and RAM always."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from p2p import wire

log = logging.getLogger("inferad.hardware")


def probe() -> wire.Hardware:
    return wire.Hardware(cpu=_cpu_model(), cores=os.cpu_count() or 1, ram_mb=_ram_mb(), gpus=tuple(_gpus()))


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()[:256]
    except OSError:
        pass
    import platform

    return (platform.processor() or platform.machine() or "unknown")[:256]


def _ram_mb() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1 << 20)
    except (ValueError, OSError):
        return 0


def available_ram_bytes() -> int:
    """RAM the kernel can hand out now without swapping (Linux MemAvailable: free memory plus
    reclaimable caches), else the free pages; 0 if unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # the kernel writes kB, meaning KiB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError):
        return 0


def free_vram_bytes() -> int:
    """Free memory summed over the NVIDIA GPUs (llama.cpp splits layers across all of them); 0 without NVML."""
    try:
        import pynvml
    except ImportError:
        return 0
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return 0
    try:
        return sum(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(i)).free
                   for i in range(pynvml.nvmlDeviceGetCount()))
    except pynvml.NVMLError as exc:
        log.warning("NVML found a driver but could not read free GPU memory: %s", exc)
        return 0
    finally:
        pynvml.nvmlShutdown()


def _gpus() -> list[wire.Gpu]:
    """NVIDIA GPUs via NVML; none (not an error) where there is no driver or library."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return []  # no NVIDIA driver: a CPU node
    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append(wire.Gpu(name=_text(pynvml.nvmlDeviceGetName(handle))[:128],
                                 vram_mb=memory.total // (1 << 20), driver=driver[:64]))
        return gpus
    except pynvml.NVMLError as exc:
        log.warning("NVML found a driver but could not list GPUs: %s", exc)
        return []
    finally:
        pynvml.nvmlShutdown()


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
