"""The DPO stage: log 2 at the first step, precomputed reference log-probs equal on-the-fly ones, every
paired loss runs, and the sequence log-prob sums exactly the assistant tokens."""

import json
import math
import os
import re

import pytest
import torch

from minirlhf import dpo, sft
from minirlhf.chat import render_conversation, render_reply
from minirlhf.config import DPOConfig, SFTConfig, make_config
from minirlhf.ops import logprobs_from_logits

from conftest import QA, write_jsonl


@pytest.fixture(scope="module")
def sft_done(base):
    sft.run(make_config(SFTConfig, overrides=dict(preset="micro", out_dir=base["out"], init=base["init"],
                                                  data=base["sft"], eval_data=base["sft"], max_steps=3,
                                                  progress=False)))
    return base


def dpo_cfg(base, tmp_path, **kw):
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


def test_orpo_from_the_base_model_starts_its_chat_tokens_as_sft_does(sft_done, tmp_path):
    """ORPO folds SFT in, so from a pretrained model its chat tokens start from the forum's markers (the mean
    embedding of "Q:", "\\nA:", "\\n"), as SFT's do, not from rows pretraining never trained; a run from SFT keeps
    them as they are."""
    from minirlhf.checkpoint import load_model

    base_wte = load_model(sft_done["init"])[0].transformer.wte.weight.detach()  # (V, C)
    tok = sft_done["tok"]
    dpo.run(dpo_cfg(sft_done, tmp_path, loss="orpo", init=sft_done["init"], lr=1e-9, run_name="orpo_init"))
    wte = load_model(os.path.join(sft_done["out"], "micro", "orpo_init", "model.pt"))[0].transformer.wte.weight
    for token_id, text in ((tok.user_id, "Q:"), (tok.assistant_id, "\nA:"), (tok.end_id, "\n")):
        by_hand = base_wte[tok.encode(text)].mean(0)  # (C,)
        assert (wte[token_id] - by_hand).abs().max().item() < 1e-6, text
        assert (base_wte[token_id] - by_hand).abs().max().item() > 1e-3, text  # a real change
    sft_model = os.path.join(sft_done["out"], "micro", "sft", "model.pt")
    dpo.run(dpo_cfg(sft_done, tmp_path, loss="orpo", init=sft_model, lr=1e-9, run_name="orpo_sft"))
    wte = load_model(os.path.join(sft_done["out"], "micro", "orpo_sft", "model.pt"))[0].transformer.wte.weight
    sft_wte = load_model(sft_model)[0].transformer.wte.weight
    assert (wte[tok.end_id] - sft_wte[tok.end_id]).abs().max().item() < 1e-6


def test_sequence_logps_sum_exactly_the_assistant_tokens(base):
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


def test_rpo_alpha_adds_the_chosen_per_token_nll_by_hand():
    """DPO + alpha * NLL (RPO): two pairs written out by hand, beta 0.1, alpha 0.5."""
    cfg = DPOConfig(beta=0.1, rpo_alpha=0.5)
    pc, pr = torch.tensor([-4.0, -6.0]), torch.tensor([-5.0, -5.0])  # summed log-probs
    nc, nr = torch.tensor([2.0, 3.0]), torch.tensor([4.0, 4.0])  # token counts
    ref = torch.tensor([-5.0, -5.0])
    loss, m = dpo.preference_loss("dpo", cfg, pc, pr, nc, nr, ref, ref)
    # h = (pc - ref) - (pr - ref) = [1, -1]; DPO = mean(-log sigmoid(0.1 h)); NLL = mean(4 / 2, 6 / 3) = 2
    dpo_part = (math.log1p(math.exp(-0.1)) + math.log1p(math.exp(0.1))) / 2
    assert loss.item() == pytest.approx(dpo_part + 0.5 * 2.0, abs=1e-6)
    assert m["chosen_nll"].item() == pytest.approx(2.0)
    plain, m0 = dpo.preference_loss("dpo", DPOConfig(beta=0.1), pc, pr, nc, nr, ref, ref)
    assert plain.item() == pytest.approx(dpo_part, abs=1e-6) and "chosen_nll" not in m0


def test_every_loss_gets_its_own_inputs_by_hand():
    """preference_loss's wiring, two pairs with unequal token counts (nc != nr) and tau != beta: DPO, cDPO
    and IPO see summed log-probs (IPO with tau), SimPO and ORPO per-token means, ORPO's NLL term the
    chosen responses' per-token NLL. Each is written out by hand and checked against the pure loss as well."""
    from minirlhf import losses as L

    d = torch.float64
    cfg = DPOConfig(beta=0.1, tau=0.3, label_smoothing=0.2, simpo_beta=2.0, simpo_gamma=0.5, orpo_lambda=0.25)
    pc, pr = torch.tensor([-4.0, -6.0], dtype=d), torch.tensor([-9.0, -5.0], dtype=d)  # summed log-probs
    nc, nr = torch.tensor([2.0, 4.0], dtype=d), torch.tensor([3.0, 5.0], dtype=d)  # token counts
    rc, rr = torch.tensor([-5.0, -5.5], dtype=d), torch.tensor([-8.0, -6.5], dtype=d)  # reference, summed
    softplus = lambda z: math.log1p(math.exp(z))  # noqa: E731  (-log sigmoid(-z))
    h = [(-4.0 + 5.0) - (-9.0 + 8.0), (-6.0 + 5.5) - (-5.0 + 6.5)]  # DPO's h on sums: [2.0, -2.0]
    c, r = [-4.0 / 2, -6.0 / 4], [-9.0 / 3, -5.0 / 5]  # per-token means: [-2, -1.5] and [-3, -1]

    def check(name, by_hand, pure):
        loss, _ = dpo.preference_loss(name, cfg, pc, pr, nc, nr, rc, rr)
        assert loss.item() == pytest.approx(by_hand, abs=1e-12), name
        assert loss.item() == pytest.approx(pure[0].item(), abs=1e-12), name

    check("dpo", sum(softplus(-0.1 * x) for x in h) / 2, L.dpo_loss(pc, pr, rc, rr, 0.1))
    check("cdpo", sum(0.8 * softplus(-0.1 * x) + 0.2 * softplus(0.1 * x) for x in h) / 2,
          L.dpo_loss(pc, pr, rc, rr, 0.1, label_smoothing=0.2))
    check("ipo", sum((x - 1 / (2 * 0.3)) ** 2 for x in h) / 2, L.ipo_loss(pc, pr, rc, rr, 0.3))
    check("simpo", sum(softplus(-(2.0 * (a - b) - 0.5)) for a, b in zip(c, r)) / 2,
          L.simpo_loss(pc / nc, pr / nr, 2.0, 0.5))
    log_odds = lambda p: p - math.log(1 - math.exp(p))  # noqa: E731
    nll = -(c[0] + c[1]) / 2  # the chosen responses' per-token NLL, mean over pairs: 1.75
    check("orpo", nll + 0.25 * sum(softplus(-(log_odds(a) - log_odds(b))) for a, b in zip(c, r)) / 2,
          L.orpo_loss(pc / nc, pr / nr, -(pc / nc), 0.25))


def test_rpo_alpha_is_refused_where_it_does_not_apply(sft_done, tmp_path):
    with pytest.raises(ValueError, match="--rpo_alpha=1.0.*--loss=orpo"):
        dpo.run(dpo_cfg(sft_done, tmp_path, loss="orpo", rpo_alpha=1.0))
    with pytest.raises(ValueError, match="--rpo_alpha=-1.0: must be >= 0"):
        dpo.run(dpo_cfg(sft_done, tmp_path, rpo_alpha=-1.0))
    summary = dpo.run(dpo_cfg(sft_done, tmp_path, loss="cdpo", rpo_alpha=1.0, max_steps=2))
    assert math.isfinite(summary["val_loss"])
    assert "nll/chosen" in first_row(sft_done["out"], "cdpo")


def test_unknown_loss_is_a_clear_error(sft_done, tmp_path):
    with pytest.raises(ValueError, match="--loss='kto2'"):
        dpo.run(dpo_cfg(sft_done, tmp_path, loss="kto2"))


def test_kto_first_step_is_half_and_precomputed_reference_matches(sft_done, tmp_path):
    """policy == reference: every log-ratio is 0 and z0 = 0, so each example's loss is sigmoid(0) = 1/2."""
    dpo.run(dpo_cfg(sft_done, tmp_path, loss="kto", precompute_ref=True))
    pre = first_row(sft_done["out"], "kto")
    dpo.run(dpo_cfg(sft_done, tmp_path, loss="kto", precompute_ref=False))
    fly = first_row(sft_done["out"], "kto")
    assert abs(pre["loss"] - 0.5) < 1e-5 and abs(pre["kl"]) < 1e-6
    assert abs(pre["loss"] - fly["loss"]) < 1e-6


def test_kto_weights_scale_the_first_step(sft_done, tmp_path):
    """At step 0 every example's loss is lambda_y / 2, so the loss is the batch mean of lambda_y / 2: on a hand-written
    file of 5 desirable and 3 undesirable examples, one batch of all 8, (5 * 2.0 / 2 + 3 * 1.0 / 2) / 8 = 0.8125."""
    path = tmp_path / "kto.jsonl"
    labels = [True, False, True, True, False, True, False, True]
    path.write_text("".join(json.dumps({"prompt": f"Question {i}?", "completion": f"Answer {i}.", "label": y}) + "\n"
                            for i, y in enumerate(labels)))
    dpo.run(dpo_cfg(sft_done, tmp_path, loss="kto", kto_data=str(path), batch_size=8, kto_desirable_weight=2.0,
                    kto_undesirable_weight=1.0))
    assert abs(first_row(sft_done["out"], "kto")["loss"] - 0.8125) < 1e-5


def test_kto_on_a_user_file_and_batch_of_one_is_refused(sft_done, tmp_path):
    path = tmp_path / "kto.jsonl"
    rows = [{"prompt": "What is 2 + 2?", "completion": "4.", "label": True},
            {"prompt": "What is 2 + 2?", "completion": "5, I think.", "label": False},
            {"prompt": "Say hi.", "completion": "Hi!", "label": True},
            {"prompt": "Say hi.", "completion": "No.", "label": False}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = dpo.run(dpo_cfg(sft_done, tmp_path, loss="kto", kto_data=str(path), batch_size=4, max_steps=2))
    assert summary["loss"] == "kto" and math.isfinite(summary["val_loss"])
    with pytest.raises(ValueError, match="at least 2 examples per micro-batch"):
        dpo.run(dpo_cfg(sft_done, tmp_path, loss="kto", batch_size=1))


def test_kto_mismatched_partners_pair_each_prompt_with_another_completion(base):
    tok = base["tok"]
    rows = [{"prompt": [{"role": "user", "content": f"q{i}"}], "completion": f"answer number {i}", "label": i % 2 == 0}
            for i in range(7)]
    records, dropped = dpo.encode_kto(tok, rows, 10_000, False, "rows", seed=3)
    assert dropped == 0 and len(records) == 7
    partners = []
    for i, r in enumerate(records):
        text = tok.decode(r["mismatched"])
        assert f"q{i}" in text and f"answer number {i}" not in text  # own prompt, someone else's completion
        partners.append(next(j for j in range(7) if f"answer number {j}" in text))
    assert sorted(partners) == list(range(7))  # every completion is used exactly once as a partner


def test_over_long_and_identical_pairs_are_refused_or_dropped_and_counted(sft_done, tmp_path):
    """Without --truncate an over-long pair is an error naming it; with it, over-long and identical pairs
    are dropped and their number lands in the summary."""
    rows = [json.loads(line) for line in open(sft_done["prefs"])]
    long_pair = {**rows[0], "chosen": "word " * 400}  # far past the micro context
    same = {**rows[1], "rejected": rows[1]["chosen"]}
    too_long, both = tmp_path / "long.jsonl", tmp_path / "both.jsonl"
    too_long.write_text("".join(json.dumps(r) + "\n" for r in rows + [long_pair]))
    both.write_text("".join(json.dumps(r) + "\n" for r in rows + [long_pair, same]))
    with pytest.raises(ValueError, match=rf"long.jsonl:{len(rows) + 1}: the pair renders to \d+ tokens"):
        dpo.run(dpo_cfg(sft_done, tmp_path, prefs=str(too_long), truncate=False, run_name="dpo_bad"))
    with pytest.raises(ValueError, match=rf"both.jsonl:{len(rows) + 2}: .*identical"):
        dpo.run(dpo_cfg(sft_done, tmp_path, prefs=str(both), truncate=False, run_name="dpo_bad"))
    path = both
    summary = dpo.run(dpo_cfg(sft_done, tmp_path, prefs=str(path), truncate=True, run_name="dpo_bad"))
    assert summary["dropped_pairs"] == 2


def kto_rows(n, long_at=()):
    return [{"prompt": [{"role": "user", "content": f"Question {i}?"}],
             "completion": "word " * 200 if i in long_at else f"Short answer {i}.", "label": i % 2 == 0}
            for i in range(n)]


def test_kto_one_over_long_example_drops_only_itself(base):
    """Partners are assigned among the examples that fit: one long example drops itself, not its partner too."""
    tok = base["tok"]
    rows = kto_rows(10, long_at={3})
    records, dropped = dpo.encode_kto(tok, rows, 65, True, "rows", seed=1337)
    assert dropped == 1 and len(records) == 9
    kept = [i for i in range(10) if i != 3]
    partners = []
    for i, r in zip(kept, records):
        text = tok.decode(r["mismatched"])
        assert f"Question {i}?" in text and f"Short answer {i}." not in text and "word" not in text
        partners.append(next(j for j in kept if f"Short answer {j}." in text))
    assert sorted(partners) == kept  # every kept completion is used once as a partner
    with pytest.raises(ValueError, match=r"^rows:4: the undesirable example renders to \d+ tokens"):
        dpo.encode_kto(tok, [{**r, "line": k + 1} for k, r in enumerate(rows)], 65, False, "rows", seed=1337)


def test_kto_mismatched_pair_longer_than_the_context_is_cut(base):
    """Each example fits alone, but a long prompt with the other's long completion does not: cut to the context."""
    tok = base["tok"]
    a = {"prompt": [{"role": "user", "content": "many words " * 12}], "completion": "Yes.", "label": True}
    b = {"prompt": [{"role": "user", "content": "Hi?"}], "completion": "more words " * 12, "label": False}
    own = [render_reply(tok, r["prompt"], r["completion"])[0] for r in (a, b)]
    full = render_reply(tok, a["prompt"], b["completion"])  # a's prompt, b's completion
    max_len = max(len(x) for x in own)
    assert len(full[0]) > max_len  # the setting of the test
    records, dropped = dpo.encode_kto(tok, [a, b], max_len, False, "rows", seed=0)
    assert dropped == 0 and [r["completion"] for r in records] == own
    assert records[0]["mismatched"] == full[0][:max_len] and records[0]["mismatched_mask"] == full[1][:max_len]
    assert sum(records[0]["mismatched_mask"]) > 0


def test_kto_masks_cover_only_the_final_reply(base):
    tok = base["tok"]
    prompt = [{"role": "user", "content": "Hi there."}, {"role": "assistant", "content": "Hello! How can I help?"},
              {"role": "user", "content": "What is two plus three?"}]
    rows = [{"prompt": prompt, "completion": "Five.", "label": True},
            {"prompt": prompt, "completion": "Seven, I think.", "label": False}]
    records, _ = dpo.encode_kto(tok, rows, 1000, False, "rows", seed=0)
    n_five, n_seven = len(tok.encode("Five.")) + 1, len(tok.encode("Seven, I think.")) + 1  # + <|end|>
    assert sum(records[0]["completion_mask"]) == n_five and sum(records[0]["mismatched_mask"]) == n_seven
    assert sum(records[1]["completion_mask"]) == n_seven and sum(records[1]["mismatched_mask"]) == n_five


def test_kto_from_pairs_identical_and_over_long_pairs(base, tmp_path):
    """KTO on preference pairs: an identical pair is an error unless --truncate (then dropped and counted), and an
    over-long response is named by its line in the pairs file."""
    good = [{"prompt": q, "chosen": a, "rejected": "No."} for q, a in QA]
    same = {"prompt": "Same?", "chosen": "Same.", "rejected": "Same."}
    prefs = write_jsonl(tmp_path / "prefs.jsonl", good + [same])
    tok = base["tok"]
    with pytest.raises(ValueError, match=re.escape(f"{prefs}:5: keys \"chosen\" and \"rejected\" are identical")):
        dpo.load_kto(tok, DPOConfig(truncate=False), prefs, base["prefs"], 65)
    train, val, skipped = dpo.load_kto(tok, DPOConfig(truncate=True), prefs, prefs, 65)
    assert len(train) == len(val) == 8 and skipped == 2  # one identical pair in each of the two files
    long = tmp_path / "long.jsonl"
    long.write_text(json.dumps(good[0]) + "\n\n" + json.dumps({**good[1], "rejected": "word " * 200}) + "\n")
    with pytest.raises(ValueError, match=re.escape(f"{long}:3: the undesirable example renders to")):
        dpo.load_kto(tok, DPOConfig(truncate=False), str(long), base["prefs"], 65)
    train, _, skipped = dpo.load_kto(tok, DPOConfig(truncate=True), str(long), base["prefs"], 65)
    assert len(train) == 3 and skipped == 1


def test_kto_side_metrics_are_means_over_that_side(sft_done, tmp_path):
    """logps/chosen and logps/rejected: the means over the batch's desirable / undesirable examples, even when a
    micro-batch has none of one side (checked against the policy's log-probs at step 0, computed here)."""
    from minirlhf.checkpoint import load_model
    from minirlhf.data import read_kto

    rows = [{"prompt": q, "completion": a, "label": True} for q, a in QA[:3]] + \
           [{"prompt": QA[3][0], "completion": "No.", "label": False}]
    path = write_jsonl(tmp_path / "kto.jsonl", rows)
    c = dpo_cfg(sft_done, tmp_path, loss="kto", kto_data=path, batch_size=4, grad_accum=2, max_steps=1)
    dpo.run(c)
    row = first_row(sft_done["out"], "kto")
    tok = sft_done["tok"]
    records, _ = dpo.encode_kto(tok, read_kto(path), 65, False, path, c.seed)
    batch = sft.batch_indices(len(records), c.batch_size, 0, c.seed)
    micro = [batch[:2], batch[2:]]
    assert any(all(records[i]["label"] for i in m) for m in micro)  # one micro-batch without an undesirable one
    policy, _ = load_model(os.path.join(sft_done["out"], "micro", "sft", "model.pt"))
    x, m = dpo.pad_pairs([records[i] for i in batch], tok.pad_id, "cpu", dpo.KTO_KEYS)
    with torch.no_grad():
        logps, _ = dpo.sequence_logps(policy, x[:4], m[:4])
    good = torch.tensor([records[i]["label"] for i in batch])
    assert row["logps/chosen"] == pytest.approx(logps[good].mean().item(), abs=1e-4)
    assert row["logps/rejected"] == pytest.approx(logps[~good].mean().item(), abs=1e-4)
    assert abs(row["rewards/chosen"]) < 1e-6 and abs(row["rewards/rejected"]) < 1e-6  # policy == reference


def test_bf16_precomputed_reference_matches_on_the_fly(sft_done, tmp_path):
    """Under --dtype=bfloat16 the cached reference log-probs are computed under the same autocast as the policy:
    at step 0 (policy == reference) the loss is log 2 either way. An fp32 run first fills the same folder's
    cache: the precision is part of its key, so the bf16 run does not reuse those log-probs."""
    dpo.run(dpo_cfg(sft_done, tmp_path, precompute_ref=True, dtype="float32", run_name="dpo_bf16"))
    dpo.run(dpo_cfg(sft_done, tmp_path, precompute_ref=True, dtype="bfloat16", run_name="dpo_bf16"))
    pre = first_row(sft_done["out"], "bf16")  # the run named dpo_bf16
    dpo.run(dpo_cfg(sft_done, tmp_path, precompute_ref=False, dtype="bfloat16", run_name="dpo_bf16"))
    fly = first_row(sft_done["out"], "bf16")
    assert abs(fly["loss"] - math.log(2)) < 1e-6  # the same forward pass for both
    # (an fp32 cached reference is off by about 5e-5 in the loss and 1e-4 in the margins here)
    assert abs(pre["loss"] - fly["loss"]) < 1e-6 and abs(pre["rewards/margins"]) < 1e-6
