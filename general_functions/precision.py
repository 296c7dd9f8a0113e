"""Mixed precision, one meaning for every trainer: ``--amp`` is bfloat16 autocast of the forward pass.

bfloat16 keeps float32's exponent range, so gradients do not underflow and no loss scaling
(``GradScaler``) is needed; the weights, the optimizer state and the loss stay float32. Autocast runs
on the run's device: on CUDA (Ampere and newer have bfloat16 arithmetic) and on the CPU, where the tests
run the same path; there it is slower than float32 on cores without bfloat16 instructions.
"""

from __future__ import annotations

import torch

__all__ = ["AMP_DTYPE", "autocast"]

AMP_DTYPE = torch.bfloat16


def autocast(device: torch.device, enabled: bool) -> torch.autocast:
    """The forward pass's context: bfloat16 autocast on ``device`` when ``enabled``, else float32."""
    return torch.autocast(device.type, dtype=AMP_DTYPE, enabled=enabled)
