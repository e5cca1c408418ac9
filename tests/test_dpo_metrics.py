"""DPO and KTO metrics and caches against hand computation, with a reference unlike the policy.

The other DPO tests start from policy = reference, where every reward metric is 0. Pinned here: the
reference log-prob cache keyed by the seed and the reference, ties not counted as accuracies, validation
metrics as means over every pair, a pair of exactly block_size + 1 tokens accepted, KTO rewards and DPO
margins by hand, and the count of KTO's mismatched pairs.
"""

import json
import os

import pytest
import torch

from minirlhf import dpo, sft
from minirlhf.chat import render_reply
from minirlhf.checkpoint import load_model
from minirlhf.reward import load_pairs

from test_dpo import dpo_cfg, first_row, sft_done  # noqa: F401
from conftest import QA, write_jsonl


def rows_of(out, stage):
    with open(os.path.join(out, "micro", stage, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_kto_reference_cache_is_keyed_by_the_seed(sft_done, tmp_path):
    """The seed draws KTO's mismatched partners: a second seed in the same folder must not reuse the first
    seed's cached reference log-probs (at step 0 policy == reference, so z0 = 0 and the loss is 1/2)."""
    for seed in (1, 2):
        dpo.run(dpo_cfg(sft_done, tmp_path, loss="kto", seed=seed, run_name="dpo_kseed"))
        row = first_row(sft_done["out"], "kseed")
        assert abs(row["kl"]) < 1e-6 and abs(row["loss"] - 0.5) < 1e-5, (seed, row)


def test_ties_are_not_accuracies(sft_done, tmp_path):
    dpo.run(dpo_cfg(sft_done, tmp_path, precompute_ref=False, run_name="dpo_ties"))
    row = first_row(sft_done["out"], "ties")
    assert row["rewards/margins"] == 0.0 and row["rewards/accuracies"] == 0.0  # policy == reference: all ties


def test_val_metrics_are_means_over_every_val_pair(sft_done, tmp_path):
    """16 validation pairs in batches of 5, 5, 5, 1 (6, 6, 4 would hide the bug by symmetry): val_logps/chosen is the mean over the 16, by hand."""
    c = dpo_cfg(sft_done, tmp_path, batch_size=5, run_name="dpo_valw")
    dpo.run(c)
    last = rows_of(sft_done["out"], "dpo_valw")[-1]
    model, _ = load_model(os.path.join(sft_done["out"], "micro", "dpo_valw", "model.pt"))
    _, val, _ = load_pairs(sft_done["tok"], sft_done["prefs"], sft_done["prefs"], 65, True, "dpo")
    ids, mask = dpo.pad_pairs(val, sft_done["tok"].pad_id, "cpu")
    with torch.no_grad():
        logps, _ = dpo.sequence_logps(model, ids, mask)
    assert last["val_logps/chosen"] == pytest.approx(logps[:len(val)].mean().item(), abs=1e-5)


def test_a_pair_of_block_size_plus_one_tokens_fits(sft_done, tmp_path):
    """The forward pass reads ids[:, :-1]: a sequence of block_size + 1 = 65 tokens fits the micro context."""
    tok = sft_done["tok"]
    prompt = [{"role": "user", "content": "Hi?"}]
    words = ""
    while len(render_reply(tok, prompt, words + "a")[0]) <= 65:
        words += "a "
        if len(render_reply(tok, prompt, words.strip())[0]) == 65:
            break
    assert len(render_reply(tok, prompt, words.strip())[0]) == 65
    rows = [json.loads(line) for line in open(sft_done["prefs"])]
    prefs = write_jsonl(tmp_path / "p65.jsonl", rows + [{"prompt": "Hi?", "chosen": words.strip(), "rejected": "No."}])
    summary = dpo.run(dpo_cfg(sft_done, tmp_path, prefs=prefs, truncate=False, run_name="dpo_p65"))
    assert summary["dropped_pairs"] == 0


def test_kto_rewards_by_hand_with_a_reference_unlike_the_policy(sft_done, tmp_path):
    from minirlhf.data import read_kto

    rows = [{"prompt": q, "completion": a, "label": True} for q, a in QA[:3]] + \
           [{"prompt": QA[3][0], "completion": "No.", "label": False}]
    path = write_jsonl(tmp_path / "kto.jsonl", rows)
    c = dpo_cfg(sft_done, tmp_path, loss="kto", kto_data=path, batch_size=4, grad_accum=2, max_steps=1,
                reference=sft_done["init"], run_name="dpo_krew")
    dpo.run(c)
    row = first_row(sft_done["out"], "krew")
    tok = sft_done["tok"]
    records, _ = dpo.encode_kto(tok, read_kto(path), 65, False, path, c.seed)
    batch = sft.batch_indices(len(records), c.batch_size, 0, c.seed)
    x, m = dpo.pad_pairs([records[i] for i in batch], tok.pad_id, "cpu", dpo.KTO_KEYS)
    policy, _ = load_model(os.path.join(sft_done["out"], "micro", "sft", "model.pt"))
    ref, _ = load_model(sft_done["init"])
    with torch.no_grad():
        r = c.beta * (dpo.sequence_logps(policy, x[:4], m[:4])[0] - dpo.sequence_logps(ref, x[:4], m[:4])[0])
    good = torch.tensor([records[i]["label"] for i in batch])
    assert row["rewards/chosen"] == pytest.approx(r[good].mean().item(), abs=1e-4)
    assert row["rewards/rejected"] == pytest.approx(r[~good].mean().item(), abs=1e-4)


def test_margins_are_chosen_minus_rejected(sft_done, tmp_path):
    dpo.run(dpo_cfg(sft_done, tmp_path, reference=sft_done["init"], run_name="dpo_marg"))
    row = first_row(sft_done["out"], "marg")
    assert abs(row["rewards/margins"]) > 1e-3  # a reference unlike the policy: non-zero rewards
    assert row["rewards/margins"] == pytest.approx(row["rewards/chosen"] - row["rewards/rejected"], abs=1e-5)


def test_kto_cut_mismatched_pairs_are_counted(base, capsys):
    tok = base["tok"]
    a = {"prompt": [{"role": "user", "content": "many words " * 12}], "completion": "Yes.", "label": True}
    b = {"prompt": [{"role": "user", "content": "Hi?"}], "completion": "more words " * 12, "label": False}
    max_len = max(len(render_reply(tok, r["prompt"], r["completion"])[0]) for r in (a, b))
    dpo.encode_kto(tok, [a, b], max_len, False, "rows", seed=0)
    assert "[kto] rows: 1 mismatched" in capsys.readouterr().out


def test_reference_cache_is_keyed_by_the_reference(sft_done, tmp_path):
    """Two references in one folder: each run's step 0 (policy == its reference) is log 2, so the second run
    did not reuse the first reference's cached log-probs."""
    import math
    for model in (None, sft_done["init"]):
        kw = {"init": model, "reference": model} if model else {}
        dpo.run(dpo_cfg(sft_done, tmp_path, run_name="dpo_refkey", **kw))
        assert abs(first_row(sft_done["out"], "refkey")["loss"] - math.log(2)) < 1e-5
