"""Activations recomputed in the backward pass (supernet_functions/recompute.py): freed after the forward
pass, the same gradients and BN statistics as keeping them, and in-place changes caught."""

from __future__ import annotations

import copy
import gc
import weakref

import pytest
import torch
from torch import nn

from fbnet_building_blocks.blocks import ConvBNReLU
from supernet_functions.model_supernet import StochasticSuperNet
from supernet_functions.recompute import BatchNormReLU2d, fuse_bn_relu, recomputing, remember
from supernet_functions.speed import PointwiseConv2d, prepare_supernet

pytestmark = pytest.mark.usefixtures("one_thread")


def test_saved_tensors_come_from_the_recipe_unless_changed_in_place():
    a = torch.randn(5, requires_grad=True)
    with recomputing():
        y = a * 2.0
        remember(
            y, lambda t: t * 5.0, a
        )  # a wrong recipe on purpose: shows which one backward used
        (y * y).sum().backward()  # d/da of (2a)^2 with the saved y taken as 5a: 2 * 5a * 2
    torch.testing.assert_close(a.grad, 20.0 * a.detach())

    a.grad = None
    with recomputing():
        y = a * 2.0
        remember(y, lambda t: t * 5.0, a)
        y.mul_(3.0)  # changed after it was marked: saved as it is
        (y * y).sum().backward()
    torch.testing.assert_close(a.grad, 72.0 * a.detach())

    a.grad = None
    y = a * 2.0
    remember(y, lambda t: t * 5.0, a)  # outside recomputing(): no effect
    (y * y).sum().backward()
    torch.testing.assert_close(a.grad, 8.0 * a.detach())


def test_an_input_changed_in_place_before_backward_raises():
    x = torch.randn(4, 3, 5, 5)
    conv = nn.Conv2d(3, 6, 1, bias=False)
    bn = nn.BatchNorm2d(6)
    bn.__class__ = BatchNormReLU2d
    with recomputing():
        c = conv(x)
        out = bn(c)
    c.add_(1.0)  # the BN input, which the recipe of its output reads
    with pytest.raises(RuntimeError, match="recompute an activation"):
        out.sum().backward()


@pytest.mark.parametrize("momentum", [0.1, None])
def test_bn_relu_matches_batchnorm_then_relu(momentum):
    torch.manual_seed(0)
    plain = ConvBNReLU(3, 8, 3)
    plain[1].momentum = momentum
    with torch.no_grad():
        plain[1].weight.uniform_(0.5, 1.5)
        plain[1].bias.normal_()
    fused = copy.deepcopy(plain)
    before = fuse_bn_relu(fused)
    assert before == [fused[0]] and isinstance(fused[1], BatchNormReLU2d)
    assert isinstance(fused[2], nn.Identity)
    assert fused.state_dict().keys() == plain.state_dict().keys()
    x = torch.randn(6, 3, 7, 7)
    for _ in range(2):  # two steps: the running statistics move the same way
        for m in (plain, fused):
            m.zero_grad()
        out_plain = plain(x)
        with recomputing():
            out_fused = fused(x)
        torch.testing.assert_close(out_fused, out_plain)
        grad = torch.randn_like(out_plain)
        out_plain.backward(grad)
        out_fused.backward(grad)
        for (name, p), q in zip(plain.named_parameters(), fused.parameters()):
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-6, msg=name)
    for (name, v), w in zip(plain.state_dict().items(), fused.state_dict().values()):
        torch.testing.assert_close(w, v, msg=name)
    plain.eval(), fused.eval()
    torch.testing.assert_close(fused(x), plain(x))


def _outputs_of(model, kind):
    """``[(module, weakref to the base of its output)]`` of every forward call of a ``kind`` module."""
    refs = []

    def hook(module, inputs, out):
        refs.append((module, weakref.ref(out if out._base is None else out._base)))

    for m in model.modules():
        if isinstance(m, kind):
            m.register_forward_hook(hook)
    return refs


def _fused_outputs(model, monkeypatch):
    """Weakrefs to the stacked BN + ReLU outputs and the stacked expansion outputs of every merged
    layer of ``model`` (:mod:`supernet_functions.fused_candidates`), as they are computed."""
    from supernet_functions import fused_candidates

    bn_refs, pw_refs = [], []
    real = fused_candidates.batch_norm_relu

    def batch_norm_relu(*args, **kwargs):
        out = real(*args, **kwargs)
        bn_refs.append(weakref.ref(out))
        return out

    monkeypatch.setattr(fused_candidates, "batch_norm_relu", batch_norm_relu)
    for layer in model.stages:
        assert layer.fused is not None

        def pointwise(*args, f=layer.fused.pointwise, **kwargs):
            out = f(*args, **kwargs)
            pw_refs.append(weakref.ref(out if out._base is None else out._base))
            return out

        layer.fused.pointwise = pointwise
    return bn_refs, pw_refs


@pytest.mark.parametrize("fuse_ops", [False, True])
def test_weight_step_frees_activations_and_keeps_the_gradients(fuse_ops, monkeypatch):
    """The prepared supernet with and without recomputation: the same loss, gradients and BN
    statistics, while the BN + ReLU and expansion outputs are gone after the forward pass, with the
    candidates run one by one or merged (``fuse_ops``)."""
    torch.manual_seed(0)
    base = StochasticSuperNet("tiny", None, 10, 8)
    models = {}
    for recompute in (False, True):
        m = copy.deepcopy(base)
        prepare_supernet(m, torch.device("cpu"), recompute=recompute, fuse_ops=fuse_ops)
        for p in m.arch_parameters():
            p.requires_grad_(False)  # a weight step
        models[recompute] = m
    keep, lean = models[False], models[True]
    assert lean.recompute_activations and not keep.recompute_activations
    assert any(type(m) is PointwiseConv2d and m.recompute for m in lean.modules())
    if fuse_ops:
        bn_refs, expansions = _fused_outputs(lean, monkeypatch)
    else:
        bn_refs = _outputs_of(lean, BatchNormReLU2d)
        pw_refs = _outputs_of(lean, PointwiseConv2d)
    x = torch.randn(6, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (6,))
    losses = {}
    for recompute, m in models.items():
        torch.manual_seed(3)  # the same Gumbel noise
        with recomputing(recompute):
            logits, _ = m(x, 2.0)
        if recompute:
            gc.collect()
            if not fuse_ops:
                expansions = [r for conv, r in pw_refs if conv.recompute]
                assert any(r() is not None for conv, r in pw_refs if not conv.recompute)  # kept
                bn_refs = [r for _, r in bn_refs]
            assert bn_refs and all(r() is None for r in bn_refs)  # not kept for backward
            assert expansions and all(r() is None for r in expansions)
        loss = nn.functional.cross_entropy(logits, y)
        loss.backward()
        losses[recompute] = loss.item()
    assert losses[True] == pytest.approx(losses[False], rel=1e-6)
    for (name, p), q in zip(keep.named_parameters(), lean.parameters()):
        if p.requires_grad:
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)
    for (name, v), w in zip(keep.state_dict().items(), lean.state_dict().values()):
        torch.testing.assert_close(w, v, msg=name)


def test_backward_twice_with_retain_graph():
    torch.manual_seed(0)
    m = ConvBNReLU(4, 8, 1)
    fuse_bn_relu(m)
    head = nn.Conv2d(8, 2, 3)
    x = torch.randn(3, 4, 6, 6, requires_grad=True)
    with recomputing():
        out = head(m(x)).square().sum()
    out.backward(retain_graph=True)
    first = x.grad.clone()
    out.backward()
    torch.testing.assert_close(x.grad, 2 * first)


def test_only_weight_steps_of_the_soft_mixture_recompute(monkeypatch):
    """A single path (hard Gumbel, or --w_mixing sampled) keeps one op's activations per layer, so its
    weight steps keep them whatever ``recompute`` says; soft weight steps and theta steps as before."""
    from supernet_functions import training_functions_supernet as tfs
    from supernet_functions.loss import SupernetLoss

    class Costs:
        num_layers = 4

        def latency_vector(self, layer, ops):
            return torch.full((len(ops),), 0.05)

    seen = []
    real = tfs.recomputing

    def spy(enabled=True):
        seen.append(enabled)
        return real(enabled)

    monkeypatch.setattr(tfs, "recomputing", spy)
    x = torch.randn(4, 3, 8, 8)
    y = torch.randint(0, 10, (4,))
    for mixing in ("gumbel", "hard_gumbel"):
        torch.manual_seed(0)
        m = prepare_supernet(
            StochasticSuperNet("tiny", Costs(), 10, 8, mixing=mixing), torch.device("cpu")
        )
        assert m.recompute_activations
        w_opt = torch.optim.SGD(m.weight_parameters(), lr=0.01)
        t_opt = torch.optim.Adam(m.arch_parameters(), lr=0.01)
        tfs.train_weights_epoch(m, [(x, y)], SupernetLoss(), w_opt, 2.0)
        tfs.train_thetas_epoch(m, [(x, y)], SupernetLoss(), t_opt, 2.0)
    assert seen == [
        True,
        False,
        False,
        False,
    ]  # soft weights; soft thetas; hard weights; hard thetas
