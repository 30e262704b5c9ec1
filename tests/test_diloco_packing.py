"""The outer gradient on the wire (mingpt/distributed/diloco/packing.py), without torchft: packing
to bf16 and int8 and back, int8's error feedback, and a packed exchange of n workers carried by
hand (the all-to-all and the all-gather), which gives every worker the same mean, bit for bit,
within one step of the packing's rounding."""
import pytest
import torch

from helpers import PACKING_PRECISION, ULPS_OP
from mingpt.distributed.diloco.packing import PackedExchange, combine, pack, unpack



@pytest.mark.parametrize("packing, bytes_per_value", [("bf16", 2), ("int8", 1)])
def test_packing_round_trips_within_one_step_of_its_rounding(packing, bytes_per_value):
    x = torch.randn(1001) * 3e-3
    payload = pack(x, packing)
    assert payload.dtype == torch.uint8 and payload.numel() == 1001 * bytes_per_value + (4 if packing == "int8" else 0)
    assert (unpack(payload, packing) - x).abs().max() <= PACKING_PRECISION[packing] * x.abs().max()


def test_int8_error_feedback_keeps_the_rounding_from_building_up():
    """Sent as int8 over many rounds, the sum of what arrives stays within one rounding step of
    the sum of what was sent: what rounding drops one round goes out with the next (the
    residual), so the difference is the last residual, up to fp32's rounding of the sums."""
    torch.manual_seed(0)
    residual, sent, arrived = torch.zeros(1000), torch.zeros(1000), torch.zeros(1000)
    for _ in range(50):
        g = torch.randn(1000) * 1e-3
        sent += g
        arrived += unpack(pack(g, "int8", residual), "int8")
    sums_rounding = 50 * ULPS_OP * torch.finfo(torch.float32).eps * sent.abs().max()
    assert ((sent - arrived) - residual).abs().max() <= sums_rounding
    assert (sent - arrived).abs().max() <= PACKING_PRECISION["int8"] * g.abs().max()  # one step, not fifty


def test_contributions_combine_in_rank_order_into_their_mean_or_sum():
    parts = [torch.randn(7) for _ in range(3)]
    assert torch.equal(combine(parts, average=False), parts[0] + parts[1] + parts[2])
    assert torch.equal(combine(parts, average=True), (parts[0] + parts[1] + parts[2]) / 3)


@pytest.mark.parametrize("packing", ["bf16", "int8"])
@pytest.mark.parametrize("n, numel", [(2, 10), (3, 10), (4, 3)])
def test_a_packed_exchange_gives_every_worker_the_same_mean(packing, n, numel):
    torch.manual_seed(n)
    grads = [torch.randn(numel) * 1e-2 for _ in range(n)]
    workers = [PackedExchange(packing) for _ in range(n)]
    outgoing = [w.outgoing(g, n, fragment=0) for w, g in zip(workers, grads)]  # worker i's n segments
    # the all-to-all: worker j receives every worker's j-th segment; each combines its own
    combined = [w.combined([outgoing[i][j] for i in range(n)], fragment=0, average=True) for j, w in enumerate(workers)]
    results = [w.incoming(combined, numel) for w in workers]  # the all-gather: every combined segment
    assert all(torch.equal(r, results[0]) for r in results)  # bit for bit
    mean = sum(grads) / n
    largest = max(g.abs().max() for g in grads)
    assert (results[0] - mean).abs().max() <= 2 * PACKING_PRECISION[packing] * largest  # packed twice
    assert all(len(parts) == n and len({p.numel() for p in parts}) == 1 for parts in outgoing)


def test_only_bf16_and_int8_are_packed_exchanges():
    with pytest.raises(ValueError, match="'bf16' or 'int8'"):
        PackedExchange("fp32")
