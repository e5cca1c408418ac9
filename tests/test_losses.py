"""Losses against hand-computed values and float64 gradcheck."""

import math

import pytest
import torch

from minirlhf.losses import bradley_terry_loss, length_disentangle_loss, sft_loss


def test_sft_loss_only_counts_masked_tokens():
    logits = torch.zeros(1, 3, 4, dtype=torch.float64)
    logits[0, 2, 1] = math.log(3.0)  # position 2: p(label 1) = 3/6
    labels = torch.tensor([[0, 0, 1]])
    mask = torch.tensor([[0, 1, 1]])
    loss, m = sft_loss(logits, labels, mask)
    expected = (math.log(4) + -math.log(3 / 6)) / 2  # uniform at pos 1, 3/6 at pos 2; pos 0 ignored
    assert loss.item() == pytest.approx(expected)
    assert m["tokens"].item() == 2
    changed = logits.clone()
    changed[0, 0] = torch.randn(4, dtype=torch.float64)  # an unmasked position cannot change the loss
    assert sft_loss(changed, labels, mask)[0].item() == pytest.approx(expected)
    # two sequences of 1 and 3 supervised tokens: every token counts once (a per-sequence mean would weigh
    # the lone token as much as the other three together: (log 2 + log 4) / 2 = 1.0397)
    logits = torch.zeros(2, 3, 4, dtype=torch.float64)
    logits[0, 0, 0] = math.log(3.0)  # p(label 0) = 3/6 = 1/2
    loss, m = sft_loss(logits, torch.zeros(2, 3, dtype=torch.long), torch.tensor([[1, 0, 0], [1, 1, 1]]))
    assert loss.item() == pytest.approx((math.log(2) + 3 * math.log(4)) / 4) and m["tokens"].item() == 4


def test_bradley_terry_by_hand():
    c = torch.tensor([2.0, 0.0, 1.0], dtype=torch.float64)
    r = torch.tensor([1.0, 0.0, 3.0], dtype=torch.float64)
    loss, m = bradley_terry_loss(c, r)
    sig = lambda x: 1 / (1 + math.exp(-x))
    expected = -(math.log(sig(1.0)) + math.log(sig(0.0)) + math.log(sig(-2.0))) / 3
    assert loss.item() == pytest.approx(expected)
    assert m["accuracy"].item() == pytest.approx(1 / 3)  # the tie counts as wrong
    margin = torch.tensor([0.5, 0.5, 0.5], dtype=torch.float64)
    expected_m = -(math.log(sig(0.5)) + math.log(sig(-0.5)) + math.log(sig(-2.5))) / 3
    loss_m, m_m = bradley_terry_loss(c, r, margin=margin)
    assert loss_m.item() == pytest.approx(expected_m)
    # the logged margins and accuracy are of the rewards themselves, r_chosen - r_rejected, margin or not
    assert m_m["margins"].tolist() == [1.0, 0.0, -2.0] and m_m["accuracy"].item() == pytest.approx(1 / 3)
    centered = bradley_terry_loss(c, r, center_coef=0.01)[0].item()
    assert centered == pytest.approx(expected + 0.01 * (9 + 0 + 16) / 3)


def test_bradley_terry_soft_labels_by_hand():
    c = torch.tensor([2.0, 0.0, 1.0], dtype=torch.float64)
    r = torch.tensor([1.0, 0.0, 3.0], dtype=torch.float64)
    q = torch.tensor([0.9, 0.5, 0.2], dtype=torch.float64)  # share of annotators who preferred "chosen"
    sig = lambda x: 1 / (1 + math.exp(-x))
    expected = -((0.9 * math.log(sig(1.0)) + 0.1 * math.log(sig(-1.0)))
                 + (0.5 * math.log(sig(0.0)) + 0.5 * math.log(sig(0.0)))
                 + (0.2 * math.log(sig(-2.0)) + 0.8 * math.log(sig(2.0)))) / 3
    assert bradley_terry_loss(c, r, label_prob=q)[0].item() == pytest.approx(expected)
    # q = 1 is the plain loss; q and 1 - q with chosen and rejected swapped are the same pair
    assert bradley_terry_loss(c, r, label_prob=torch.ones(3, dtype=torch.float64))[0].item() == pytest.approx(
        bradley_terry_loss(c, r)[0].item())
    assert bradley_terry_loss(r, c, label_prob=1 - q)[0].item() == pytest.approx(expected)


def test_bradley_terry_soft_labels_minimum_at_the_logit():
    # the soft-label loss of one pair is smallest where sigmoid(r_c - r_r) equals q: d = logit(q)
    q = torch.tensor([0.8], dtype=torch.float64)
    d = torch.tensor([math.log(0.8 / 0.2)], dtype=torch.float64, requires_grad=True)
    bradley_terry_loss(d, torch.zeros(1, dtype=torch.float64), label_prob=q)[0].backward()
    assert abs(d.grad.item()) < 1e-12


def test_bradley_terry_stable_for_large_margins():
    c = torch.tensor([1000.0], dtype=torch.float64)
    r = torch.tensor([-1000.0], dtype=torch.float64)
    assert bradley_terry_loss(c, r)[0].item() == 0.0
    assert bradley_terry_loss(r, c)[0].item() == pytest.approx(2000.0)


def test_gradchecks():
    c = torch.randn(4, dtype=torch.float64, requires_grad=True)
    r = torch.randn(4, dtype=torch.float64, requires_grad=True)
    m = torch.rand(4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a, b: bradley_terry_loss(a, b, m, 0.1)[0], (c, r))
    q = torch.rand(4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a, b: bradley_terry_loss(a, b, m, 0.1, label_prob=q)[0], (c, r))
    logits = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 5, (2, 3))
    mask = torch.tensor([[0, 1, 1], [1, 1, 0]])
    assert torch.autograd.gradcheck(lambda z: sft_loss(z, labels, mask)[0], (logits,))


def test_length_disentangle_loss_by_hand():
    q = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)  # quality head: perfectly anti-correlated with length
    l_ = torch.tensor([1.0, 3.0, 2.0], dtype=torch.float64)  # length head
    n = torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64)  # response lengths
    w_q = torch.tensor([1.0, 2.0], dtype=torch.float64)
    w_l = torch.tensor([3.0, -1.0], dtype=torch.float64)
    loss, m = length_disentangle_loss(q, l_, n, w_q, w_l)
    # |corr(q, n)| = |-1| = 1; corr(l, n): centred (-1, 1, 0).(1, 0, -1) = -1 over 2 -> -0.5; |w_q . w_l| = 1
    assert m["corr_quality_length"].item() == pytest.approx(-1.0)
    assert m["corr_length_head"].item() == pytest.approx(-0.5)
    assert loss.item() == pytest.approx(1.0 + 0.5 + 1.0)
    # the best case: quality uncorrelated with length, length head = length, orthogonal heads -> -1
    best, _ = length_disentangle_loss(torch.tensor([1.0, -2.0, 1.0], dtype=torch.float64), n, n, w_q,
                                      torch.tensor([-2.0, 1.0], dtype=torch.float64))
    assert best.item() == pytest.approx(-1.0)
    args = [torch.randn(6, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    w = [torch.randn(4, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    lengths = torch.arange(6, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a, b, c, d: length_disentangle_loss(a, b, lengths, c, d)[0],
                                    (*args, *w))
