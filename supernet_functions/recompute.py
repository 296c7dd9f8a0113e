"""Activations computed again in the backward pass instead of kept: less memory, the same gradients.

A weight step of the soft supernet keeps, for its backward pass, the activations of all nine candidate
ops of every layer. Two kinds of them are cheap to compute again from tensors the pass keeps anyway:

- the output of BN + ReLU, ``relu(alpha * c + beta)``, from the BN input ``c`` (which BN keeps for its
  own backward pass) and two per-channel vectors: one elementwise pass (:class:`BatchNormReLU2d`);
- the output of an expansion (1x1) convolution, which is such a BN's input
  (:func:`~supernet_functions.speed.pointwise_conv2d`), from the layer's input: one convolution or
  GEMM with a narrow input.

Inside :func:`recomputing` (``torch.autograd.graph.saved_tensors_hooks``), a tensor that autograd saves
for the backward pass and that :func:`remember` marked is stored as its recipe instead. The backward
pass computes it when it is first needed, keeps it while other saved copies of it wait to be used and
then drops it. Recipes chain: the BN input of an expansion conv is itself a recomputed GEMM output.

The arithmetic is the forward pass's: a convolution is the same call on the same tensors;
BN + ReLU is computed as ``addcmul`` from the batch's saved mean and inverse deviation, which can differ
from the library's fused BN kernel in the last bit (``tests/test_recompute.py`` compares gradients).
A tensor used by a recipe and modified in place before the backward pass raises, as autograd does for
the tensors it saves; a marked tensor modified in place after it was marked is saved as usual.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "BatchNormReLU2d",
    "batch_norm_relu",
    "fuse_bn_relu",
    "is_recomputing",
    "recomputing",
    "remember",
]

_ATTR = "_fbnet_recipe"
_state = threading.local()


def _active() -> bool:
    return getattr(_state, "active", False)


def is_recomputing() -> bool:
    """True inside :func:`recomputing` with gradients enabled: :func:`remember` takes effect."""
    return _active() and torch.is_grad_enabled()


class _Recipe:
    """``fn(*inputs)`` under ``no_grad``: one base tensor, computed again on demand.

    ``pending`` counts the saved copies not yet unpacked; the computed value is kept while some wait.
    """

    __slots__ = ("fn", "inputs", "version", "size", "stride", "value", "pending")

    def __init__(self, fn: Callable, inputs: tuple, base: torch.Tensor, version: int) -> None:
        self.fn = fn
        self.inputs = tuple(_source(t) for t in inputs)
        self.version = version
        self.size, self.stride = base.size(), base.stride()
        self.value = None
        self.pending = 0

    def get(self) -> torch.Tensor:
        if self.value is not None:
            return self.value
        args = [s.tensor() if isinstance(s, _View) else _checked(s) for s in self.inputs]
        with torch.no_grad():
            value = self.fn(*args)
        if value.stride() != self.stride:  # the forward's layout, for the views saved of it
            value = torch.empty_strided(
                self.size, self.stride, dtype=value.dtype, device=value.device
            ).copy_(value)
        if self.pending > 0:
            self.value = value
        return value

    def release(self) -> None:
        self.pending -= 1
        if self.pending <= 0:
            self.value = None


class _View:
    """A view (size, stride, offset) of a recipe's base tensor."""

    __slots__ = ("recipe", "size", "stride", "offset")

    def __init__(self, recipe: _Recipe, t: torch.Tensor, base: torch.Tensor) -> None:
        self.recipe = recipe
        self.size, self.stride = t.size(), t.stride()
        self.offset = t.storage_offset() - base.storage_offset()

    def tensor(self) -> torch.Tensor:
        return self.recipe.get().as_strided(self.size, self.stride, self.offset)


def _recipe_of(t: torch.Tensor) -> tuple[_Recipe | None, torch.Tensor]:
    base = t if t._base is None else t._base
    recipe = getattr(base, _ATTR, None)
    if recipe is None or base._version != recipe.version or t.dtype != base.dtype:
        return None, base
    return recipe, base


def _source(t):
    """A recipe input: a view of another recipe, or the tensor (detached) with its version now."""
    if not isinstance(t, torch.Tensor):
        return (t, None)
    recipe, base = _recipe_of(t)
    if recipe is not None:
        return _View(recipe, t, base)
    return (t.detach(), t._version)


def _checked(source) -> torch.Tensor:
    t, version = source
    if version is not None and t._version != version:
        raise RuntimeError(
            "a tensor needed to recompute an activation for the backward pass was modified in "
            "place after the forward pass (run without activation recomputation, "
            "--recompute False, to keep the activations instead)"
        )
    return t


def remember(output: torch.Tensor, fn: Callable, *inputs, inplace_ops: int = 0) -> None:
    """Mark ``output`` (a base tensor) as ``fn(*inputs)``, to be recomputed rather than saved.

    Does nothing outside :func:`recomputing`, without gradients, or under autocast (the backward pass
    would recompute in another precision). ``inplace_ops``: the in-place operations about to run on
    ``output`` that the recipe already includes (a ReLU applied in place); the saved copies are those
    of the tensor after them.
    """
    if (
        not _active()
        or not torch.is_grad_enabled()
        or not output.requires_grad
        or output._base is not None
        or torch.is_autocast_enabled(output.device.type)
    ):
        return
    setattr(output, _ATTR, _Recipe(fn, inputs, output, output._version + inplace_ops))


def _pack(t: torch.Tensor):
    recipe, base = _recipe_of(t)
    if recipe is None:
        return t
    recipe.pending += 1
    return _View(recipe, t, base)


def _unpack(saved) -> torch.Tensor:
    if isinstance(saved, torch.Tensor):
        return saved
    t = saved.tensor()
    saved.recipe.release()
    return t


@contextlib.contextmanager
def recomputing(enabled: bool = True) -> Iterator[None]:
    """Within: tensors marked by :func:`remember` are saved for backward as recipes (module docstring)."""
    if not enabled or _active():
        yield
        return
    _state.active = True
    try:
        with torch.autograd.graph.saved_tensors_hooks(_pack, _unpack):
            yield
    finally:
        _state.active = False


def _affine_relu(c: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    return torch.addcmul(beta, c, alpha).relu_()


class BatchNormReLU2d(nn.BatchNorm2d):
    """``BatchNorm2d`` followed by ``ReLU``, whose output is recomputed in the backward pass.

    The same parameters, buffers and ``state_dict`` as the ``BatchNorm2d`` it replaces, and the same
    result. In training mode inside :func:`recomputing`, the output is marked as
    ``relu(alpha * c + beta)`` with ``alpha = gamma / sigma`` and ``beta = b - mu * alpha`` of this
    batch, so the convolution after it does not keep it. Running statistics are updated once, in the
    forward pass, as ``nn.BatchNorm2d`` updates them.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            not (self.training and is_recomputing())
            or torch.is_autocast_enabled(x.device.type)
            or (self.weight is not None and x.dtype != self.weight.dtype)
        ):
            return F.relu(super().forward(x), inplace=True)
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # a cumulative moving average
                momentum = 1.0 / float(self.num_batches_tracked)
        return batch_norm_relu(
            x, self.weight, self.bias, self.running_mean, self.running_var, momentum, self.eps
        )


def batch_norm_relu(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    momentum: float,
    eps: float,
) -> torch.Tensor:
    """``relu(F.batch_norm(x, ..., training=True))``, its output marked as ``relu(alpha * x + beta)``
    with this batch's ``alpha = gamma / sigma`` and ``beta = b - mu * alpha`` (:func:`remember`).

    The running statistics are updated here, once, as ``F.batch_norm`` updates them.
    """
    y, mean, invstd = torch.native_batch_norm(
        x, weight, bias, running_mean, running_var, True, momentum, eps
    )
    with torch.no_grad():
        alpha = invstd if weight is None else invstd * weight
        beta = -mean * alpha if bias is None else bias - mean * alpha
    shape = (1, -1) + (1,) * (x.dim() - 2)
    remember(y, _affine_relu, x, alpha.view(shape), beta.view(shape), inplace_ops=1)
    return y.relu_()


def fuse_bn_relu(model: nn.Module) -> list[nn.Module | None]:
    """Turn every ``BatchNorm2d`` followed by a ``ReLU`` in an ``nn.Sequential`` of ``model`` into a
    :class:`BatchNormReLU2d` (the same object, parameters and names) and the ``ReLU`` into an
    ``nn.Identity``, in place. Returns the module before each fused BN (None where it is first).
    """
    before = []
    for seq in list(model.modules()):
        if not isinstance(seq, nn.Sequential):
            continue
        for i in range(len(seq) - 1):
            if type(seq[i]) is nn.BatchNorm2d and type(seq[i + 1]) is nn.ReLU:
                seq[i].__class__ = BatchNormReLU2d
                seq[i + 1] = nn.Identity()
                before.append(seq[i - 1] if i > 0 else None)
    return before
