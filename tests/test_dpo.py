"""The DPO stage: log 2 at the first step, precomputed reference log-probs equal on-the-fly ones, every
paired loss runs, and the sequence log-prob sums exactly the assistant tokens."""

import json
import math
import os

import pytest
import torch

from minirlhf import dpo, sft
from minirlhf.config import DPOConfig, SFTConfig, make_config
from minirlhf.ops import logprobs_from_logits
from minirlhf.tokenizer import render_conversation

from test_sft_reward import base  # noqa: F401  (the shared micro fixture)


@pytest.fixture(scope="module")
def sft_done(base):  # noqa: F811
    sft.run(make_config(SFTConfig, overrides=dict(preset="micro", out_dir=base["out"], init=base["init"],
                                                  data=base["sft"], eval_data=base["sft"], max_steps=3,
                                                  progress=False)))
    return base


def dpo_cfg(base, tmp_path, **kw):  # noqa: F811
    over = dict(preset="micro", out_dir=base["out"], prefs=base["prefs"], eval_prefs=base["prefs"], max_steps=1,
                batch_size=8, log_interval=1, eval_interval=1000, progress=False, force=True)
    return make_config(DPOConfig, overrides={**over, **kw})


def first_row(out_dir, loss="dpo"):
    stage = "dpo" if loss == "dpo" else f"dpo_{loss}"
    with open(os.path.join(out_dir, "micro", stage, "metrics.jsonl")) as f:
        return json.loads(f.readline())


def test_first_step_is_log2_and_precomputed_reference_matches_on_the_fly(sft_done, tmp_path):
    dpo.run(dpo_cfg(sft_done, tmp_path, precompute_ref=True))
    pre = first_row(sft_done["out"])
    dpo.run(dpo_cfg(sft_done, tmp_path, precompute_ref=False))
    fly = first_row(sft_done["out"])
    assert abs(pre["loss"] - math.log(2)) < 1e-5  # policy == reference at step 0
    assert abs(pre["loss"] - fly["loss"]) < 1e-6
    assert abs(pre["rewards/margins"]) < 1e-5 and abs(fly["rewards/margins"]) < 1e-5


@pytest.mark.parametrize("loss", ["cdpo", "ipo", "simpo", "orpo"])
def test_every_paired_loss_runs(sft_done, tmp_path, loss):
    summary = dpo.run(dpo_cfg(sft_done, tmp_path, loss=loss, max_steps=2))
    assert summary["loss"] == loss and math.isfinite(summary["val_loss"])


def test_sequence_logps_sum_exactly_the_assistant_tokens(base):  # noqa: F811
    from minirlhf.checkpoint import load_model

    model, _ = load_model(base["init"])
    model = model.double()
    tok = base["tok"]
    ids, mask = render_conversation(tok, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there"}])
    pairs = [{"chosen": ids, "rejected": ids, "chosen_mask": mask, "rejected_mask": mask}]
    x, m = dpo.pad_pairs(pairs, tok.pad_id, "cpu")
    total, count = dpo.sequence_logps(model, x, m)
    logits = model(torch.tensor([ids[:-1]]))
    per_token = logprobs_from_logits(logits, torch.tensor([ids[1:]]))[0]
    expected = sum(per_token[t - 1].item() for t in range(1, len(ids)) if mask[t])
    assert abs(total[0].item() - expected) < 1e-10 and count[0].item() == sum(mask)


def test_unknown_loss_is_a_clear_error(sft_done, tmp_path):
    with pytest.raises(ValueError, match="--loss='kto2'"):
        dpo.run(dpo_cfg(sft_done, tmp_path, loss="kto2"))
