"""PathSGD: only the recorded path moves (value and momentum), full use equals torch SGD; lr_at's shape."""
from __future__ import annotations

import math

import pytest
import torch

from scalenas.train.optim import PathSGD, lr_at, masks_from_record

LR, MOM, WD = 0.1, 0.9, 1e-2


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().view(torch.int32)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(bits(a), bits(b))


def make():
    g = torch.Generator().manual_seed(0)
    w = torch.nn.Parameter(torch.randn(4, 3, 2, generator=g))   # sliced along its first two dims
    v = torch.nn.Parameter(torch.randn(5, generator=g))         # gets a gradient but is not on the path
    u = torch.nn.Parameter(torch.randn(3, generator=g))         # never gets a gradient
    opt = PathSGD([{"params": [w, v, u], "weight_decay": WD}], lr=LR, momentum=MOM, nesterov=True,
                  weight_decay=WD)
    return w, v, u, opt


def step(opt, params, record, seed):
    g = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)  # dense gradients: the mask alone must protect entries
    opt.set_masks(masks_from_record(record))
    opt.step()


def test_entries_off_the_path_stay_bit_identical_including_earlier_paths():
    w, v, u, opt = make()
    # Step 1: rows 0..1, columns 0..1 of w are on the path.
    w0, v0, u0 = w.detach().clone(), v.detach().clone(), u.detach().clone()
    step(opt, [w, v], [(w, (slice(0, 2), slice(0, 2)))], seed=1)
    on1 = torch.zeros(4, 3, dtype=torch.bool)
    on1[0:2, 0:2] = True
    assert same_bits(w[~on1], w0[~on1]), "an entry off the path moved"
    assert not torch.equal(w[on1], w0[on1])
    buf = opt.state[w]["momentum_buffer"]
    assert torch.count_nonzero(buf[~on1]) == 0, "momentum accumulated off the path"
    assert same_bits(v, v0) and "momentum_buffer" not in opt.state[v], "a parameter off the path moved"
    assert same_bits(u, u0) and u not in opt.state
    # Step 2: a different slice (rows 2..3, the right side); the entries of step 1 now have momentum and
    # weight decay to leak, and must not move.
    w1, buf1 = w.detach().clone(), buf.clone()
    step(opt, [w, v], [(w, (slice(2, 4),)), (w, (slice(2, 4), slice(1, 3)))], seed=2)
    on2 = torch.zeros(4, 3, dtype=torch.bool)
    on2[2:4] = True
    assert same_bits(w[~on2], w1[~on2]), "an op sampled earlier kept moving (momentum / weight decay leak)"
    assert same_bits(opt.state[w]["momentum_buffer"][~on2], buf1[~on2]), "momentum buffer changed off the path"
    assert not torch.equal(w[on2], w1[on2])
    assert same_bits(v, v0) and same_bits(u, u0)
    # Step 3: nothing of w on the path (only v, in full): w and its buffer frozen, v moves.
    w2, buf2 = w.detach().clone(), opt.state[w]["momentum_buffer"].clone()
    step(opt, [w, v], [(v, ())], seed=3)
    assert same_bits(w, w2) and same_bits(opt.state[w]["momentum_buffer"], buf2)
    assert not torch.equal(v, v0)


def test_masks_from_record_union_and_full():
    p = torch.nn.Parameter(torch.zeros(4, 3))
    q = torch.nn.Parameter(torch.zeros(2))
    m = masks_from_record([(p, (slice(0, 1),)), (p, (slice(3, 4), slice(0, 2))), (q, ()), (q, (slice(0, 1),))])
    assert m[id(q)] is None  # used in full once: full
    assert m[id(p)].tolist() == [[True] * 3, [False] * 3, [False] * 3, [True, True, False]]
    assert masks_from_record([(p, (slice(None), slice(None)))])[id(p)] is None


@pytest.mark.parametrize("nesterov", [True, False])
def test_full_use_equals_torch_sgd(nesterov):
    g = torch.Generator().manual_seed(3)
    a = torch.nn.Parameter(torch.randn(6, 5, generator=g))
    b = torch.nn.Parameter(a.detach().clone())
    ours = PathSGD([a], lr=LR, momentum=MOM, nesterov=nesterov, weight_decay=WD)
    ref = torch.optim.SGD([b], lr=LR, momentum=MOM, nesterov=nesterov, weight_decay=WD, foreach=False)
    for k in range(6):
        grad = torch.randn(a.shape, generator=g)
        lr = lr_at(k, 6, LR, 2)
        for o in (ours, ref):
            o.param_groups[0]["lr"] = lr
        a.grad, b.grad = grad.clone(), grad.clone()
        ours.set_masks({id(a): None})
        ours.step()
        ref.step()
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.testing.assert_close(ours.state[a]["momentum_buffer"], ref.state[b]["momentum_buffer"],
                                   rtol=0, atol=0)


def test_no_masks_means_plain_sgd_on_every_grad():
    a = torch.nn.Parameter(torch.ones(3))
    opt = PathSGD([a], lr=0.5, momentum=0.0, nesterov=False, weight_decay=0.0)
    a.grad = torch.ones(3)
    opt.set_masks(None)
    opt.step()
    assert a.tolist() == [0.5, 0.5, 0.5]


def test_lr_at_warmup_then_cosine():
    base, total, warm = 0.4, 100, 10
    lrs = [lr_at(s, total, base, warm) for s in range(total + 1)]
    assert lrs[0] == pytest.approx(base / warm)
    assert all(b > a for a, b in zip(lrs[:warm - 1], lrs[1:warm]))       # linear ramp up
    assert lrs[warm - 1] == pytest.approx(base) and lrs[warm] == pytest.approx(base)
    assert all(b <= a for a, b in zip(lrs[warm:], lrs[warm + 1:]))        # cosine decay, monotone
    mid = warm + (total - warm) // 2
    assert lrs[mid] == pytest.approx(base / 2)
    assert lrs[total] == pytest.approx(0.0, abs=1e-12)
    assert lr_at(total + 50, total, base, warm) == pytest.approx(0.0, abs=1e-12)  # clamped past the end
    assert lr_at(0, total, base, 0) == pytest.approx(base)
    assert lr_at(45, 100, 1.0, 10, final_lr=0.1) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 35 / 90)))


def test_path_adamw_full_use_equals_torch_adamw_and_masks_freeze_the_rest():
    from scalenas.train.optim import PathAdamW

    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(4, 3))
    b = torch.nn.Parameter(a.detach().clone())
    ours = PathAdamW([a], lr=1e-2, weight_decay=0.05)
    ref = torch.optim.AdamW([b], lr=1e-2, weight_decay=0.05)
    for k in range(5):
        g = torch.randn(4, 3, generator=torch.Generator().manual_seed(k))
        a.grad, b.grad = g.clone(), g.clone()
        ours.set_masks(None)
        ours.step()
        ref.step()
    assert torch.allclose(a, b, atol=1e-6)

    # a mask on the first two rows: the other rows (value and moments) stay bit-identical
    c = torch.nn.Parameter(torch.randn(4, 3))
    opt = PathAdamW([c], lr=1e-2, weight_decay=0.05)
    before = c.detach().clone()
    mask = torch.tensor([True, True, False, False])
    for k in range(3):
        c.grad = torch.randn(4, 3)
        opt.set_masks({id(c): mask})
        opt.step()
    assert torch.equal(c[2:], before[2:]) and not torch.equal(c[:2], before[:2])
    st = opt.state[c]
    assert torch.equal(st["step"][2:], torch.zeros(2, 3)) and torch.equal(st["step"][:2], torch.full((2, 3), 3.0))
    assert torch.equal(st["exp_avg"][2:], torch.zeros(2, 3))
