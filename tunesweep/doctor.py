"""`tunesweep doctor`: what this machine has, and what `auto` would pick."""

from __future__ import annotations

import platform

from typing import Optional

from .backends import cuda_visible, pick_generation_backend, pick_train_backend
from .provenance import PACKAGES, package_version


def doctor_report(ray_address: Optional[str] = None) -> str:
    lines = [f"python        {platform.python_version()} ({platform.machine()})"]
    for name in PACKAGES:
        lines.append(f"{name:<13} {package_version(name) or 'not installed'}")
    cuda = cuda_visible()
    if cuda:
        import torch

        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        lines.append(f"CUDA          visible: {names}")
    else:
        lines.append("CUDA          not visible")
    from .cluster import cluster_summary

    lines.append(f"ray           {cluster_summary(ray_address)}")
    train, why_train = pick_train_backend("auto")
    gen, why_gen = pick_generation_backend("auto")
    lines.append(f"train   auto -> {train} ({why_train})")
    lines.append(f"generate auto -> {gen} ({why_gen})")
    return "\n".join(lines)
