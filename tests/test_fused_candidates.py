"""A layer's candidates merged (supernet_functions/fused_candidates.py) against the same layer run op by
op: outputs, every gradient, BN running statistics; where the merged path runs and where it does not."""

from __future__ import annotations

import copy

import pytest
import torch

from fbnet_building_blocks.registry import build_block
from fbnet_building_blocks.search_space import CANDIDATE_OPS
from supernet_functions.fused_candidates import fuse_candidates
from supernet_functions.model_supernet import MixedOperation
from supernet_functions.speed import pointwise_conv2d, prepare_supernet

pytestmark = pytest.mark.usefixtures("one_thread")


def _layers(in_channels, out_channels, stride, dw_bn_relu):
    """The same layer twice (all candidate ops, non-trivial BN parameters): prepared with its
    candidates merged, and run op by op."""
    torch.manual_seed(0)
    ops = [build_block(op, in_channels, out_channels, stride, dw_bn_relu) for op in CANDIDATE_OPS]
    plain = MixedOperation(ops, torch.arange(len(ops), dtype=torch.float32))
    for m in plain.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    fused = copy.deepcopy(plain)
    prepare_supernet(plain, torch.device("cpu"), fuse_ops=False)
    prepare_supernet(fused, torch.device("cpu"))
    assert plain.fused is None and fused.fused is not None
    return plain, fused


def _no_call(module, inputs):
    raise AssertionError(f"{type(module).__name__} ran on its own")


@pytest.mark.parametrize("dw_bn_relu", [False, True])
@pytest.mark.parametrize(
    "shape", [(8, 8, 1, 4), (8, 16, 2, 8)], ids=["residual", "stride2_wider"]
)  # in_channels, out_channels, stride, map side
def test_merged_layer_equals_the_ops_one_by_one(shape, dw_bn_relu):
    in_channels, out_channels, stride, side = shape
    plain, fused = _layers(in_channels, out_channels, stride, dw_bn_relu)
    merged = fused.fused
    assert [len(g.ops) for g in merged.groups] == [4, 4]  # k3 and k5, each with a shuffled op
    assert merged.others == [CANDIDATE_OPS.index("skip")]
    for i in merged.order:  # the merged ops do not run as modules
        fused.ops[i].register_forward_pre_hook(_no_call)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, in_channels, side, side, generator=g)
    x = x.contiguous(memory_format=torch.channels_last)
    grad = torch.randn(5, out_channels, side // stride, side // stride, generator=g)
    weights = torch.softmax(torch.randn(len(CANDIDATE_OPS), generator=g), 0)
    out = _same_mixture(plain, fused, x, weights, grad)
    assert out.is_contiguous(memory_format=torch.channels_last)
    for (name, p), q in zip(plain.named_parameters(), fused.parameters()):
        if name != "thetas":
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-4, msg=name)
    for (name, b), c in zip(plain.named_buffers(), fused.buffers()):  # running stats, counters
        torch.testing.assert_close(c, b, rtol=1e-5, atol=1e-6, msg=name)
    plain.eval()  # evaluation mode: the running statistics normalise
    fused.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            fused.fused(x, weights), _mix(plain, x, weights), rtol=1e-5, atol=1e-5
        )


def _mix(layer, x, weights):
    return sum(w * op(x) for w, op in zip(weights, layer.ops))


def _same_mixture(plain, merged, x, weights, grad) -> torch.Tensor:
    """Run ``plain`` op by op and ``merged`` merged, backward with ``grad``; check that the outputs
    and the gradients of the input and of the mixing weights agree. Returns the merged output."""
    results = []
    for layer in (plain, merged):
        xi = x.clone().requires_grad_(True)
        w = weights.clone().requires_grad_(True)
        out = layer.fused(xi, w) if layer.fused else _mix(layer, xi, w)
        out.backward(grad)
        results.append((out.detach(), xi.grad, w.grad))
    (out_p, gx_p, gw_p), (out_m, gx_m, gw_m) = results
    torch.testing.assert_close(out_m, out_p, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx_m, gx_p, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gw_m, gw_p, rtol=1e-4, atol=1e-5)
    return out_m


def test_mixed_operation_runs_the_ops_one_by_one_where_merging_does_not_apply():
    plain, fused = _layers(8, 8, 1, False)
    calls = []
    for op in fused.ops:
        op.register_forward_pre_hook(lambda m, i: calls.append(m))
    x = torch.randn(4, 8, 4, 4).contiguous(memory_format=torch.channels_last)
    fused(x, 1.0)
    assert len(calls) == 1  # the skip op only
    for layer_input in (
        torch.randn(9, 8, 16, 16).contiguous(memory_format=torch.channels_last),  # 2304 rows
        torch.randn(4, 8, 4, 4),  # not channels_last
    ):
        calls.clear()
        fused(layer_input, 1.0)
        assert len(calls) == len(CANDIDATE_OPS)
    fused.per_sample = True  # one weight vector per example
    calls.clear()
    fused(x, 1.0)
    assert len(calls) == len(CANDIDATE_OPS)


def test_fuse_candidates_needs_two_plain_inverted_residual_blocks():
    ops = [build_block(op, 8, 8, 1) for op in ("ir_k3_e1", "skip")]
    assert fuse_candidates(ops, pointwise_conv2d) is None
    se = [build_block(op, 8, 8, 1) for op in ("ir_k3_e1_se", "ir_k5_e3_se")]
    assert fuse_candidates(se, pointwise_conv2d) is None


def test_bench_fused_layers_times_every_merged_layer_and_reports_the_rule():
    """bench/bench_fused_layers.py times both forms of every layer that has merged candidates and
    labels each with the form ``FusedCandidates.applies`` picks (at most 2048 rows merged)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "bench" / "bench_fused_layers.py"
    spec = importlib.util.spec_from_file_location("bench_fused_layers", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    argv = ["--search_space", "tiny", "--input_size", "8", "--batch_sizes", "40"]
    result = bench.main([*argv, "--repeats", "1", "--threads", "1"])
    rows = result["layers"]
    assert [r["layer"] for r in rows] == [0, 1, 2, 3]  # every layer of the tiny space
    for r in rows:
        assert r["one_by_one_ms"] > 0 and r["merged_ms"] > 0
        assert (r["rule"] == "merged") == (r["rows"] <= 2048)
    assert [r["rule"] for r in rows] == ["one by one"] + ["merged"] * 3  # 8x8 (2560 rows), smaller
    shared = bench.main(
        [*argv, "--repeats", "1", "--threads", "1", "--weight_sharing", "--step", "thetas"]
    )
    assert [r["rule"] for r in shared["layers"]] == ["merged"] * 4  # SharedMixture: every size


def _shared_layers(in_channels, out_channels, stride, dw_bn_relu, candidates=CANDIDATE_OPS):
    """A layer whose candidates share their weights (``--weight_sharing``), with non-trivial BN
    parameters and running statistics: prepared with its mixture merged, and its copy run op by op."""
    from types import SimpleNamespace

    from fbnet_building_blocks.structure import Structure
    from supernet_functions.model_supernet import _candidates

    torch.manual_seed(0)
    shape = SimpleNamespace(in_channels=in_channels, out_channels=out_channels, stride=stride)
    ops, shared = _candidates(list(candidates), shape, Structure(dw_bn_relu=dw_bn_relu), True)
    plain = MixedOperation(ops, torch.arange(len(ops), dtype=torch.float32))
    plain.shared = shared
    with torch.no_grad():
        for name, t in shared.named_parameters():
            if name.startswith("bn"):
                t.uniform_(0.5, 1.5) if name.endswith("weight") else t.uniform_(-0.5, 0.5)
        for name, t in shared.named_buffers():
            t.uniform_(-0.2, 0.2) if name.endswith("mean") else t.uniform_(0.5, 1.5)
    merged = copy.deepcopy(plain)
    prepare_supernet(plain, torch.device("cpu"), fuse_ops=False)
    prepare_supernet(merged, torch.device("cpu"))
    assert plain.fused is None and merged.fused is not None
    return plain, merged


SOME_OPS = ("ir_k5_e3", "skip", "ir_k3_s2", "ir_k3_e1")  # kernel 5: dense only, 3 * in channels


@pytest.mark.parametrize("dw_bn_relu", [False, True])
@pytest.mark.parametrize(
    "shape, candidates",
    [
        ((8, 8, 1, 4), CANDIDATE_OPS),
        ((8, 16, 2, 8), CANDIDATE_OPS),
        ((4, 8, 1, 16), CANDIDATE_OPS),
        ((8, 8, 1, 4), SOME_OPS),
        ((8, 8, 1, 2), CANDIDATE_OPS),
        ((8, 16, 2, 2), CANDIDATE_OPS),
        ((8, 8, 1, 1), SOME_OPS),
    ],
    ids=["residual", "stride2", "16x16", "some_ops", "2x2", "2x2_stride2", "1x1_some_ops"],
)  # in_channels, out_channels, stride, map side
def test_shared_weights_mixture_equals_the_ops_one_by_one(shape, candidates, dw_bn_relu):
    """--weight_sharing: the merged mixture (each shared channel computed once) gives the output,
    the gradients of the input, mixing weights and shared weights, and every op's running statistics
    of the ops run one by one; in evaluation mode the ops run one by one. ``SOME_OPS``: a kernel
    size whose ops use a subset of the expanded channels. On 2x2 and 1x1 maps the 5x5 ops take the
    3x3 ops' depthwise outputs (``_kernel_groups``)."""
    in_channels, out_channels, stride, side = shape
    plain, merged = _shared_layers(in_channels, out_channels, stride, dw_bn_relu, candidates)
    mixture = merged.fused
    assert mixture.others == [candidates.index("skip")]
    assert sorted(b.groups for b in mixture.branches) == [1, 2]  # dense ops, the 2-group ops
    groups = [(3,), (5,)] if side > 2 else [(3, 5)]
    assert mixture._kernel_groups(side, side) == groups
    for i, op in enumerate(merged.ops):  # the shared ops do not run as modules
        if i not in mixture.others:
            op.register_forward_pre_hook(_no_call)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, in_channels, side, side, generator=g)
    x = x.contiguous(memory_format=torch.channels_last)
    grad = torch.randn(6, out_channels, side // stride, side // stride, generator=g)
    weights = torch.softmax(torch.randn(len(candidates), generator=g), 0)
    before = [b.clone() for b in plain.shared.buffers()]
    _same_mixture(plain, merged, x, weights, grad)
    for (name, p), q in zip(plain.shared.named_parameters(), merged.shared.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-4, msg=name)
    for (name, b), c, b0 in zip(plain.shared.named_buffers(), merged.shared.buffers(), before):
        assert not torch.equal(c, b0), name  # every op's running statistics moved
        torch.testing.assert_close(c, b, rtol=1e-5, atol=1e-6, msg=name)
    merged.eval()  # each op normalises with its own running statistics: one by one
    assert not mixture.applies(x, weights)
