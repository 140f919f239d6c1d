"""What several bench sections share: the machine's description, alternating measurements (A B A B ...), and a
class-balanced CIFAR-10 subset."""
from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any, Callable


def machine() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    out = {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "python": platform.python_version(), "platform": platform.platform()}
    if torch.cuda.is_available():
        from ablations.bench.gpu import gpu_machine

        out.update(gpu_machine())
    return out


def alternate(fns: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Call each function once per round, in alternating order; collect their results."""
    out: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            out[name].append(fns[name]())
    return out


def data_subset(per_class: int, val_size: int = 500, test_per_class: int = 100):
    from pipeline import data as D

    return D.make_splits(D.load("auto"), val_size=val_size, split_seed=0, train_per_class=per_class,
                         test_per_class=test_per_class)
