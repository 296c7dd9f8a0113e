"""The fast supernet path computes what the plain reference computes (outputs, gradients, updates).

The reference (:mod:`supernet_functions.reference_supernet`) runs every op in NCHW, sums ``m * op(x)``
in a Python loop and computes every gradient in both steps. The fast path is the one training uses:
:func:`~supernet_functions.speed.prepare_supernet` (channels_last, trimmed depthwise kernels) and only
the trained set's gradients (:func:`~supernet_functions.speed.trainable_only`). Both get the same
weights (``load_state_dict``) and the same Gumbel noise (the same seed before each forward). The
input side 8 puts the last layers of the ``tiny`` space on 2x2 maps, where 5x5 kernels are trimmed.
"""

from __future__ import annotations

import pytest
import torch

from supernet_functions.loss import SupernetLoss
from supernet_functions.model_supernet import StochasticSuperNet
from supernet_functions.reference_supernet import ReferenceSuperNet, reference_train_step
from supernet_functions.speed import prepare_supernet, supernet_step, trainable_only

SPACE, SIZE, BATCH = "tiny", 8, 6


@pytest.fixture(autouse=True)
def _one_thread():
    """One thread: these tiny ops gain nothing from two, and on a loaded machine two OpenMP threads
    waiting on each other made these tests ~10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class _Costs:
    """A cost table with a different positive cost for every (layer, op)."""

    def __init__(self, num_layers: int) -> None:
        self.num_layers = num_layers

    def latency_vector(self, layer: int, ops) -> torch.Tensor:
        return 0.02 + 0.01 * torch.arange(len(ops), dtype=torch.float32) + 0.005 * layer


def _pair(mixing: str = "gumbel"):
    torch.manual_seed(0)
    ref = ReferenceSuperNet(SPACE, _Costs(4), 10, SIZE)
    with torch.no_grad():  # non-uniform thetas, so every op's weight differs
        for layer in ref.stages:
            layer.thetas.copy_(torch.randn_like(layer.thetas))
    fast = StochasticSuperNet(SPACE, _Costs(4), 10, SIZE, mixing=mixing)
    fast.load_state_dict(ref.state_dict())
    prepare_supernet(fast, torch.device("cpu"), channels_last=True, trim_kernels=True)
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
    from architecture_functions.trim_kernels import TrimmedConv2d

    _, fast = _pair()
    assert any(isinstance(m, TrimmedConv2d) for m in fast.modules())
    assert fast.stem[0].weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize(
    "size,kernel,stride",
    [(1, 5, 1), (2, 5, 1), (2, 3, 1), (3, 5, 2), (4, 5, 2), (4, 3, 2), (5, 3, 1)],
)
def test_small_map_depthwise_conv_equals_the_full_convolution(size, kernel, stride):
    """Output, input gradient and weight gradient of the small-map depthwise conv (computed by hand
    for outputs of at most 2x2 pixels) equal nn.Conv2d's, in channels_last."""
    from supernet_functions.speed import SmallMapDepthwiseConv2d

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


def test_forward_matches_reference_with_the_same_noise():
    ref, fast = _pair()
    x, _ = _batch()
    torch.manual_seed(5)
    logits_ref, lat_ref = ref(x, 2.0)
    torch.manual_seed(5)
    logits_fast, lat_fast = fast(x.contiguous(memory_format=torch.channels_last), 2.0)
    torch.testing.assert_close(logits_fast, logits_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(lat_fast, lat_ref, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", ["weights", "thetas"])
def test_step_matches_reference(kind):
    """Loss, the trained set's gradients, the updated parameters and BN statistics all agree."""
    ref, fast = _pair()
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
    params = dict(fast.named_parameters())
    torch.manual_seed(7)
    with trainable_only([params[n] for n in trained], [params[n] for n in idle]):
        loss_fast = supernet_step(fast, x, y, criterion, opts["fast"], 3.0)[0]
    torch.testing.assert_close(loss_fast, loss_ref, rtol=1e-5, atol=1e-6)
    # the idle set got no gradient at all; the trained set the reference's gradient
    assert all(g is None for g in _named_grads(fast, idle).values())
    ref_grads, fast_grads = _named_grads(ref, trained), _named_grads(fast, trained)
    for n in trained:
        torch.testing.assert_close(fast_grads[n], ref_grads[n], rtol=1e-4, atol=1e-5, msg=n)
    # same parameters and BN running statistics after the step
    ref_state, fast_state = ref.state_dict(), fast.state_dict()
    for n, v in ref_state.items():
        torch.testing.assert_close(fast_state[n], v, rtol=1e-4, atol=1e-5, msg=n)
    assert all(p.requires_grad for p in fast.parameters())  # trainable_only restored the flags
