"""What this machine can do, for every stage that runs torch: threads and native bf16.

A shared piece below the stages: pairing, personas, train, the NLI, chat and the local backend
all ask here instead of reaching into one another.
"""

from __future__ import annotations

import os


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def set_torch_threads(threads: int | None) -> int:
    """Threads for torch: explicit, else the usable cores (two processes sharing them slow each
    other down many times over, so tests and benches pass 1 when they run side by side)."""
    import torch

    n = threads or usable_cores()
    torch.set_num_threads(n)
    return n


def native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AMX or AVX512-BF16). Without it, bf16
    is emulated and slower than float32."""
    import torch

    try:
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except AttributeError:  # an older torch without the probes: assume not
        return False
