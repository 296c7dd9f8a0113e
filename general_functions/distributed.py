"""Data-parallel training across processes: ``torchrun`` detection, DDP wrapping and the collectives.

Launch any entry script with ``torchrun --nproc_per_node N script.py ...`` (and ``--nnodes``,
``--node_rank``, ``--rdzv_endpoint`` across machines). torchrun sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init_distributed` sees them and joins the
process group (NCCL on CUDA, gloo on CPU), one process per GPU. Without torchrun every helper here is a
no-op, so the scripts run unchanged.

The recipe the trainers follow::

    ctx = init_distributed(cfg.device)            # rank, world size, this process's device
    loader = make_loader(..., batch_size=cfg.batch_size, rank=ctx.rank, world_size=ctx.world_size)
    model = wrap_model(model, ctx)                 # DistributedDataParallel when world_size > 1
    ... train: gradients are averaged by DDP; metrics via reduce_meters(meters)
    sync_buffers(model); validate(unwrap(model), ...)
    if ctx.is_main: write logs, TensorBoard, checkpoints (of unwrap(model))
    cleanup_distributed(ctx)

``batch_size`` stays the *global* batch: each of the N processes takes its 1/N share of every global
batch (see :func:`general_functions.dataloaders.make_loader`), so step i of an N-process run sees the
same images as step i of a one-process run, and DDP's averaged gradient is the one-process gradient
(up to batch-norm statistics, which each process computes on its own share).
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .utils import AverageMeter, get_rng_state, resolve_device, set_rng_state

__all__ = [
    "run_in_context",
    "DistContext",
    "all_reduce_grads",
    "all_reduce_sum",
    "barrier",
    "broadcast_object",
    "broadcast_tensors",
    "cleanup_distributed",
    "env_rank",
    "exit_with_parent",
    "gather_rng_states",
    "get_context",
    "init_distributed",
    "launched_by_torchrun",
    "local_main_first",
    "max_divergence",
    "reduce_meters",
    "restore_rng_states",
    "run_on_main",
    "sync_buffers",
    "sync_rng_state",
    "unwrap",
    "wrap_model",
]

logger = logging.getLogger(__name__)

_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
DEFAULT_TIMEOUT_MIN = 10.0
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: its rank among ``world_size`` processes and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None  # "nccl" | "gloo" when a process group is up
    owns_group: bool = False  # True when init_distributed created the group (and cleanup ends it)

    @property
    def enabled(self) -> bool:
        """True when more than one process trains together."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes logs, TensorBoard, checkpoints and architectures."""
        return self.rank == 0

    def describe(self, batch_size: int) -> str:
        """One log line: the processes and each one's share of a global batch of ``batch_size``."""
        return (
            f"data-parallel: {self.world_size} processes ({self.backend}), "
            f"{batch_size // self.world_size} images per process of each global batch of {batch_size}"
        )


def launched_by_torchrun() -> bool:
    """True when torchrun (or anything that sets its variables) started this process."""
    return all(name in os.environ for name in _TORCHRUN_VARS)


def env_rank() -> int:
    """The global rank torchrun gave this process (0 when not launched by torchrun).

    For one-process jobs (sampling, latency tables) started under torchrun: only rank 0 works.
    """
    return _env_int("RANK") if launched_by_torchrun() else 0


def _env_int(name: str) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value)
    except ValueError:
        raise RuntimeError(f"environment variable {name}={value!r} is not an integer") from None


def exit_with_parent() -> str:
    """Make this process end when its parent (torchrun's agent) dies; returns how.

    torchrun starts each worker in a session of its own, so killing torchrun's process group does not
    reach the workers, and a worker blocked in a collective would wait for its timeout. On Linux the
    kernel sends this process SIGKILL when the parent dies (``prctl(PR_SET_PDEATHSIG)``), which also
    ends a stopped process; elsewhere a daemon thread checks the parent's id every second.
    """
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
                if os.getppid() != parent:  # the parent died before the call took effect
                    os._exit(1)
                return "prctl"
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()
    return "thread"


def init_distributed(device: str = "auto", timeout_min: float = DEFAULT_TIMEOUT_MIN) -> DistContext:
    """Join the process group when launched by torchrun; otherwise a one-process context.

    ``device`` is the ``--device`` flag (``auto|cpu|cuda``). On CUDA each process takes GPU
    ``LOCAL_RANK`` and the backend is NCCL; on the CPU it is gloo. ``timeout_min`` bounds how long a
    collective waits for the other processes (a hung or stopped process fails the job after it).
    If a process group already exists (a caller set one up), it is used and left open.
    A worker started by torchrun ends when torchrun dies (:func:`exit_with_parent`).
    """
    if "TORCHELASTIC_RUN_ID" in os.environ:  # set by torchrun's agent for its workers only
        exit_with_parent()
    base = resolve_device(device)
    if not launched_by_torchrun() or _env_int("WORLD_SIZE") <= 1:
        if base.type == "cuda" and base.index is None and launched_by_torchrun():
            base = torch.device("cuda", _env_int("LOCAL_RANK"))
        return DistContext(device=base)
    rank, world_size, local_rank = (_env_int(n) for n in _TORCHRUN_VARS)
    if base.type == "cuda":
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise RuntimeError(
                f"process with LOCAL_RANK {local_rank} needs GPU {local_rank}, but this machine shows "
                f"{count} GPU(s): start at most {count} processes per node (--nproc_per_node)"
            )
        base = torch.device("cuda", local_rank)
        torch.cuda.set_device(base)
    backend = "nccl" if base.type == "cuda" else "gloo"
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(
            backend,
            timeout=datetime.timedelta(minutes=timeout_min),
            rank=rank,
            world_size=world_size,
        )
    else:
        backend = dist.get_backend()
    ctx = DistContext(rank, world_size, local_rank, base, backend, owns)
    logger.info(
        "rank %d of %d (local rank %d) on %s, backend %s",
        rank,
        world_size,
        local_rank,
        base,
        backend,
    )
    return ctx


def run_in_context(run_fn, cfg, device: str = "auto", timeout_min: float = DEFAULT_TIMEOUT_MIN):
    """``run_fn(cfg, ctx)`` inside this process's distributed context, then a barrier and clean-up.

    Without torchrun the context is a one-process no-op. The barrier makes sure rank 0 has written its
    files before any process returns.
    """
    if not timeout_min > 0:
        raise ValueError(f"--dist_timeout_min must be positive (got {timeout_min})")
    ctx = init_distributed(device, timeout_min)
    try:
        result = run_fn(cfg, ctx)
        barrier()
        return result
    finally:
        cleanup_distributed(ctx)


def cleanup_distributed(ctx: DistContext) -> None:
    """Leave the process group if :func:`init_distributed` created it."""
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def get_context() -> DistContext:
    """The context of an already initialised group (rank 0 of 1 without one); device left as CPU."""
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), backend=dist.get_backend())
    return DistContext()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _comm_device() -> torch.device:
    """NCCL moves only CUDA tensors; gloo only CPU ones."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    if _active():
        dist.barrier()


@contextlib.contextmanager
def local_main_first(ctx: DistContext) -> Iterator[None]:
    """Run the block on local rank 0 of every node first, then on the other ranks.

    For work that must not race on a node's disk, such as downloading a data set.
    """
    if ctx.enabled and ctx.local_rank != 0:
        dist.barrier()
    try:
        yield
    finally:
        if ctx.enabled and ctx.local_rank == 0:
            dist.barrier()


# ----------------------------------------------------------------------------------- the model
def wrap_model(
    model: nn.Module,
    ctx: DistContext,
    ignore: Iterable[nn.Parameter] = (),
    sync_bn: bool = False,
    find_unused_parameters: bool = False,
) -> nn.Module:
    """``DistributedDataParallel(model)`` when ``ctx.enabled``, else ``model`` itself.

    Args:
        ignore: parameters DDP must leave alone (no bucket, no hook, no broadcast): the caller keeps
            them in step itself, e.g. the supernet's thetas with :func:`broadcast_tensors` and
            :func:`all_reduce_grads`.
        sync_bn: convert every BatchNorm to ``SyncBatchNorm`` (statistics over the global batch;
            CUDA only in PyTorch).
        find_unused_parameters: needed when a forward pass can leave some (non-ignored) parameters
            without a gradient; it costs a graph traversal per step, so it is off by default.
    DDP broadcasts rank 0's parameters and buffers when it is built, so all ranks start equal.
    """
    if not ctx.enabled:
        return model
    if sync_bn:
        if ctx.device.type != "cuda":
            raise ValueError("sync_bn needs CUDA: PyTorch's SyncBatchNorm has no CPU kernel")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ignored = {id(p) for p in ignore}
    if ignored:
        names = [n for n, p in model.named_parameters() if id(p) in ignored]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, names)
        broadcast_tensors([p.data for n, p in model.named_parameters() if id(p) in ignored])
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(
        model, device_ids=device_ids, find_unused_parameters=find_unused_parameters
    )


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside a DDP wrapper (for ``state_dict``, evaluation, attribute access)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def broadcast_tensors(tensors: Iterable[torch.Tensor], src: int = 0) -> None:
    """Overwrite ``tensors`` in place with rank ``src``'s values (one flat message per dtype)."""
    tensors = list(tensors)
    if not _active() or not tensors:
        return
    dev = _comm_device()
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t)
    for group in by_dtype.values():
        flat = torch.cat([t.detach().reshape(-1).to(dev) for t in group])
        dist.broadcast(flat, src)
        offset = 0
        with torch.no_grad():
            for t in group:
                n = t.numel()
                t.copy_(flat[offset : offset + n].view_as(t))
                offset += n


def sync_buffers(model: nn.Module, src: int = 0) -> None:
    """Give every rank rank ``src``'s buffers (batch-norm running statistics).

    Each rank updates its running statistics from its own share of the batch; DDP copies rank 0's
    at the start of each forward pass. Call this before evaluating or checkpointing, so all ranks
    hold the statistics rank 0 saves.
    """
    broadcast_tensors(list(unwrap(model).buffers()), src)


def all_reduce_grads(params: Iterable[nn.Parameter]) -> None:
    """Average the gradients of ``params`` over the ranks (one all-reduce of one flat buffer).

    For parameters that DDP does not handle (see ``wrap_model(ignore=...)``). A parameter without a
    gradient on some ranks counts as zero there; one without a gradient on every rank keeps ``None``.
    """
    params = [p for p in params if p.requires_grad]
    if not _active() or not params:
        return
    dev = _comm_device()
    parts = []
    for p in params:
        g = p.grad if p.grad is not None else torch.zeros_like(p)
        parts.append(g.detach().reshape(-1).to(dev, torch.float32))
    has_grad = torch.tensor([float(p.grad is not None) for p in params], device=dev)
    flat = torch.cat([*parts, has_grad])
    dist.all_reduce(flat)
    flat[: -len(params)] /= dist.get_world_size()
    offset = 0
    for i, p in enumerate(params):
        n = p.numel()
        if flat[-len(params) + i] > 0:
            g = flat[offset : offset + n].view_as(p).to(p.device, p.dtype)
            if p.grad is None:
                p.grad = g.clone()
            else:
                p.grad.copy_(g)
        offset += n


# ----------------------------------------------------------------------------------- values
def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """The sum over ranks of a tensor (a copy; ``values`` itself when running alone)."""
    if not _active():
        return values
    dev = values.device
    out = values.detach().to(_comm_device(), torch.float64).clone()
    dist.all_reduce(out)
    return out.to(dev)


def reduce_meters(meters: Mapping[str, AverageMeter]) -> dict[str, float]:
    """Averages of ``meters`` over the samples of every rank (alone: each meter's ``avg``).

    Each meter holds a sum and a count, so ranks that saw different numbers of samples are weighted
    correctly, and top-1 accuracy becomes the accuracy over every image any rank saw.
    """
    if not _active():
        return {k: m.avg for k, m in meters.items()}
    keys = list(meters)
    stats = torch.tensor([[meters[k].sum, meters[k].count] for k in keys], dtype=torch.float64)
    stats = all_reduce_sum(stats)
    return {k: float(s / max(c, 1.0)) for k, (s, c) in zip(keys, stats.tolist())}


def run_on_main(ctx: DistContext, fn: Callable[[], object]):
    """``fn()`` on rank 0, its result on every rank; an exception it raises is raised on every rank.

    For work only rank 0 does (making the run folder) whose failure the other ranks must hear of, rather
    than wait for it in the next collective.
    """
    result = error = None
    if ctx.is_main:
        try:
            result = fn()
        except Exception as err:  # re-raised below, on every rank
            error = err
    result, error = broadcast_object((result, error))
    if error is not None:
        raise error
    return result


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s ``obj`` on every rank (any picklable object: a run name, a table)."""
    if not _active():
        return obj
    box = [obj if dist.get_rank() == src else None]
    dist.broadcast_object_list(box, src, device=_comm_device())
    return box[0]


def max_divergence(tensors: Iterable[torch.Tensor]) -> float:
    """Largest ``max - min`` over ranks of any element of ``tensors`` (0.0 when in step or alone)."""
    tensors = list(tensors)
    if not _active() or not tensors:
        return 0.0
    dev = _comm_device()
    flat = torch.cat([t.detach().reshape(-1).to(dev, torch.float64) for t in tensors])
    high, low = flat.clone(), flat.clone()
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    return float((high - low).max()) if flat.numel() else 0.0


def sync_rng_state(src: int = 0, per_rank: bool = False) -> None:
    """Give every rank rank ``src``'s torch RNG state (CPU, and the current GPU's on CUDA).

    The supernet draws one Gumbel sample per layer for the whole batch from the global RNG; with the
    same state and the same draws on every rank, every rank draws the same sample, so all ranks train
    the same mixture. Called at the start of each phase, it also undoes any drift (a rank-0-only draw,
    an evaluation with a different number of batches).

    ``per_rank``: then give each rank its own stream derived from the shared state, for noise drawn per
    example (``--per_sample``), which should differ between the examples of different ranks.
    """
    if not _active():
        return
    states = [torch.get_rng_state()]
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states.append(torch.cuda.get_rng_state())
    dev = _comm_device()
    for i, state in enumerate(states):
        t = state.to(dev)
        dist.broadcast(t, src)
        if i == 0:
            torch.set_rng_state(t.cpu())
        else:
            torch.cuda.set_rng_state(t.cpu())
    if per_rank:
        base = int(torch.randint(2**62, (1,)))  # the same draw on every rank...
        torch.manual_seed(base + dist.get_rank())  # ...then one stream per rank


def gather_rng_states() -> list[dict]:
    """Every rank's RNG states (:func:`~general_functions.utils.get_rng_state`), in rank order.

    A collective: every rank calls it; rank 0 puts the list in its checkpoint so that a resumed run
    gives each rank its own stream back.
    """
    state = get_rng_state()
    if not _active():
        return [state]
    states: list = [None] * dist.get_world_size()
    dist.all_gather_object(states, state)
    return states


def restore_rng_states(ctx: DistContext, rank0_state: dict, all_states: list | None = None) -> None:
    """Resume each rank's RNG: its own saved state when the run had as many processes, else rank 0's
    state shifted by the rank (a checkpoint from a run with another number of processes)."""
    if all_states and len(all_states) == ctx.world_size:
        set_rng_state(all_states[ctx.rank])
        return
    set_rng_state(rank0_state)
    if ctx.rank:
        torch.manual_seed(int(torch.randint(2**62, (1,))) + ctx.rank)
