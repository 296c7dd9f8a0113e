"""The fast supernet path computes what the plain reference computes (outputs, gradients, updates).

The reference (:mod:`supernet_functions.reference_supernet`) runs every op in NCHW, sums ``m * op(x)``
in a Python loop and computes every gradient in both steps. The fast path is the one the search uses:
:func:`~supernet_functions.speed.prepare_supernet` (channels_last, trimmed depthwise kernels) and the
search's ``train_weights_epoch`` / ``train_thetas_epoch``, which compute only the trained set's
gradients. Both get the same
weights (``load_state_dict``) and the same Gumbel noise (the same seed before each forward). The
input side 8 puts the last layers of the ``tiny`` space on 2x2 maps, where 5x5 kernels are trimmed.
"""

from __future__ import annotations

import pytest
import torch

from supernet_functions.loss import SupernetLoss
from supernet_functions.model_supernet import StochasticSuperNet
from supernet_functions.reference_supernet import ReferenceSuperNet, reference_train_step
from supernet_functions.speed import prepare_supernet
from supernet_functions.training_functions_supernet import train_thetas_epoch, train_weights_epoch

SPACE, SIZE, BATCH = "tiny", 8, 6


pytestmark = pytest.mark.usefixtures("one_thread")


class _Costs:
    """A cost table with a different positive cost for every (layer, op)."""

    def __init__(self, num_layers: int) -> None:
        self.num_layers = num_layers

    def latency_vector(self, layer: int, ops) -> torch.Tensor:
        return 0.02 + 0.01 * torch.arange(len(ops), dtype=torch.float32) + 0.005 * layer


def _pair(mixing: str = "gumbel", recompute: bool = False, fuse_ops: bool = True):
    torch.manual_seed(0)
    ref = ReferenceSuperNet(SPACE, _Costs(4), 10, SIZE)
    with torch.no_grad():  # non-uniform thetas, so every op's weight differs
        for layer in ref.stages:
            layer.thetas.copy_(torch.randn_like(layer.thetas))
    fast = StochasticSuperNet(SPACE, _Costs(4), 10, SIZE, mixing=mixing)
    fast.load_state_dict(ref.state_dict())
    prepare_supernet(
        fast,
        torch.device("cpu"),
        channels_last=True,
        trim_kernels=True,
        recompute=recompute,
        fuse_ops=fuse_ops,
    )
    return ref, fast


def _batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(BATCH, 3, SIZE, SIZE, generator=g), torch.randint(
        0, 10, (BATCH,), generator=g
    )


def _named_grads(model, names):
    params = dict(model.named_parameters())
    return {n: params[n].grad for n in names}


def test_prepared_supernet_uses_trimmed_kernels_and_channels_last():
    from fbnet_building_blocks.trim_kernels import TrimmedConv2d
    from supernet_functions.speed import PointwiseConv2d

    _, fast = _pair()
    assert any(isinstance(m, TrimmedConv2d) for m in fast.modules())
    assert fast.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    pointwise = [m for m in fast.modules() if isinstance(m, PointwiseConv2d)]
    assert pointwise and any(m.groups == 2 for m in pointwise)  # the g2 ops' grouped 1x1 convs
    ones = [m for m in fast.modules() if type(m) is torch.nn.Conv2d and m.kernel_size == (1, 1)]
    assert all(m.stride != (1, 1) for m in ones)  # only strided 1x1 convs keep the library's


@pytest.mark.parametrize(
    "groups,bias,size",
    [(1, False, 4), (2, False, 2), (1, True, 1), (4, True, 3), (2, True, 8), (1, False, 9)],
)
def test_pointwise_conv_equals_the_convolution(groups, bias, size, monkeypatch):
    """Output (values and channels_last layout), input gradient and weight and bias gradients of the
    1x1 convolution as a matrix product equal nn.Conv2d's; maps over 8x8 and NCHW inputs take
    nn.Conv2d's path."""
    import torch.nn.functional as F

    from supernet_functions.speed import PointwiseConv2d

    gemms = []
    linear = F.linear
    monkeypatch.setattr(F, "linear", lambda *a: gemms.append(1) or linear(*a))

    conv = torch.nn.Conv2d(8, 12, 1, groups=groups, bias=bias)
    gemm = torch.nn.Conv2d(8, 12, 1, groups=groups, bias=bias)
    gemm.load_state_dict(conv.state_dict())
    gemm.__class__ = PointwiseConv2d
    x = torch.randn(5, 8, size, size).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    y_conv, y_gemm = conv(x), gemm(x)
    assert bool(gemms) == (size <= 8)
    assert y_gemm.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y_gemm, y_conv)
    upstream = torch.randn_like(y_conv)
    g_conv = torch.autograd.grad((y_conv * upstream).sum(), [x, *conv.parameters()])
    g_gemm = torch.autograd.grad((y_gemm * upstream).sum(), [x, *gemm.parameters()])
    for a, b in zip(g_gemm, g_conv):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # an NCHW input (with more than one pixel) is not channels_last: the library's path
    if size > 1:
        x_nchw = torch.randn(5, 8, size, size)
        torch.testing.assert_close(gemm(x_nchw), conv(x_nchw))


@pytest.mark.parametrize(
    "size,kernel,stride,direct",
    [
        (1, 5, 1, True),
        (2, 5, 1, True),
        (2, 3, 1, True),
        (3, 5, 2, True),
        (4, 5, 2, True),
        (4, 3, 2, True),
        (4, 5, 1, True),  # 4x4 output of a 5x5 kernel at stride 1
        (4, 3, 1, False),  # ... of a 3x3 kernel: the library's
        (8, 5, 2, False),  # ... of a strided 5x5: the library's
        (5, 3, 1, False),
    ],
)
def test_small_map_depthwise_conv_equals_the_full_convolution(
    size, kernel, stride, direct, monkeypatch
):
    """Output, input gradient and weight gradient of the small-map depthwise conv equal
    nn.Conv2d's, in channels_last, and the weight gradient is computed by hand where it should be."""
    from supernet_functions import speed
    from supernet_functions.speed import SmallMapDepthwiseConv2d

    calls = []
    original = speed._DepthwiseSmallMap.apply
    monkeypatch.setattr(
        speed._DepthwiseSmallMap, "apply", lambda *a: calls.append(1) or original(*a)
    )

    full = torch.nn.Conv2d(12, 12, kernel, stride, kernel // 2, groups=12, bias=False)
    small = torch.nn.Conv2d(12, 12, kernel, stride, kernel // 2, groups=12, bias=False)
    small.load_state_dict(full.state_dict())
    small.__class__ = SmallMapDepthwiseConv2d
    x = torch.randn(5, 12, size, size).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    upstream = torch.randn_like(full(x))
    y_full, y_small = full(x), small(x)
    torch.testing.assert_close(y_small, y_full)
    g_full = torch.autograd.grad((y_full * upstream).sum(), [x, full.weight])
    g_small = torch.autograd.grad((y_small * upstream).sum(), [x, small.weight])
    for a, b in zip(g_small, g_full):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert bool(calls) == direct


def test_forward_matches_reference_with_the_same_noise():
    ref, fast = _pair()
    x, _ = _batch()
    torch.manual_seed(5)
    logits_ref, lat_ref = ref(x, 2.0)
    torch.manual_seed(5)
    logits_fast, lat_fast = fast(x.contiguous(memory_format=torch.channels_last), 2.0)
    torch.testing.assert_close(logits_fast, logits_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(lat_fast, lat_ref, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("fuse_ops", [False, True])
@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("kind", ["weights", "thetas"])
def test_step_matches_reference(kind, recompute, fuse_ops):
    """Loss, the trained set's gradients, the updated parameters and BN statistics all agree, with
    activations kept or recomputed in the backward pass (``--recompute``), and the candidates run
    one by one or merged (``--fuse_ops``; at this batch and map size every layer merges)."""
    ref, fast = _pair(recompute=recompute, fuse_ops=fuse_ops)
    ran = []  # the candidate ops that ran as modules
    for layer in fast.stages:
        for op in layer.ops:
            op.register_forward_pre_hook(lambda m, i: ran.append(type(m).__name__))
    x, y = _batch()
    criterion = SupernetLoss()
    opts = {}
    for name, model in (("ref", ref), ("fast", fast)):
        params = model.weight_parameters() if kind == "weights" else model.arch_parameters()
        opts[name] = (
            torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4)
            if kind == "weights"
            else torch.optim.Adam(params, lr=0.01, weight_decay=5e-4)
        )
    torch.manual_seed(7)
    loss_ref = reference_train_step(ref, opts["ref"], criterion, x, y, 3.0)
    w_names = [n for n, p in fast.named_parameters() if not n.endswith("thetas")]
    t_names = [n for n, p in fast.named_parameters() if n.endswith("thetas")]
    trained, idle = (w_names, t_names) if kind == "weights" else (t_names, w_names)
    epoch_fn = train_weights_epoch if kind == "weights" else train_thetas_epoch
    grads = {}
    for n in trained:  # the gradients the step computed, before the optimizer uses them
        dict(fast.named_parameters())[n].register_post_accumulate_grad_hook(
            lambda p, n=n: grads.__setitem__(n, p.grad.clone())
        )
    idle_params = [dict(fast.named_parameters())[n] for n in idle]
    for p in idle_params:
        p.register_hook(lambda g: pytest.fail("a gradient of the idle set was computed"))
    torch.manual_seed(7)
    stats = epoch_fn(fast, [(x, y)], criterion, opts["fast"], 3.0)
    assert ("InvertedResidual" in ran) != fuse_ops and "Skip" in ran
    assert stats["loss"] == pytest.approx(loss_ref.item(), rel=1e-5)
    ref_grads = _named_grads(ref, trained)
    assert set(grads) == set(trained)
    for n in trained:
        torch.testing.assert_close(grads[n], ref_grads[n], rtol=1e-4, atol=1e-5, msg=n)
    # same parameters and BN running statistics after the step
    ref_state, fast_state = ref.state_dict(), fast.state_dict()
    for n, v in ref_state.items():
        torch.testing.assert_close(fast_state[n], v, rtol=1e-4, atol=1e-5, msg=n)
    assert all(p.requires_grad for p in fast.parameters())  # the phase restored the flags


# ------------------------------------------------------------------ hard Gumbel (straight-through)
def _layer(per_sample: bool = False):
    from fbnet_building_blocks.registry import build_block
    from supernet_functions.model_supernet import MixedOperation

    torch.manual_seed(0)
    ops = [build_block(op, 8, 8, 1) for op in ("ir_k3_e1", "ir_k5_e3", "skip", "ir_k3_s2")]
    layer = MixedOperation(ops, torch.tensor([1.0, 2.0, 0.5, 3.0]), "hard_gumbel", per_sample)
    with torch.no_grad():
        layer.thetas.copy_(torch.tensor([0.3, -0.2, 0.1, 0.4]))
    return layer


def test_hard_gumbel_runs_only_the_sampled_op_with_the_straight_through_gradient():
    layer, tau = _layer(), 1.5
    x = torch.randn(4, 8, 6, 6)
    upstream = torch.randn(4, 8, 6, 6)
    torch.manual_seed(3)  # the noise F.gumbel_softmax draws (as it draws it)
    gumbels = -torch.empty_like(layer.thetas).exponential_().log()
    soft = torch.softmax((layer.thetas.detach() + gumbels) / tau, dim=-1)
    k = int(soft.argmax())
    calls = []
    hooks = [
        op.register_forward_hook(lambda m, i, o, j=j: calls.append(j))
        for j, op in enumerate(layer.ops)
    ]
    torch.manual_seed(3)
    out, latency = layer(x, tau)
    for h in hooks:
        h.remove()
    assert calls == [k]
    torch.testing.assert_close(out, layer.ops[k](x))  # one-hot weight: exactly the op's output
    assert latency.item() == pytest.approx(layer.latency[k].item())
    ((out * upstream).sum() + 10.0 * latency).backward()
    # d/dthetas of <upstream, op_k(x)> * soft_k + 10 * sum_i soft_i * LAT_i, by hand
    jac = (torch.diag(soft) - soft[:, None] * soft[None, :]) / tau  # d soft / d thetas
    dot = (upstream * layer.ops[k](x)).sum().detach()
    expected = dot * jac[k] + 10.0 * layer.latency @ jac
    torch.testing.assert_close(layer.thetas.grad, expected, rtol=1e-4, atol=1e-5)
    # only the sampled op's weights received gradients
    for j, op in enumerate(layer.ops):
        grads = [p.grad for p in op.parameters()]
        assert all(g is not None for g in grads) if j == k else all(g is None for g in grads)


def test_hard_gumbel_per_sample_runs_each_example_through_its_own_op():
    layer = _layer(per_sample=True).eval()  # eval: batch norm does not depend on the sub-batch
    x = torch.randn(16, 8, 5, 5)
    torch.manual_seed(4)
    with torch.no_grad():
        chosen = layer.mixing_weights(1.0, 16).argmax(-1)
        torch.manual_seed(4)
        out, latency = layer(x, 1.0)
        assert len(chosen.unique()) > 1
        for b in range(16):
            k = int(chosen[b])
            torch.testing.assert_close(out[b : b + 1], layer.ops[k](x[b : b + 1]))
            assert latency[b].item() == pytest.approx(layer.latency[k].item())


def test_theta_phase_reports_what_moves_the_thetas():
    """grad_ce / grad_latency / hinge_active: the latency part vanishes below a target the batch
    cannot reach and is there above one it always exceeds; the cross-entropy part is there in both."""
    _, fast = _pair()
    x, y = _batch()
    with torch.no_grad():
        lat = float(fast(x, 3.0)[1])  # the expected latency of these layers
    for target, active in ((100 * lat, 0.0), (lat / 100, 100.0)):
        opt = torch.optim.Adam(fast.arch_parameters(), lr=0.01)
        stats = train_thetas_epoch(fast, [(x, y)], SupernetLoss(target=target), opt, 3.0)
        assert stats["hinge_active"] == active
        assert stats["grad_ce"] > 0 and (stats["grad_latency"] > 0) == (active > 0)
    stats = train_thetas_epoch(fast, [(x, y)], SupernetLoss(), opt, 3.0)  # no target: no hinge
    assert "hinge_active" not in stats and stats["grad_latency"] > 0
    assert stats["grad_ce_agreement"] == pytest.approx(1) == stats["grad_latency_agreement"]
    # over several steps: agreement computed from the gradients the steps used (the latency part is
    # zero under an unreachable target, so the cross-entropy part is the whole gradient)
    thetas = list(fast.arch_parameters())
    grads: list[list[torch.Tensor]] = [[] for _ in thetas]  # per theta, per step
    for i, t in enumerate(thetas):
        t.register_post_accumulate_grad_hook(lambda p, i=i: grads[i].append(p.grad.clone()))
    g = torch.Generator().manual_seed(3)
    batches = [(torch.randn(BATCH, 3, SIZE, SIZE, generator=g), y) for _ in range(3)]
    opt = torch.optim.Adam(thetas, lr=0.01)
    stats = train_thetas_epoch(fast, batches, SupernetLoss(target=100 * lat), opt, 3.0)
    steps = [torch.cat([t.flatten() for t in step]) for step in zip(*grads)]
    expected = torch.stack(steps).sum(0).norm() / sum(v.norm() for v in steps)
    assert len(steps) == 3 and stats["grad_ce_agreement"] == pytest.approx(float(expected))
    assert stats["grad_ce_agreement"] < 1 and stats["grad_latency_agreement"] == 0


def test_prepared_shared_weights_supernet_matches_the_plain_one():
    """With --weight_sharing the layer's convolutions are functions; prepared, they are the fast
    forms (GEMM 1x1, trimmed depthwise with the hand-computed weight gradient) and compute the same
    logits and gradients as the plain supernet, with the same weights and noise."""
    from supernet_functions import speed
    from supernet_functions.shared_ops import SharedInvertedResiduals

    torch.manual_seed(0)
    plain = StochasticSuperNet(SPACE, _Costs(4), 10, SIZE, weight_sharing=True)
    fast = StochasticSuperNet(SPACE, _Costs(4), 10, SIZE, weight_sharing=True)
    fast.load_state_dict(plain.state_dict())
    prepare_supernet(fast, torch.device("cpu"), channels_last=True, trim_kernels=True)
    shared = [m for m in fast.modules() if isinstance(m, SharedInvertedResiduals)]
    assert shared and all(m.conv1x1 is speed.pointwise_conv2d for m in shared)
    assert all(m.depthwise is speed.depthwise_conv2d for m in shared)
    x, y = _batch()
    out = {}
    for name, model in (("plain", plain), ("fast", fast)):
        torch.manual_seed(3)
        logits, _ = model(speed.to_model_format(x, model), 2.0)
        loss = torch.nn.functional.cross_entropy(logits, y)
        out[name] = (logits, torch.autograd.grad(loss, list(model.weight_parameters())))
    torch.testing.assert_close(out["fast"][0], out["plain"][0], rtol=1e-4, atol=1e-5)
    for a, b in zip(out["fast"][1], out["plain"][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_bench_conv_shapes_times_every_conv_shape_and_reports_the_rule(capsys):
    """bench/bench_conv_shapes.py finds the supernet's 1x1 and depthwise shapes (their counts add up
    to the supernet's convolutions) and labels each with the form the speed rules pick."""
    import importlib.util
    from pathlib import Path

    from supernet_functions import speed

    path = Path(__file__).resolve().parent.parent / "bench" / "bench_conv_shapes.py"
    spec = importlib.util.spec_from_file_location("bench_conv_shapes", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    argv = ["--search_space", SPACE, "--input_size", str(SIZE), "--batch_sizes", "2"]
    result = bench.main([*argv, "--repeats", "1", "--calls", "1", "--threads", "1"])
    net = StochasticSuperNet(SPACE, _Costs(4), 10, SIZE)
    convs = [m for m in net.modules() if type(m) is torch.nn.Conv2d]
    pointwise = sum(speed.PointwiseConv2d.applies_to(m) for m in convs)
    depthwise = sum(m.groups == m.in_channels == m.out_channels > 1 for m in convs)
    rows = result["rows"]
    assert sum(r["count"] for r in rows if r["kind"] == "pointwise") == pointwise
    assert sum(r["count"] for r in rows if r["kind"] == "depthwise") == depthwise
    for r in rows:
        assert r["library_ms"] > 0 and r["ours_ms"] > 0
        if r["kind"] == "pointwise":
            assert (r["rule"] == "ours") == (r["map"] ** 2 <= speed.PointwiseConv2d.max_pixels)
    assert any(r["kind"] == "depthwise" and r["rule"] == "ours" for r in rows)  # 2x2 maps at 8x8


def test_bench_single_path_times_the_three_steps_and_writes_its_json(tmp_path):
    """bench/bench_single_path.py times a drawn path through owned and through shared weights and the
    preset's weight step, every variant in every round, and writes the JSON it prints."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "bench" / "bench_single_path.py"
    spec = importlib.util.spec_from_file_location("bench_single_path", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "single_path.json"
    argv = ["--batch_size", "2", "--rounds", "2", "--min_time", "0", "--threads", "1"]
    result = bench.main([*argv, "--out", str(out)])
    assert set(result["per_round"]) == {"owned", "shared", "search"}
    for rounds in result["per_round"].values():
        assert len(rounds) == 2 and all(v > 0 for v in rounds)
    assert json.loads(out.read_text())["img_per_s"] == result["img_per_s"]
