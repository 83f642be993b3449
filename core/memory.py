"""Memory: live readings for step events and gauges."""

from __future__ import annotations

import os

GB = 1e9


def readings() -> dict[str, float]:
    """Process RSS, MLX active/peak memory and system memory, in GB."""
    import mlx.core as mx
    import psutil

    vm = psutil.virtual_memory()
    return {
        "rss_gb": round(psutil.Process(os.getpid()).memory_info().rss / GB, 3),
        "mlx_active_gb": round(mx.get_active_memory() / GB, 3),
        "peak_memory_gb": round(mx.get_peak_memory() / GB, 3),
        "sys_used_gb": round((vm.total - vm.available) / GB, 3),
        "sys_available_gb": round(vm.available / GB, 3),
        "sys_total_gb": round(vm.total / GB, 3),
    }
