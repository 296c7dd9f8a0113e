"""From a training checkpoint to a deployable file, checked against the checkpoint and timed.

    python architecture_main_file.py --export runs/architectures_training/<run>/best.pth \\
        --format exported_program --out fbnet_a.pt2

:func:`run_export` does, in order:

1. **The inference form** (:func:`inference_model`): the network rebuilt from the checkpoint's
   architecture and configuration, in eval mode, every BatchNorm folded into the conv before it
   (:func:`fold_batchnorm`), dropout removed, the conv weights channels_last (``--channels_last``).
   The input stays an ordinary NCHW tensor. Depthwise kernels stay whole: the trimmed kernels of
   :mod:`fbnet_building_blocks.trim_kernels` speed up training batches, but they are chosen for one input size, which a
   traced file would freeze, and they slow a batch-1 pass down (docs/export.md has both measurements).
2. **The file**, first written to a temporary file beside ``--out``: ``torch.export.export`` saved
   with ``torch.export.save`` (``exported_program``), ``torch.jit.trace`` (``torchscript``) or
   ``torch.onnx.export`` (``onnx``, run with onnxruntime). The batch dimension stays dynamic.
3. **The check**: the temporary file is loaded back, and its outputs on the first ``check_images``
   test images must equal the checkpoint's eval-mode outputs (the network exactly as the trainer builds
   it) within :data:`TOLERANCE`; otherwise nothing is written.
4. **int8** (``--quantize int8``, :func:`quantize_int8`): static post-training quantisation calibrated
   on training images; the published file is the int8 one, and its test top-1 and latency are
   reported against the fp32 file's.
5. **The latency**: the loaded file at batch 1, in interleaved rounds with the eager inference form,
   under ``torch.inference_mode`` with the latency table's thread count and allocator setting
   (:func:`~supernet_functions.latency.validate.measure_latencies`), next to the table's prediction for
   the architecture (paper Eq. 4: the sum of its ops' latencies plus the fixed parts).
6. **Publishing**: ``os.replace`` moves the checked file to ``--out`` (an existing file is never
   replaced), the report goes to ``OUT.json``, and the last stdout line is a JSON summary.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime as _dt
import importlib.util
import json
import logging
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fbnet_building_blocks.arch_specs import ArchSpec
from fbnet_building_blocks.fbnet_builder import get_model
from general_functions.checkpoint import CheckpointError, load_checkpoint
from general_functions.config_utils import config_from_dict
from general_functions.dataloaders import ImageSet, TensorImages, make_loader
from general_functions.io_utils import atomic_write_json, new_file_mode
from general_functions.logging_utils import get_logger
from supernet_functions.latency.measure import (
    device_name,
    load_average,
    num_threads,
    use_allocator,
)
from supernet_functions.latency.table import LatencyLookupTable, LUTError, default_lut_path
from supernet_functions.latency.validate import measure_latencies

from .config_for_arch import ArchTrainConfig, ExportConfig
from .run_state import STAGE
from .training_functions import build_model, input_normalization, load_data

__all__ = [
    "FORMATS",
    "TOLERANCE",
    "ExportError",
    "fold_batchnorm",
    "inference_model",
    "quantize_int8",
    "run_export",
]

logger = logging.getLogger(__name__)

# Largest |file output - checkpoint output| accepted on the check images (float32 logits; folding BN
# only reorders the arithmetic, which moves logits by about 1e-6).
TOLERANCE = 1e-4
_ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
_INSTALL_HINT = "pip install -r requirements-export.txt"


class ExportError(RuntimeError):
    """An export that cannot be done as asked (missing package, unsupported combination...)."""


# ----------------------------------------------------------------------------------- inference form
def fold_batchnorm(model: nn.Module) -> int:
    """Fold every eval-mode BatchNorm2d that follows a Conv2d in a Sequential into that conv, in place.

    BN computes ``gamma * (z - mu) / sqrt(var + eps) + beta`` on the conv's output ``z = W * x + b``,
    so with ``s = gamma / sqrt(var + eps)`` (per output channel) the pair is one conv with weight
    ``W * s`` and bias ``(b - mu) * s + beta``. The BN module is removed from its Sequential. Returns
    how many were folded; a BatchNorm2d left anywhere else is an error.
    """
    folded = 0
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        i = 0
        while i < len(seq) - 1:
            conv, bn = seq[i], seq[i + 1]
            if type(conv) is nn.Conv2d and isinstance(bn, nn.BatchNorm2d):
                seq[i] = _folded_conv(conv, bn)
                del seq[i + 1]
                folded += 1
            i += 1
    left = [name for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    if left:
        raise ExportError(f"BatchNorm2d layers not after a conv cannot be folded: {left}")
    return folded


def _folded_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """One conv computing ``bn(conv(x))`` in eval mode (float64 arithmetic, stored as float32)."""
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        bias=True,
        padding_mode=conv.padding_mode,
    )
    with torch.no_grad():
        fused.weight.copy_(conv.weight.double() * scale[:, None, None, None])
        fused.bias.copy_((bias - bn.running_mean.double()) * scale + bn.bias.double())
    return fused


def _remove_dropout(model: nn.Module) -> int:
    """Replace every dropout module (an identity in eval mode) by ``nn.Identity``; how many."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
    for name in names:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, nn.Identity())
    return len(names)


def inference_model(
    cfg: ArchTrainConfig,
    spec: ArchSpec,
    weights: dict[str, torch.Tensor],
    num_classes: int,
    channels_last: bool = True,
) -> tuple[nn.Module, dict[str, Any]]:
    """The deployable form of a trained network, and what was changed to get it.

    Built as ``cfg`` built it for training (head, depthwise BN, widths) but with full depthwise kernels
    (the checkpoint's parameter names are the same either way), then eval mode, BN folded, no dropout,
    and (``channels_last``) the weights in the channels_last layout.
    """
    model = get_model(
        spec,
        cnt_classes=num_classes,
        search_space=cfg.search_space or None,
        head_channels=cfg.head_channels or None,
        dropout=cfg.dropout,
        head=cfg.head,
        dw_bn_relu=cfg.dw_bn_relu,
    )
    model.load_state_dict(weights)
    model.eval()
    form = {
        "batchnorms_folded": fold_batchnorm(model),
        "dropouts_removed": _remove_dropout(model),
        "trimmed_kernels": False,
        "weights_layout": "channels_last" if channels_last else "contiguous (NCHW)",
    }
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, form


# ----------------------------------------------------------------------------------- formats
@dataclass(frozen=True)
class _Format:
    """How a format writes a module to a path and loads it back as a callable on torch tensors."""

    suffix: str  # the file name ending its loaders expect
    save: Callable[[nn.Module, torch.Tensor, Path], None]
    load: Callable[[Path, int], Callable[[torch.Tensor], torch.Tensor]]
    packages: tuple[str, ...] = ()


@contextlib.contextmanager
def _quiet(*categories: type[Warning], message: str = "") -> Iterator[None]:
    """Silence warnings of ``categories`` (whose text starts with ``message``) inside the block.

    For torch's notices about itself, which the export checks or states once instead: TorchScript's
    and torch.ao's deprecations (repeated for every module and call), the tracer's caution that a
    trace may not generalise (the file's outputs are checked on a batch other than the traced one).
    """
    with warnings.catch_warnings():
        for category in categories:
            warnings.filterwarnings("ignore", message=message, category=category)
        yield


def _save_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    """Traced, not scripted: the network has no data-dependent control flow, and the FX graph of an
    int8 network does not script (its generated code names a type TorchScript does not know)."""
    with _quiet(FutureWarning, torch.jit.TracerWarning), torch.no_grad():
        torch.jit.save(torch.jit.trace(model, example), str(path))


def _load_torchscript(path: Path, threads: int) -> Callable:
    with _quiet(FutureWarning):
        return torch.jit.load(str(path), map_location="cpu")


def _batch_dynamic() -> dict[str, dict[int, Any]]:
    """The batch dimension of ``FBNet.forward(x)`` is free; height and width are the example's."""
    return {"x": {0: torch.export.Dim("batch")}}


def _save_exported_program(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    program = torch.export.export(model, (example,), dynamic_shapes=_batch_dynamic())
    # torch.export.save warns that a channels_last weight does not cover its storage in order and
    # that it saves the storage whole "which may cause issues when weights are not on CPU"; they are
    # on the CPU, and the loaded weights are equal with the same strides
    with _quiet(UserWarning, message="No complete tensor found"):
        torch.export.save(program, str(path))


def _load_exported_program(path: Path, threads: int) -> Callable:
    return torch.export.load(str(path)).module()


def _save_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    import onnx

    program = torch.onnx.export(
        model,
        (example,),
        dynamo=True,
        dynamic_shapes=_batch_dynamic(),
        input_names=["images"],
        output_names=["logits"],
        verbose=False,
    )
    program.save(str(path), external_data=False)  # one file, weights inside
    onnx.checker.check_model(str(path))


def _load_onnx(path: Path, threads: int) -> Callable:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {name: x.contiguous().numpy()})[0])

    return run


FORMATS: dict[str, _Format] = {
    "exported_program": _Format(".pt2", _save_exported_program, _load_exported_program),
    "torchscript": _Format(".pt", _save_torchscript, _load_torchscript),
    "onnx": _Format(".onnx", _save_onnx, _load_onnx, _ONNX_PACKAGES),
}


def _check_packages(fmt: str) -> None:
    missing = [p for p in FORMATS[fmt].packages if importlib.util.find_spec(p) is None]
    if missing:
        raise ExportError(
            f"--format {fmt} needs the packages {', '.join(FORMATS[fmt].packages)}; missing: "
            f"{', '.join(missing)}. Install them with: {_INSTALL_HINT}"
        )


# ----------------------------------------------------------------------------------- int8
@contextlib.contextmanager
def _quantized_engine() -> Iterator[str]:
    """The CPU's int8 kernels (x86: fbgemm + oneDNN; else qnnpack) for the block, then the previous."""
    engines = torch.backends.quantized.supported_engines
    engine = next((e for e in ("x86", "qnnpack") if e in engines), None)
    if engine is None:
        raise ExportError(f"this torch build has no int8 CPU engine (it has {engines})")
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        yield engine
    finally:
        torch.backends.quantized.engine = previous


def quantize_int8(
    model: nn.Module, batches: Iterable[torch.Tensor], engine: str, fp32_last: int = 0
) -> tuple[nn.Module, list[str]]:
    """Static post-training int8 quantisation of an eval-mode :class:`FBNet` (FX graph mode).

    ``get_default_qconfig_mapping(engine)``: weights int8, symmetric, one scale per output channel;
    activations uint8 with one scale per tensor from histogram observers (7-bit range on x86,
    ``reduce_range``). The observers see ``batches`` (the calibration pass), then every conv (fused
    with the ReLU after it), the residual adds and the classifier run as int8 kernels; the input is
    quantised at the stem and the logits dequantised. ``fp32_last`` > 0 keeps the last that many
    searched blocks, the head and the classifier in float32. Returns the network (``model`` is left
    as it was) and the names of the parts kept in float32.
    """
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    mapping = get_default_qconfig_mapping(engine)
    n = len(model.blocks)
    kept = [f"blocks.{i}" for i in range(max(0, n - fp32_last), n)]
    kept += ["head", "classifier"] if fp32_last else []
    for name in kept:
        mapping.set_module_name(name, None)
    batches = list(batches)
    with _quiet(DeprecationWarning, UserWarning), torch.no_grad():
        prepared = prepare_fx(copy.deepcopy(model), mapping, (batches[0],))
        for x in batches:
            prepared(x)
        return convert_fx(prepared), kept


# ----------------------------------------------------------------------------------- the run
@dataclass
class _Job:
    """What an export works on: the checkpoint's run and network, the data, the check images."""

    state: dict[str, Any]
    run_cfg: ArchTrainConfig
    spec: ArchSpec
    space: str
    data: ImageSet
    model: nn.Module  # the inference form
    form: dict[str, Any]
    reference: nn.Module  # the checkpoint's eval-mode network as the trainer builds it
    check: list[tuple[torch.Tensor, torch.Tensor]]

    @property
    def input_size(self) -> int:
        return self.data.input_size

    @property
    def example(self) -> torch.Tensor:
        """Two images to trace with (a batch of 1 would make torch.export fix the batch size)."""
        x = self.check[0][0]
        return x[:2] if len(x) >= 2 else x.expand(2, -1, -1, -1).clone()


def _load_run(path: str) -> tuple[dict[str, Any], ArchTrainConfig, ArchSpec]:
    """The checkpoint of a training run, its configuration and its architecture."""
    state = load_checkpoint(path, stage=STAGE)
    missing = [k for k in ("model", "config", "arch_spec") if not isinstance(state.get(k), dict)]
    if missing:
        raise CheckpointError(f"checkpoint {path} has no {', '.join(missing)}: not a training run")
    spec = ArchSpec.from_dict(state["arch_spec"])
    return state, config_from_dict(ArchTrainConfig, state["config"]), spec


def _prepare(cfg: ExportConfig) -> _Job:
    """Load the checkpoint and the run's data; build the inference form and the reference."""
    state, run_cfg, spec = _load_run(cfg.export)
    trained_layout = run_cfg.channels_last
    run_cfg = dataclasses.replace(
        run_cfg, device="cpu", channels_last="off", data_dir=cfg.data_dir or run_cfg.data_dir
    )
    data = load_data(run_cfg)
    classes = state["model"]["classifier.weight"].shape[0]
    model, form = inference_model(run_cfg, spec, state["model"], classes, cfg.channels_last)
    reference_cfg = dataclasses.replace(run_cfg, channels_last=trained_layout)
    reference = build_model(reference_cfg, spec, classes, data.input_size, torch.device("cpu"))
    reference.load_state_dict(state["model"])
    return _Job(
        state=state,
        run_cfg=run_cfg,
        spec=spec,
        space=run_cfg.search_space or spec.search_space,
        data=data,
        model=model,
        form=form,
        reference=reference.eval(),
        check=_batches(data, run_cfg, "test", cfg.check_images, 64),
    )


def _first(source, n: int):
    if n >= len(source):
        return source
    if isinstance(source, TensorImages):
        return source.subset(torch.arange(n))
    return torch.utils.data.Subset(source, range(n))


def _batches(data: ImageSet, run_cfg: ArchTrainConfig, part: str, n: int, batch_size: int):
    """The first ``n`` images of the training (not augmented) or test part, normalised as in
    training: a list of ``(images, labels)`` batches."""
    mean, std = input_normalization(run_cfg, data)
    source = _first(data.train if part == "train" else data.test, n)
    loader = make_loader(
        source, batch_size, train=False, mean=mean, std=std, loader=run_cfg.loader, workers=0
    )
    return list(loader)


def _outputs(cfg: ExportConfig) -> tuple[Path, Path]:
    """``--out`` and its report's path (``OUT.json``); neither may exist yet."""
    if not cfg.out:
        raise ExportError("--export needs --out FILE: the file to write")
    out = Path(cfg.out)
    report = out.with_name(out.name + ".json")
    for path in (out, report):
        if path.exists():
            raise ExportError(
                f"{path} already exists; refusing to overwrite it (pick another --out)"
            )
    return out, report


def _lut_misfit(lut: LatencyLookupTable, job: _Job) -> str | None:
    """Why ``lut`` cannot predict this network at batch 1 on the CPU, or None when it can."""
    meta, head = lut.meta, job.model.classifier
    checks = [
        (lut.cost == "latency", f"it holds {lut.cost}, not latency"),
        (meta.get("device", "cpu") == "cpu", f"it was measured on {meta.get('device')}"),
        (meta.get("batch_size", 1) == 1, f"it was measured at batch {meta.get('batch_size')}"),
        (job.spec.width_mult == 1.0, f"the network has width multiplier {job.spec.width_mult}"),
        (
            meta.get("head_channels", head.in_features) == head.in_features,
            f"its head is {meta.get('head_channels')} wide, the network's {head.in_features}",
        ),
        (
            meta.get("cnt_classes", head.out_features) == head.out_features,
            f"it has {meta.get('cnt_classes')} classes, the network {head.out_features}",
        ),
    ]
    problems = [text for ok, text in checks if not ok]
    try:
        lut.check_compatible(job.space, job.input_size, sorted(set(job.spec.ops)))
        lut.predict(job.spec.ops)
    except (LUTError, KeyError) as err:
        problems.append(str(err.args[0] if err.args else err))
    return "; ".join(problems) or None


def _prediction(cfg: ExportConfig, job: _Job):
    """``(table, predicted ms, why there is none)``. The table is ``--lut_path``, which must fit, or
    else the committed one of the search space and input size, skipped with the reason when it does
    not fit."""
    if cfg.lut_path:
        lut = LatencyLookupTable.load(cfg.lut_path)
        problem = _lut_misfit(lut, job)
        if problem:
            raise LUTError(f"--lut_path {cfg.lut_path} cannot predict this network: {problem}")
        return lut, lut.predict(job.spec.ops), None
    size = job.input_size
    path = default_lut_path(job.space, size)
    if path is None:
        why = (
            f"no committed latency table for search space {job.space!r} at {size}x{size} "
            f"(luts/{job.space}_{size}_cpu.json); pass --lut_path to compare with one"
        )
        return None, None, why
    lut = LatencyLookupTable.load(path)
    problem = _lut_misfit(lut, job)
    if problem:
        return None, None, f"the committed table {path.name} does not fit this network: {problem}"
    return lut, lut.predict(job.spec.ops), None


def _shown(path: Path) -> str:
    """``path`` relative to the working folder when it lies inside it (reports name repository
    paths, not this machine's), else as it is."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _top1(fn: Callable, batches) -> float:
    correct = total = 0
    with torch.inference_mode():
        for images, labels in batches:
            correct += int((fn(images).argmax(1) == labels).sum())
            total += len(labels)
    return round(100.0 * correct / total, 3)


def _max_abs_diff(fn: Callable, reference: nn.Module, batches) -> float:
    with torch.inference_mode():
        return max((fn(x) - reference(x)).abs().max().item() for x, _ in batches)


class _TempFiles:
    """Temporary files beside ``--out`` (same file system, so publishing is one ``os.replace``);
    whatever is not published is removed on exit."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.paths = folder, []

    def __enter__(self) -> _TempFiles:
        self.folder.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(self, *exc) -> None:
        for path in self.paths:
            path.unlink(missing_ok=True)

    def export(self, fmt: str, model: nn.Module, example: torch.Tensor, threads: int, tag: str):
        """Write ``model`` as ``fmt`` to a new temporary file; the file and its loaded form."""
        suffix = FORMATS[fmt].suffix
        fd, name = tempfile.mkstemp(prefix=f".export_{tag}_", suffix=suffix, dir=self.folder)
        os.close(fd)
        os.chmod(name, new_file_mode())  # published as is: the usual mode, not mkstemp's 0600
        path = Path(name)
        self.paths.append(path)
        FORMATS[fmt].save(model, example, path)
        return path, FORMATS[fmt].load(path, threads)


def _root_cause(err: BaseException) -> str:
    """``Type: first line`` of the innermost exception ``err`` was raised from (an exporter wraps
    the error it met in its own, with coloured, many-line advice)."""
    while err.__cause__ is not None:
        err = err.__cause__
    lines = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip().splitlines()
    return f"{type(err).__name__}: {lines[0][:200]}" if lines else type(err).__name__


def _int8(cfg: ExportConfig, job: _Job, temps: _TempFiles, fp32, threads: int, engine: str, log):
    """Quantise, save and load the int8 network; its file, its loaded form and its record."""
    calib = _batches(job.data, job.run_cfg, "train", cfg.calibration_images, 64)
    n_calib = sum(len(y) for _, y in calib)
    log.info("int8: calibrating on %d training images (%s engine)", n_calib, engine)
    quantized, kept = quantize_int8(job.model, (x for x, _ in calib), engine, cfg.int8_fp32_last)
    try:
        path, int8 = temps.export(cfg.format, quantized, job.example, threads, "int8")
    except Exception as err:  # the exporter's own words are the evidence
        raise ExportError(
            f"the int8 network cannot be saved as {cfg.format} with torch {torch.__version__} "
            f"({_root_cause(err)})"
            + ("; --format torchscript can save it" if cfg.format != "torchscript" else "")
        ) from None
    test = _batches(job.data, job.run_cfg, "test", len(job.data.test), 500)
    log.info(
        "int8: test top-1 of the int8 and fp32 files on %d images", sum(len(y) for _, y in test)
    )
    record = {
        "engine": engine,
        "scheme": "static post-training (FX graph mode, default qconfig mapping of the engine)",
        "calibration_images": n_calib,
        "kept_fp32": kept,
        "test_images": sum(len(y) for _, y in test),
        "top1": _top1(int8, test),
        "fp32_top1": _top1(fp32, test),
        "max_abs_diff_vs_fp32": round(_max_abs_diff(int8, job.model, job.check), 5),
    }
    return path, int8, record


def _time(timed: dict[str, Callable], size: int, threads: int, lut, cfg: ExportConfig, log):
    """Each callable's median latency (ms) and IQR at batch 1, in interleaved rounds."""
    allocator = use_allocator(lut.allocator if lut else "default")
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    log.info(
        "timing %s at batch 1: %d interleaved rounds, %d thread(s)",
        ", ".join(timed),
        cfg.rounds,
        threads,
    )
    load_before = load_average()
    with num_threads(threads):
        median, iqr, info = measure_latencies(
            list(timed.values()), x, cfg.rounds, progress=cfg.progress
        )
    return {
        "batch_size": 1,
        "threads": threads,
        "allocator": allocator,
        "rounds": cfg.rounds,
        "statistic": "median over interleaved rounds of the fastest of 3 passes (inference_mode)",
        "median_ms": {k: round(float(v), 4) for k, v in zip(timed, median)},
        "iqr_ms": {k: round(float(v), 4) for k, v in zip(timed, iqr)},
        "round_speed_min": info["round_speed_min"],
        "round_speed_max": info["round_speed_max"],
        "load_average_before": load_before,
        "load_average_after": load_average(),
    }


def run_export(cfg: ExportConfig) -> dict[str, Any]:
    """Export ``cfg.export`` as the module docstring says; print the summary, return the report."""
    log = get_logger(None, name=__name__)
    if cfg.format not in FORMATS:
        raise ExportError(f"unknown format {cfg.format!r}; use one of {', '.join(FORMATS)}")
    _check_packages(cfg.format)
    out, report_path = _outputs(cfg)
    job = _prepare(cfg)
    lut, predicted, why_not = _prediction(cfg, job)
    threads = cfg.threads or (lut.meta.get("threads") if lut else 0) or 1
    if out.suffix != FORMATS[cfg.format].suffix:
        log.info("note: %s files are usually named *%s", cfg.format, FORMATS[cfg.format].suffix)
    if cfg.format == "torchscript":
        log.info(
            "note: torch %s deprecates TorchScript; --format exported_program is its successor",
            torch.__version__,
        )
    with _TempFiles(out.parent) as temps, contextlib.ExitStack() as stack:
        fp32_path, fp32 = temps.export(cfg.format, job.model, job.example, threads, "fp32")
        diff = _max_abs_diff(fp32, job.reference, job.check)
        n_check = sum(len(y) for _, y in job.check)
        log.info(
            "the %s file vs the checkpoint's eval-mode network on %d test images: max |difference| "
            "%.3g (tolerance %g)",
            cfg.format,
            n_check,
            diff,
            TOLERANCE,
        )
        if not diff <= TOLERANCE:
            raise ExportError(
                f"the exported network differs from the checkpoint by {diff:.3g} (more than "
                f"{TOLERANCE:g}) on {n_check} test images; nothing was written"
            )
        timed, published, int8 = {"file": fp32}, fp32_path, None
        if cfg.quantize == "int8":
            engine = stack.enter_context(_quantized_engine())
            published, timed["int8_file"], int8 = _int8(cfg, job, temps, fp32, threads, engine, log)
            int8["fp32_size_bytes"] = fp32_path.stat().st_size
        timed["eager"] = job.model
        timing = _time(timed, job.input_size, threads, lut, cfg, log)
        key = "int8_file" if int8 else "file"
        mean, std = input_normalization(job.run_cfg, job.data)
        record = {
            "path": str(out),
            "format": cfg.format,
            "quantize": None if cfg.quantize == "none" else cfg.quantize,
            "max_abs_diff": float(f"{diff:.3g}"),
            "check_images": n_check,
            "tolerance": TOLERANCE,
            "measured_latency_ms": timing["median_ms"][key],
            "measured_latency_iqr_ms": timing["iqr_ms"][key],
            "predicted_latency_ms": None if predicted is None else round(predicted, 4),
            "prediction_note": why_not,
            "lut_path": _shown(lut.path) if lut else None,
            "size_bytes": published.stat().st_size,
            "report": str(report_path),
            "int8": int8,
            "timing": timing,
            "input": {
                "shape": ["batch", 3, job.input_size, job.input_size],
                "dtype": "float32",
                "layout": "NCHW",
                "preprocessing": "RGB scaled to [0, 1], then (x - mean) / std per channel",
                "mean": list(mean),
                "std": list(std),
            },
            "output": f"logits [batch, {job.model.classifier.out_features}]",
            "inference_form": job.form,
            "checkpoint": str(cfg.export),
            "epoch": job.state.get("epoch"),
            "architecture": {**job.spec.to_dict(), "search_space": job.space},
            "torch_version": torch.__version__,
            "device_name": device_name(torch.device("cpu")),
            "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        }
        if out.exists():
            raise ExportError(f"{out} appeared while exporting; refusing to overwrite it")
        os.replace(published, out)
    atomic_write_json(report_path, record)
    if why_not:
        log.info("no predicted latency: %s", why_not)
    log.info(
        "measured %.3f ms at batch 1 with %d thread(s), predicted %s; wrote %s and %s",
        record["measured_latency_ms"],
        threads,
        "-" if predicted is None else f"{predicted:.3f} ms",
        out,
        report_path,
    )
    summary_keys = ("path", "format", "quantize", "max_abs_diff", "measured_latency_ms")
    summary = {k: record[k] for k in summary_keys}
    summary.update(
        predicted_latency_ms=record["predicted_latency_ms"], size_bytes=record["size_bytes"]
    )
    if int8:
        summary.update(
            fp32_latency_ms=timing["median_ms"]["file"],
            int8_top1=int8["top1"],
            fp32_top1=int8["fp32_top1"],
        )
    summary["report"] = str(report_path)
    print(json.dumps(summary), flush=True)
    return record
