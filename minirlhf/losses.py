"""Losses as pure functions of tensors: each returns `(loss, metrics)`.

`loss` is a scalar mean over the batch; `metrics` is a dict of detached tensors (per-example where the
name says so). Each docstring names the paper and equation it implements, so a reader can check the
code against the source line by line.

Deliberate simplifications: no reduction options -- every loss is a mean over examples; callers that
need another weighting compute it from the returned per-example metrics.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from minirlhf.ops import masked_mean, upcast


def sft_loss(logits, labels, loss_mask):
    """Supervised fine-tuning: next-token cross-entropy on the masked (assistant) tokens only.

    logits: (B, T, V) where position t predicts labels[:, t]; labels: (B, T); loss_mask: (B, T), 1 on the
    assistant's tokens and its closing <|end|>. The mean is over supervised tokens of the whole batch
    (each token counts once), as in InstructGPT's SFT (Ouyang et al. 2022, §3.5).
    """
    nll = F.cross_entropy(upcast(logits).flatten(0, 1), labels.flatten(), reduction="none").view_as(labels)  # (B, T)
    loss = masked_mean(nll, loss_mask)
    return loss, {"nll_per_example": masked_mean(nll, loss_mask, dim=1).detach(),
                  "tokens": loss_mask.sum().detach()}


def bradley_terry_loss(chosen_rewards, rejected_rewards, margin=None, center_coef: float = 0.0):
    """Reward-model loss: -log sigmoid(r_chosen - r_rejected - margin), mean over pairs.

    Bradley & Terry (1952); as the reward-model loss in Ouyang et al. 2022, eq. (1), and Stiennon et al.
    2020, eq. (1). `margin` (B,) is Llama 2's margin term (Touvron et al. 2023, eq. (2)): a pair labelled
    with more confidence must be separated by more. `center_coef` adds `center_coef * mean((r_c + r_r)^2)`
    (Eisenstein et al. 2023) so that rewards stay near 0 -- the loss alone is shift invariant.

    Metrics: `accuracy` (chosen strictly above rejected; ties count as wrong), `margins` per pair.
    """
    diff = chosen_rewards - rejected_rewards  # (B,)
    if margin is not None:
        diff = diff - margin
    loss = -F.logsigmoid(diff).mean()
    if center_coef:
        loss = loss + center_coef * ((chosen_rewards + rejected_rewards) ** 2).mean()
    margins = (chosen_rewards - rejected_rewards).detach()
    return loss, {"accuracy": (margins > 0).float().mean(), "margins": margins,
                  "chosen_rewards": chosen_rewards.detach(), "rejected_rewards": rejected_rewards.detach()}
