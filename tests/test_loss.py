"""The latency-aware loss (paper Eq. 2) against hand computations, and the table check."""

import math

import pytest
import torch

from supernet_functions.latency.table import LatencyLookupTable
from supernet_functions.loss import (
    SupernetLoss,
    check_cost_table,
    latency_share,
    loss_target,
    min_architecture_cost,
)

LOGITS = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
TARGETS = torch.tensor([0, 2])


def _hand_ce() -> float:
    """Mean cross-entropy written out: -log(exp(z_y) / sum_j exp(z_j))."""
    total = 0.0
    for row, y in zip(LOGITS.tolist(), TARGETS.tolist()):
        total += -(row[y] - math.log(sum(math.exp(z) for z in row)))
    return total / len(TARGETS)


def test_paper_variant_matches_hand_computation():
    latency_ms = 12.5
    loss, ce, term = SupernetLoss(alpha=0.2, beta=0.6)(LOGITS, TARGETS, torch.tensor(latency_ms))
    expected = _hand_ce() * 0.2 * math.log(latency_ms * 1000.0) ** 0.6  # CE * a * log(LAT us)^b
    assert ce.item() == pytest.approx(_hand_ce(), rel=1e-6)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert term.item() == pytest.approx(0.2 * math.log(12500.0) ** 0.6, rel=1e-6)


def test_original_variant_matches_hand_computation():
    latency_ms = 12.5
    loss, _, _ = SupernetLoss(0.2, 0.6, variant="original")(LOGITS, TARGETS, torch.tensor(12.5))
    expected = 0.2 * _hand_ce() * 0.6 * math.log(latency_ms * 1000.0)  # alpha*CE*beta*log(LAT)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_scale_and_fixed_cost_enter_before_the_log():
    loss, _, _ = SupernetLoss(0.5, 1.0, cost_scale=10.0, fixed_cost=3.0)(
        LOGITS, TARGETS, torch.tensor(2.0)
    )
    assert loss.item() == pytest.approx(_hand_ce() * 0.5 * math.log((2.0 + 3.0) * 10.0), rel=1e-6)


def test_per_example_latency_averages_the_products():
    latency = torch.tensor([2.0, 40.0])
    loss, _, _ = SupernetLoss()(LOGITS, TARGETS, latency)
    ce_each = torch.nn.functional.cross_entropy(LOGITS, TARGETS, reduction="none")
    term = 0.2 * torch.log(latency * 1000.0) ** 0.6
    assert loss.item() == pytest.approx((ce_each * term).mean().item(), rel=1e-6)


@pytest.mark.parametrize("variant", ["paper", "original"])
def test_loss_grows_with_latency(variant):
    criterion = SupernetLoss(variant=variant)
    latency = torch.tensor(5.0, requires_grad=True)
    loss, _, _ = criterion(LOGITS, TARGETS, latency)
    loss.backward()
    assert latency.grad.item() > 0
    slower, _, _ = criterion(LOGITS, TARGETS, torch.tensor(50.0))
    assert slower.item() > loss.item()


def _table(value_ms: float, layers: int = 4) -> LatencyLookupTable:
    return LatencyLookupTable.from_latencies(
        "tiny", [{"ir_k3_e1": value_ms, "skip": value_ms * 3} for _ in range(layers)]
    )


def test_table_check_accepts_and_returns_the_cheapest_architecture():
    lut = _table(0.01)
    assert min_architecture_cost(lut) == pytest.approx(0.04)
    assert check_cost_table(lut, cost_scale=1000.0) == pytest.approx(0.04)  # 40 us: log > 0


def test_table_check_refuses_a_non_positive_log():
    lut = _table(0.0001)  # cheapest architecture 0.4 us: log(0.4) < 0
    with pytest.raises(ValueError, match="not positive"):
        check_cost_table(lut, cost_scale=1000.0)
    with pytest.raises(ValueError, match="cost_scale"):
        check_cost_table(_table(0.01), cost_scale=1.0)  # 0.04 "ms" unscaled: log < 0


def test_unknown_variant_is_an_error():
    with pytest.raises(ValueError, match="variant"):
        SupernetLoss(variant="other")


def test_latency_target_is_a_hinge_continuous_at_the_target():
    criterion = SupernetLoss(0.2, 0.6, fixed_cost=1.0, target=5.0)  # LAT + 1 ms vs 5 ms
    for layers_ms, whole_ms in ((2.0, 5.0), (3.0, 5.0), (4.0, 5.0), (9.0, 10.0)):
        latency = torch.tensor(layers_ms, requires_grad=True)
        loss, _, term = criterion(LOGITS, TARGETS, latency)
        assert term.item() == pytest.approx(0.2 * math.log(whole_ms * 1000.0) ** 0.6, rel=1e-6)
        loss.backward()
        if layers_ms + 1.0 < 5.0:  # below the target: no push to a faster network
            assert latency.grad.item() == 0.0
        elif layers_ms > 4.0:  # above: the paper's gradient, d/dLAT of CE * a * log(1000 LAT)^b
            log_lat = math.log(whole_ms * 1000.0)
            want = _hand_ce() * 0.2 * 0.6 * log_lat**-0.4 / whole_ms
            assert latency.grad.item() == pytest.approx(want, rel=1e-5)
    paper, _, _ = SupernetLoss(0.2, 0.6, fixed_cost=1.0)(LOGITS, TARGETS, torch.tensor(9.0))
    hinged, _, _ = criterion(LOGITS, TARGETS, torch.tensor(9.0))
    assert hinged.item() == pytest.approx(paper.item(), rel=1e-7)


def test_loss_target_turns_a_whole_network_budget_into_the_layers_share():
    lut = LatencyLookupTable.from_latencies(
        "tiny", [{"ir_k3_e1": 1.0, "skip": 3.0}] * 4, fixed_ms={"stem": 0.5, "head": 1.5}
    )  # networks 4 + 2 .. 12 + 2 ms
    assert loss_target(0.0, lut) == 0.0
    assert loss_target(10.0, lut) == pytest.approx(8.0)  # LAT sums the layers: T - fixed
    assert loss_target(10.0, lut, include_fixed=True) == pytest.approx(10.0)
    with pytest.raises(ValueError, match="fixed parts"):
        loss_target(2.0, lut)
    with pytest.raises(ValueError, match="0 .off. or positive"):
        loss_target(-1.0, lut)
    flops = LatencyLookupTable.from_latencies("tiny", [{"skip": 3.0}] * 4, cost="flops")
    with pytest.raises(ValueError, match="latency table in ms"):
        loss_target(10.0, flops)


@pytest.mark.parametrize("per_example", [False, True])
def test_latency_share_splits_the_thetas_gradient_into_its_two_parts(per_example):
    """d(CE * term) = term * dCE + CE * dterm: latency_share's gradient is the second part, and the
    rest is the first, computed here on its own."""
    torch.manual_seed(0)
    thetas = torch.randn(3, requires_grad=True)
    lat = torch.tensor([0.4, 0.9, 1.7])
    feats = torch.randn(6, 3, 4)
    y = torch.randint(0, 4, (6,))

    def forward():
        m = torch.softmax(thetas, 0)
        logits = torch.einsum("k,bkc->bc", m, feats)
        latency = (m @ lat).expand(6) * torch.linspace(0.9, 1.1, 6) if per_example else m @ lat
        return logits, latency

    crit = SupernetLoss(alpha=0.3, beta=0.7)
    logits, latency = forward()
    total = torch.autograd.grad(crit(logits, y, latency)[0], thetas)[0]
    logits, latency = forward()
    pull = torch.autograd.grad(latency_share(crit, logits, y, latency), thetas)[0]
    logits, latency = forward()
    term = crit.latency_term(latency).detach()
    ce = torch.nn.functional.cross_entropy(logits, y, reduction="none" if per_example else "mean")
    ce_part = torch.autograd.grad((ce * term).mean(), thetas)[0]
    torch.testing.assert_close(pull + ce_part, total)
    assert pull.norm() > 0 and ce_part.norm() > 0
    # below a target the hinge holds the latency term constant: no latency part
    hinged = SupernetLoss(alpha=0.3, beta=0.7, target=5.0)
    logits, latency = forward()
    zero = torch.autograd.grad(latency_share(hinged, logits, y, latency), thetas)[0]
    assert torch.equal(zero, torch.zeros(3))


def test_ce_variant_is_the_cross_entropy_with_no_latency_pull():
    """variant "ce": the loss equals F.cross_entropy bit for bit and the thetas' gradient through
    the latency is exactly zero (not NaN), also at a latency of 0 where log would be -inf."""
    torch.manual_seed(0)
    logits, targets = torch.randn(5, 10), torch.randint(0, 10, (5,))
    thetas = torch.zeros(3, requires_grad=True)
    for costs in (torch.zeros(3), torch.tensor([1.0, 2.0, 3.0])):
        latency = torch.softmax(thetas, 0) @ costs
        loss, ce, term = SupernetLoss(variant="ce")(logits, targets, latency)
        assert torch.equal(loss, torch.nn.functional.cross_entropy(logits, targets))
        assert torch.equal(ce, loss) and float(term.detach()) == 1.0
        (grad,) = torch.autograd.grad(loss, thetas)
        assert torch.equal(grad, torch.zeros(3))
