"""The reward model: score position, batching invariance, the Bradley-Terry stage (margins, soft labels, a
length head), accuracies by hand, normalisation, calibration checks, bad input. Uses conftest's micro `base`."""

import json
import math
import os
import re

import pytest
import torch

from minirlhf import checkpoint as ck
from minirlhf import reward, sft
from minirlhf.chat import render_conversation, render_prompt, render_reply
from minirlhf.config import ModelConfig, RewardConfig, SFTConfig, make_config
from minirlhf.data import DataError
from minirlhf.engine import Generation, left_pad
from minirlhf.model import GPT, ScalarModel, at_last_token, last_token_index

from conftest import QA, write_jsonl


def test_last_token_index_any_padding():
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    assert last_token_index(right).tolist() == [2, 4, 0]
    assert last_token_index(left).tolist() == [4, 4, 4]
    # a row without a real token has no last token: an error naming the row, not position 0 (a pad)
    with pytest.raises(ValueError, match=r"^at_last_token: rows \[1\] of the attention mask have no real token"):
        at_last_token(torch.randn(2, 3), torch.tensor([[1, 0, 0], [0, 0, 0]]))


def test_reward_score_at_last_real_token_whatever_the_padding():
    torch.manual_seed(0)
    model = ScalarModel(GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=32, vocab_size=50))).double()
    seq = torch.randint(0, 49, (1, 9))
    alone = model.score(seq, torch.ones_like(seq))
    per_position = model(seq, torch.ones_like(seq))
    assert torch.allclose(alone, per_position[:, -1])  # the score is the head's value at the last token
    for n_pad in (1, 4):
        pads = torch.full((1, n_pad), 49)
        right = model.score(torch.cat([seq, pads], 1), torch.cat([torch.ones_like(seq), torch.zeros_like(pads)], 1))
        left = model.score(torch.cat([pads, seq], 1), torch.cat([torch.zeros_like(pads), torch.ones_like(seq)], 1))
        assert abs(right.item() - alone.item()) < 1e-10 and abs(left.item() - alone.item()) < 1e-10


def float64_model_and_pairs(base):
    """A float64 reward model on the base trunk, the tokenizer, and the QA pairs (rejected = "No, " repeated)."""
    torch.manual_seed(0)
    model = ScalarModel(ck.load_model(base["init"])[0]).double().eval()
    rows = [{"prompt": [{"role": "user", "content": q}], "chosen": a, "rejected": "No, " * (i + 1)}
            for i, (q, a) in enumerate(QA)]
    pairs, _ = reward.encode_pairs(base["tok"], rows, 64, False, "x")
    return model, base["tok"], pairs


REPLIES = ["Yes.", "Paris is the capital of France.", "No.", "Cats are small animals that like to sleep."]


def scripted_generation(tok, prompts, replies):
    """The Generation `engine.generate` returns for these prompts (token ids) and reply texts, each reply closed
    by <|end|>: prompts left-padded, replies right-padded."""
    ids = [tok.encode(r) + [tok.end_id] for r in replies]
    response = torch.full((len(ids), max(map(len, ids))), tok.pad_id)  # (B, N)
    mask = torch.zeros_like(response)
    for i, r in enumerate(ids):
        response[i, :len(r)], mask[i, :len(r)] = torch.tensor(r), 1
    return Generation(*left_pad(prompts, tok.pad_id), response, torch.zeros(response.shape), mask)


def test_chosen_rejected_batched_equals_one_by_one(base):
    model, tok, pairs = float64_model_and_pairs(base)
    rc, rr = reward.score_pairs(model, pairs, tok.pad_id, "cpu")
    for i, p in enumerate(pairs):
        c1, r1 = reward.score_pairs(model, [p], tok.pad_id, "cpu")
        assert abs(c1.item() - rc[i].item()) < 1e-10 and abs(r1.item() - rr[i].item()) < 1e-10


def test_reward_stage_learns_pairs_and_normalises(base, monkeypatch):
    # the stage ranks its pairs, and the model.pt it saves is normalised on the calibration samples: the first
    # calibration_prompts prompts with (scripted) replies of different lengths, each scored alone by the saved
    # model, have mean 0 and std 1
    sft_over = dict(preset="micro", out_dir=base["out"], init=base["init"], data=base["sft"], eval_data=base["sft"],
                    max_steps=5, progress=False)
    sft.run(make_config(SFTConfig, overrides=sft_over))
    tok, seen = base["tok"], []

    def scripted(policy, prompts, *args, **kwargs):
        seen.extend(prompts)
        return scripted_generation(tok, prompts, [REPLIES[i % len(REPLIES)] for i in range(len(prompts))])

    monkeypatch.setattr(reward, "generate", scripted)
    over = dict(preset="micro", out_dir=base["out"], prefs=base["prefs"], eval_prefs=base["prefs"],
                prompts=base["prompts"], max_steps=30, lr=3e-3, warmup_steps=2, eval_interval=30,
                calibration_prompts=6, max_new_tokens=32, progress=False, force=True)
    summary = reward.run(make_config(RewardConfig, overrides=over))
    assert summary["val_accuracy"] == 1.0 and summary["val_gold_accuracy"] == 1.0
    assert seen == [render_prompt(tok, q) for q, _ in (QA * 3)[:6]] and summary["calibration_samples"] == 6
    model, _ = ck.load_scalar_model(os.path.join(base["out"], "micro", "reward", "model.pt"))
    seqs = [torch.tensor([p + tok.encode(REPLIES[i % len(REPLIES)]) + [tok.end_id]]) for i, p in enumerate(seen)]
    with torch.no_grad():
        scores = torch.cat([model.score(x, torch.ones_like(x)) for x in seqs]).double()
    assert abs(scores.mean().item()) < 1e-5 and abs(scores.std().item() - 1) < 1e-5


def test_reward_run_name_writes_next_to_the_default(base):
    sft_over = dict(preset="micro", out_dir=base["out"], init=base["init"], data=base["sft"], eval_data=base["sft"],
                    max_steps=5, progress=False)
    sft.run(make_config(SFTConfig, overrides=sft_over))
    over = dict(preset="micro", out_dir=base["out"], prefs=base["prefs"], eval_prefs=base["prefs"],
                prompts=base["prompts"], max_steps=2, calibration_prompts=4, max_new_tokens=4, progress=False)
    default = os.path.join(base["out"], "micro", "reward", "model.pt")
    before = os.path.getmtime(default) if os.path.exists(default) else None
    summary = reward.run(make_config(RewardConfig, overrides=dict(over, run_name="reward_b", margin_coef=1.0)))
    folder = os.path.join(base["out"], "micro", "reward_b")
    assert summary["steps"] == 2 and os.path.exists(os.path.join(folder, "model.pt"))
    with open(os.path.join(folder, "config.json")) as f:
        assert json.load(f)["margin_coef"] == 1.0
    assert (os.path.getmtime(default) if os.path.exists(default) else None) == before  # the default is untouched


def test_length_disentangled_keeps_the_reward_model_and_adds_a_length_head(base):
    model, tok, pairs = float64_model_and_pairs(base)
    two = reward.LengthDisentangled(model).double().eval()
    ids, mask = reward.pad_right([p["chosen"] for p in pairs] + [p["rejected"] for p in pairs], tok.pad_id, "cpu")
    quality, length = two(ids, mask)
    assert torch.equal(quality, model(ids, mask))  # the quality head IS the reward model that is kept
    assert not torch.allclose(length, quality)
    # with the length head switched off and no regulariser, the loss is the plain Bradley-Terry loss
    torch.nn.init.zeros_(two.length_head.linear.weight)
    cfg = RewardConfig(margin_coef=0.0, center_coef=0.0, length_head_coef=0.0)
    loss, m = reward.disentangled_pair_loss(two, pairs, tok.pad_id, "cpu", cfg)
    rc, rr = reward.score_pairs(model, pairs, tok.pad_id, "cpu")
    from minirlhf.losses import bradley_terry_loss
    assert abs(loss.item() - bradley_terry_loss(rc, rr)[0].item()) < 1e-12
    # the lengths it correlates with are the responses' token counts, <|end|> included
    n = torch.tensor([sum(p["chosen_mask"]) for p in pairs] + [sum(p["rejected_mask"]) for p in pairs],
                     dtype=torch.float64)
    assert n[len(pairs):].tolist() == [len(tok.encode("No, " * (i + 1))) + 1 for i in range(len(pairs))]
    from minirlhf.ops import pearson_correlation
    assert abs(m["corr_quality_length"].item() - pearson_correlation(torch.cat([rc, rr]), n).item()) < 1e-6


def test_reward_stage_with_a_length_head_saves_the_quality_head_only(base):
    sft_over = dict(preset="micro", out_dir=base["out"], init=base["init"], data=base["sft"], eval_data=base["sft"],
                    max_steps=5, progress=False)
    sft.run(make_config(SFTConfig, overrides=sft_over))
    over = dict(preset="micro", out_dir=base["out"], prefs=base["prefs"], eval_prefs=base["prefs"],
                prompts=base["prompts"], max_steps=4, calibration_prompts=4, max_new_tokens=4, progress=False,
                log_interval=2, run_name="reward_odin", length_head_coef=1.0)
    summary = reward.run(make_config(RewardConfig, overrides=over))
    folder = os.path.join(base["out"], "micro", "reward_odin")
    assert summary["steps"] == 4
    state = torch.load(os.path.join(folder, "model.pt"), map_location="cpu", weights_only=False)
    keys = list(state["model"].keys()) if "model" in state else list(state.keys())
    assert not any("length_head" in k for k in keys), "the length head is dropped after training"
    model, _ = ck.load_scalar_model(os.path.join(folder, "model.pt"))
    assert isinstance(model, ScalarModel)
    with open(os.path.join(folder, "metrics.jsonl")) as f:
        logged = [json.loads(line) for line in f]
    assert all(-1 <= r["corr_quality_length"] <= 1 and -1 <= r["corr_length_head"] <= 1
               for r in logged if "corr_quality_length" in r)
    assert any("corr_quality_length" in r for r in logged)


def test_reward_negative_coefficients_are_an_error():
    with pytest.raises(ValueError, match="length_head_coef=-1.0"):
        reward.run(make_config(RewardConfig, overrides=dict(preset="micro", length_head_coef=-1.0)))


def test_reward_margin_needs_annotator_probability():
    pairs = [{"p_chosen": None}]
    with pytest.raises(ValueError, match="p_chosen"):
        reward.margins_for(pairs, 1.0, "cpu")
    m = reward.margins_for([{"p_chosen": 0.5}, {"p_chosen": 0.8}], 2.0, "cpu")
    assert m[0].item() == 0.0 and abs(m[1].item() - 2 * abs(torch.log(torch.tensor(4.0)).item())) < 1e-6
    # a label that went against the annotator's own odds (p_chosen 0.2) is the least trustworthy: no margin,
    # not the margin of a confident one (|logit 0.2| = logit 0.8)
    m = reward.margins_for([{"p_chosen": 0.2}, {"p_chosen": 0.8}], 1.0, "cpu")
    assert m[0].item() == 0.0 and m[1].item() == pytest.approx(math.log(4.0), abs=1e-6)


def test_margin_of_a_certain_label_is_finite():
    # p_chosen = 1 (the annotator was sure) is clamped to 1 - 1e-6 before the logit: a large finite margin,
    # coef * logit(1 - 1e-6) = coef * 13.8155 (float32 rounding of 1 - 1e-6 moves it by ~0.01), not inf
    m = reward.margins_for([{"p_chosen": 1.0}, {"p_chosen": 0.0}], 2.0, "cpu")
    assert m[0].item() == pytest.approx(2 * math.log((1 - 1e-6) / 1e-6), abs=0.05) and m[1].item() == 0.0


def test_p_chosen_0_and_1_are_accepted(base):
    # p_chosen is a probability in the closed interval [0, 1]: both ends are valid annotations
    rows = [{"prompt": [{"role": "user", "content": "Q?"}], "chosen": "Yes.", "rejected": "No.",
             "extra": {"p_chosen": p}} for p in (0, 1.0)]
    pairs, _ = reward.encode_pairs(base["tok"], rows, 64, False, "x")
    assert [p["p_chosen"] for p in pairs] == [0.0, 1.0]


def test_reward_soft_labels_use_the_annotator_probability():
    pairs = [{"p_chosen": 0.8}, {"p_chosen": 0.5}]
    rc, rr = torch.tensor([1.0, 2.0], dtype=torch.float64), torch.tensor([0.0, 2.0], dtype=torch.float64)
    sig = lambda x: 1 / (1 + math.exp(-x))
    soft = -((0.8 * math.log(sig(1.0)) + 0.2 * math.log(sig(-1.0))) + math.log(0.5)) / 2
    hard = -(math.log(sig(1.0)) + math.log(0.5)) / 2
    on = RewardConfig(soft_labels=True, margin_coef=0.0, center_coef=0.0)
    assert abs(reward.pair_loss(rc, rr, pairs, on, "cpu")[0].item() - soft) < 1e-6
    assert abs(reward.pair_loss(rc, rr, pairs, RewardConfig(), "cpu")[0].item() - hard) < 1e-12


def test_reward_stage_soft_labels_reach_the_loss(base, tmp_path):
    # p_chosen = 1 everywhere: soft labels are the hard ones, the first logged loss is the same;
    # p_chosen = 0.8 (the base file): the first step's loss is the soft one, not the hard one
    sft_over = dict(preset="micro", out_dir=base["out"], init=base["init"], data=base["sft"], eval_data=base["sft"],
                    max_steps=5, progress=False)
    sft.run(make_config(SFTConfig, overrides=sft_over))
    certain = write_jsonl(tmp_path / "certain.jsonl", [{"prompt": q, "chosen": a, "rejected": "No.", "p_chosen": 1.0}
                                                       for q, a in QA] * 4)

    def first_loss(prefs, soft, name):
        over = dict(preset="micro", out_dir=base["out"], prefs=prefs, eval_prefs=base["prefs"], prompts=base["prompts"],
                    max_steps=1, log_interval=1, calibration_prompts=4, max_new_tokens=4, progress=False,
                    soft_labels=soft, run_name=name)
        reward.run(make_config(RewardConfig, overrides=over))
        with open(os.path.join(base["out"], "micro", name, "metrics.jsonl")) as f:
            return json.loads(f.readline())["loss"]

    assert abs(first_loss(certain, True, "soft_certain") - first_loss(certain, False, "hard_certain")) < 1e-5
    assert abs(first_loss(base["prefs"], True, "soft_08") - first_loss(base["prefs"], False, "hard_08")) > 1e-3


def test_reward_soft_labels_need_annotator_probability(base, tmp_path):
    rows = [{"prompt": q, "chosen": a, "rejected": "No."} for q, a in QA]
    rows[0].update(p_chosen=0.7)
    prefs = write_jsonl(tmp_path / "prefs.jsonl", rows)
    over = dict(preset="micro", out_dir=str(tmp_path / "out"), init=base["init"], prefs=prefs,
                eval_prefs=base["prefs"], prompts=base["prompts"], max_steps=2, progress=False, soft_labels=True)
    with pytest.raises(ValueError, match=f"--soft_labels needs .*: {len(QA) - 1} of the {len(QA)} pairs"):
        reward.run(make_config(RewardConfig, overrides=over))
    assert not os.path.exists(os.path.join(str(tmp_path / "out"), "micro", "reward", "model.pt"))


def test_pairwise_gold_accuracy_by_hand():
    # prompt 1: gold 0, 1, 0.5 and proxy 1, 2, 3: pairs (0,1) and (0,2) agree, (1,2) does not
    # prompt 2: a gold tie is not a pair; (0,2) and (1,2) are ordered the wrong way round
    # prompt 3: a proxy tie on a pair with different gold counts as a miss
    hits, pairs = reward.pairwise_gold_accuracy([[1, 2, 3], [5, 5, 0], [4, 4]],
                                                [[0, 1, 0.5], [0.2, 0.2, 0.9], [0, 1]])
    assert (hits, pairs) == (2, 6)


def test_decisive_pairs_include_a_gold_gap_of_exactly_the_minimum():
    # gold 0 and 0.5 differ by exactly DECISIVE_GAP: decisive (>= the gap); the pairs 0.25 apart are not
    assert reward.DECISIVE_GAP == 0.5
    assert reward.pairwise_gold_accuracy([[0.0, 1.0, 2.0]], [[0.0, 0.5, 0.25]], reward.DECISIVE_GAP) == (1, 1)


def test_on_policy_stats_by_hand():
    """Two samples per prompt; the annotators' agreement is the Bradley-Terry formula of world.annotators."""
    gold = {"good answer": 1.0, "bad": 0.35, "meh": 0.35}
    rows = [{"prompt": "p", "split": "eval"}, {"prompt": "q", "split": "eval"}, {"prompt": "r", "split": "train"}]
    texts = [["bad", "good answer"], ["bad", "meh"], ["good answer", "bad"]]
    proxy = [[0.0, 1.0], [3.0, 2.0], [-1.0, 0.0]]
    out = reward.on_policy_stats(rows, texts, proxy, lambda p, t: gold[t])
    # held-out: prompt q is a gold tie (no pair); prompt p: the RM agrees with gold
    assert out["on_policy_pairs_heldout"] == 1 and out["on_policy_gold_accuracy_heldout"] == 1.0
    assert out["on_policy_pairs_train"] == 1 and out["on_policy_gold_accuracy_train"] == 0.0
    # P(annotator prefers "good answer" over "bad") = sigmoid(0.65 / tau + 0.5 tanh((2 - 1) / 20)), tau = 0.65
    expected = 1 / (1 + math.exp(-(1.0 + 0.5 * math.tanh(1 / 20))))
    assert out["on_policy_annotator_agreement_heldout"] == pytest.approx(expected, abs=1e-12)
    assert out["on_policy_annotator_agreement_train"] == pytest.approx(expected, abs=1e-12)


def test_on_policy_label_ceiling_and_decisive_pairs_by_hand():
    """The label ceiling counts the pairs the annotators' bias flips; decisive pairs have a gold gap >= 0.5."""
    long_text = "one two three four five six seven eight nine ten eleven"  # 11 words
    gold = {"right": 0.85, "wrong": -0.6, long_text: 0.50, "one": 0.52}
    rows = [{"prompt": "p", "split": "eval"}, {"prompt": "s", "split": "eval"}]
    texts = [["wrong", "right"], [long_text, "one"]]
    proxy = [[1.0, 0.0], [0.0, 1.0]]  # wrong on the decisive pair, right on the near-tie
    out = reward.on_policy_stats(rows, texts, proxy, lambda p, t: gold[t])
    assert out["on_policy_pairs_heldout"] == 2 and out["on_policy_gold_accuracy_heldout"] == 0.5
    assert out["on_policy_decisive_pairs_heldout"] == 1 and out["on_policy_decisive_accuracy_heldout"] == 0.0
    # "right" over "wrong": sigmoid(1.45 / 0.65 + 0) > 1/2.  "one" over the 11-word answer:
    # sigmoid(0.02 / 0.65 + 0.5 tanh(-10 / 20)) < 1/2 -- the annotators' length bias flips it
    p_right = 1 / (1 + math.exp(-(1.45 / 0.65)))
    p_short = 1 / (1 + math.exp(-(0.02 / 0.65 + 0.5 * math.tanh(-10 / 20))))
    assert p_short < 0.5 < p_right
    assert out["on_policy_annotator_agreement_heldout"] == pytest.approx((p_right + p_short) / 2, abs=1e-12)
    assert out["on_policy_label_ceiling_heldout"] == 0.5
    assert out["on_policy_pairs_train"] == 0 and math.isnan(out["on_policy_label_ceiling_train"])


def test_reply_mask_covers_only_the_final_reply(base):
    """A multi-turn prompt's earlier assistant turn is context: only the reply and its <|end|> are masked."""
    tok = base["tok"]
    single = [{"role": "user", "content": "What is two plus three?"}]
    multi = [{"role": "user", "content": "Hi there."}, {"role": "assistant", "content": "Hello! How can I help?"},
             {"role": "user", "content": "What is two plus three?"}]
    rows = [{"prompt": p, "chosen": "Five.", "rejected": "Seven, I think."} for p in (single, multi)]
    (one, many), _ = reward.encode_pairs(tok, rows, 1000, False, "x")
    for side, text in (("chosen", "Five."), ("rejected", "Seven, I think.")):
        n = len(tok.encode(text)) + 1  # the reply's tokens and its <|end|>
        assert sum(many[f"{side}_mask"]) == n and many[f"{side}_mask"][-n:] == [1] * n
        # the single-turn mask is the one render_conversation gives (its only assistant turn is the reply)
        assert one[f"{side}_mask"] == render_conversation(tok, single + [{"role": "assistant", "content": text}])[1]
        assert sum(one[f"{side}_mask"]) == n


def test_reward_pairs_are_named_by_their_line(base, tmp_path):
    """An over-long pair after a blank line is reported at its line in the file, not its position among rows."""
    rows = [{"prompt": q, "chosen": a, "rejected": "No."} for q, a in QA]
    path = tmp_path / "long.jsonl"
    path.write_text(json.dumps(rows[0]) + "\n\n" + json.dumps(rows[1]) + "\n"
                    + json.dumps({**rows[2], "chosen": "word " * 200}) + "\n")
    from minirlhf.data import DataError
    with pytest.raises(DataError, match=rf"^{path}:4: the pair renders to \d+ tokens, more than the context \(64\)"):
        reward.load_pairs(base["tok"], str(path), base["prefs"], 64, False, "reward")
    train, _, dropped = reward.load_pairs(base["tok"], str(path), base["prefs"], 64, True, "reward")
    assert len(train) == 2 and dropped == 1


@pytest.mark.parametrize("extra, message", [  # extra: the bad keys as JSON text
    ('"p_chosen": "0.9"', 'key "p_chosen" must be a number in [0, 1] (or absent / null), got str "0.9"'),
    ('"p_chosen": 3.0', 'key "p_chosen" must be a number in [0, 1] (or absent / null), got float 3.0'),
    ('"p_chosen": -0.1', 'key "p_chosen" must be a number in [0, 1] (or absent / null), got float -0.1'),
    ('"p_chosen": true', 'key "p_chosen" must be a number in [0, 1] (or absent / null), got bool true'),
    ('"gold_chosen": "high", "gold_rejected": 0.1',
     'key "gold_chosen" must be a finite number (or absent / null), got str "high"'),
    ('"gold_chosen": 0.5, "gold_rejected": [1]',
     'key "gold_rejected" must be a finite number (or absent / null), got list [1]'),
    ('"gold_chosen": 0.5, "gold_rejected": 1e999', 'key "gold_rejected" must be a finite number'),  # inf in Python
    ('"gold_chosen": 0.5, "gold_rejected": 1' + "0" * 400, 'key "gold_rejected" must be a finite number'),  # an int
    ('"gold_chosen": 0.5', 'keys "gold_chosen" and "gold_rejected" must be both given or both absent'),
])
def test_reward_pair_annotations_are_checked(base, tmp_path, extra, message):
    """p_chosen, gold_chosen, gold_rejected: numbers (p_chosen in [0, 1]) or absent / null, else an error
    naming file, line and key, in the training and the evaluation file alike."""
    from minirlhf.data import DataError
    good = {"prompt": "Q?", "chosen": "Yes.", "rejected": "No."}
    fine = [dict(good), {**good, "p_chosen": 1, "gold_chosen": -1, "gold_rejected": 2},
            {**good, "p_chosen": None, "gold_chosen": None, "gold_rejected": None}]
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in fine) + "\n" + json.dumps(good)[:-1] + f", {extra}}}\n")
    with pytest.raises(DataError, match="^" + re.escape(f"{path}:5: {message}")):
        reward.load_pairs(base["tok"], str(path), base["prefs"], 64, False, "reward")
    with pytest.raises(DataError, match="^" + re.escape(f"{path}:5: {message}")):
        reward.load_pairs(base["tok"], base["prefs"], str(path), 64, False, "reward")
    # the lines before it are accepted: numbers (ints too) and absent / null
    ok = write_jsonl(tmp_path / "ok.jsonl", fine)
    train, _, _ = reward.load_pairs(base["tok"], ok, base["prefs"], 64, False, "reward")
    assert [(p["p_chosen"], p["gold_chosen"], p["gold_rejected"]) for p in train] == [
        (None, None, None), (1.0, -1.0, 2.0), (None, None, None)]


def test_identical_pairs_follow_truncate_in_both_files(base, tmp_path):
    """--truncate drops identical pairs of the training AND the evaluation file (counted); without it both raise."""
    same = {"prompt": "Same?", "chosen": "Same.", "rejected": "Same."}
    good = [{"prompt": q, "chosen": a, "rejected": "No."} for q, a in QA]
    train = write_jsonl(tmp_path / "train.jsonl", good + [same])
    val = write_jsonl(tmp_path / "val.jsonl", good[:2] + [same, same])
    from minirlhf.data import DataError
    with pytest.raises(DataError, match=re.escape(f"{train}:5: keys \"chosen\" and \"rejected\" are identical")):
        reward.load_pairs(base["tok"], train, val, 64, False, "reward")
    with pytest.raises(DataError, match=re.escape(f"{val}:3: keys \"chosen\" and \"rejected\" are identical")):
        reward.load_pairs(base["tok"], base["prefs"], val, 64, False, "reward")
    tr, va, dropped = reward.load_pairs(base["tok"], train, val, 64, True, "reward")
    assert (len(tr), len(va), dropped) == (4, 2, 3)


class ConstantScores(torch.nn.Module):
    """A collapsed reward model: the same score for every token of every sequence."""

    def forward(self, ids, mask):
        return torch.zeros(ids.shape, dtype=torch.float32)


def test_scalar_head_scores_in_float32_under_bf16_autocast():
    """bf16 autocast (the CUDA default) must not round the scores: 5.30 and 5.34 are one bf16 value. The
    head runs in float32 on the trunk's output and matches a float64 computation by hand."""
    from minirlhf.model import ScalarHead

    torch.manual_seed(0)
    head = ScalarHead(16)
    head.gain.fill_(2.0)
    head.offset.fill_(0.5)
    hidden = torch.randn(3, 5, 16) * 10
    by_hand = (hidden.double() @ head.linear.weight.double().T + head.linear.bias.double()).squeeze(-1) * 2 + 0.5
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scores = head(hidden)
        rounded = (head.linear(hidden).squeeze(-1) * head.gain + head.offset)  # what a bf16 head gives
    assert scores.dtype == torch.float32 and (scores.double() - by_hand).abs().max().item() < 1e-5
    assert (rounded.double() - by_hand).abs().max().item() > 1e-3  # the rounding this avoids
    assert head.double()(hidden.double()).dtype == torch.float64  # float64 gradchecks stay float64


def test_gold_accuracy_counts_a_score_tie_as_a_miss():
    pairs = [{"chosen": [1, 2, 3], "rejected": [1, 2, 4], "gold_chosen": gc, "gold_rejected": gr}
             for gc, gr in [(0.9, -0.5), (-0.5, 0.9), (-0.2, 0.4), (0.1, 0.3)]]
    out = reward.pair_accuracy(ConstantScores(), pairs, 0, 8, torch.device("cpu"), "float32")
    assert out["val_accuracy"] == 0.0 and out["val_gold_accuracy"] == 0.0


def test_normalise_needs_two_prompts_and_a_nonzero_spread(base):
    tok = base["tok"]
    torch.manual_seed(0)
    policy = ck.load_model(base["init"])[0]
    model = ScalarModel(ck.load_model(base["init"])[0])
    from minirlhf.chat import render_prompt
    prompts = [render_prompt(tok, q) for q, _ in QA]
    for n in (0, 1):
        with pytest.raises(ValueError, match=f"at least 2 calibration prompts, got {n}"):
            reward.normalise(model, policy, tok, prompts[:n], 4, 1.0, 0, torch.device("cpu"))
    with torch.no_grad():
        model.head.gain.zero_()  # every score is the offset: a std of 0
    with pytest.raises(ValueError, match=r"same score .*\(std 0\)"):
        reward.normalise(model, policy, tok, prompts, 4, 1.0, 0, torch.device("cpu"))
    assert model.head.gain.item() == 0.0  # nothing written


@pytest.mark.parametrize("calibration, new_tokens, fit", [(1, 8, 1), (12, 63, 0)])
def test_reward_stage_checks_the_calibration_prompts_before_training(base, tmp_path, calibration, new_tokens, fit):
    over = dict(preset="micro", out_dir=str(tmp_path / "out"), init=base["init"], prefs=base["prefs"],
                eval_prefs=base["prefs"], prompts=base["prompts"], max_steps=2, progress=False,
                calibration_prompts=calibration, max_new_tokens=new_tokens)
    with pytest.raises(ValueError, match=re.escape(f"{base['prompts']}: only {fit} of the first {calibration} prompts "
                                                   f"(--calibration_prompts={calibration}) leave room for "
                                                   f"--max_new_tokens={new_tokens}")):
        reward.run(make_config(RewardConfig, overrides=over))
    assert not os.path.exists(os.path.join(str(tmp_path / "out"), "micro", "reward", "metrics.jsonl"))  # no training


class LastTokenId(torch.nn.Module):
    """A stand-in reward model: a sequence's score is the id of its last real token (not constant)."""

    def forward(self, ids, mask):
        return ids.float()


def test_val_margin_and_gold_accuracy_by_hand():
    # scores 5 vs 2, 3 vs 4, 6 vs 9: margins +3, -1, -3, val_margin their signed mean -1/3; the second pair is
    # a gold tie (no gold ordering), so the gold accuracy is over the other two: 1 hit of 2
    pairs = [{"chosen": [1, 5], "rejected": [1, 2], "gold_chosen": 0.9, "gold_rejected": -0.5},
             {"chosen": [1, 2, 3], "rejected": [1, 4], "gold_chosen": 0.3, "gold_rejected": 0.3},
             {"chosen": [6], "rejected": [8, 9], "gold_chosen": 0.8, "gold_rejected": 0.2}]
    out = reward.pair_accuracy(LastTokenId(), pairs, 0, 2, torch.device("cpu"), "float32")
    assert out["val_accuracy"] == pytest.approx(1 / 3) and out["val_margin"] == pytest.approx(-1 / 3)
    assert out["val_gold_accuracy"] == 0.5


def test_encode_pairs_accepts_a_pair_that_fills_the_context_exactly(base):
    # a pair whose longer side is exactly max_len tokens fits; with one token less of context it is refused
    tok = base["tok"]
    row = {"prompt": [{"role": "user", "content": "Q?"}], "chosen": "Yes, it is the capital.", "rejected": "No."}
    n = len(render_reply(tok, row["prompt"], row["chosen"])[0])
    assert n > len(render_reply(tok, row["prompt"], row["rejected"])[0])
    pairs, dropped = reward.encode_pairs(tok, [row], n, False, "x")
    assert len(pairs) == 1 and dropped == 0
    with pytest.raises(DataError, match=rf"the pair renders to {n} tokens, more than the context \({n - 1}\)"):
        reward.encode_pairs(tok, [row], n - 1, False, "x")


def test_score_responses_batched_equals_one_by_one(base):
    # responses of different lengths share a padded batch: each is still scored at its own <|end|>, not at a pad
    model, tok, _ = float64_model_and_pairs(base)
    prompts, responses = [q for q, _ in QA], ["Yes.", "Two plus three is five, as anyone can check.", "No.", "Sure."]
    together = reward.score_responses(model, tok, prompts, responses)
    for p, r, score in zip(prompts, responses, together):
        ids = torch.tensor([render_conversation(tok, [{"role": "user", "content": p},
                                                     {"role": "assistant", "content": r}])[0]])
        with torch.no_grad():
            alone = model.score(ids, torch.ones_like(ids)).item()
        assert abs(score - alone) < 1e-6  # score_responses gives float32 scores


def test_normalise_uses_each_sample_scored_alone(base, monkeypatch):
    # calibration samples that end at different lengths, and a head that starts with a gain and an offset: the
    # raw mean / std are those of each sample scored alone (at its <|end|>, not at a pad), after normalising those
    # scores have mean 0 and std 1, and corr_score_length is Pearson's r of them with the lengths (<|end|> counted)
    tok, replies = base["tok"], REPLIES
    monkeypatch.setattr(reward, "generate", lambda policy, prompts, *args, **kwargs:
                        scripted_generation(tok, prompts, replies[:len(prompts)]))
    model, _, _ = float64_model_and_pairs(base)
    with torch.no_grad():
        model.head.gain.fill_(2.0)
        model.head.offset.fill_(0.7)
    prompts = [render_prompt(tok, q) for q, _ in QA]
    seqs = [torch.tensor([p + tok.encode(r) + [tok.end_id]]) for p, r in zip(prompts, replies)]

    def scores_alone():
        with torch.no_grad():
            return torch.cat([model.score(s, torch.ones_like(s)) for s in seqs])

    raw = scores_alone()
    stats = reward.normalise(model, None, tok, prompts, 32, 1.0, 0, torch.device("cpu"))
    assert stats["calibration_samples"] == 4
    assert stats["raw_mean"] == pytest.approx(raw.mean().item(), abs=1e-9)
    assert stats["raw_std"] == pytest.approx(raw.std().item(), abs=1e-9)
    new = scores_alone()
    assert abs(new.mean().item()) < 1e-9 and abs(new.std().item() - 1) < 1e-9
    lengths = torch.tensor([len(tok.encode(r)) + 1 for r in replies], dtype=torch.float64)
    s, n = raw - raw.mean(), lengths - lengths.mean()
    assert stats["corr_score_length"] == pytest.approx(((s * n).sum() / (s.norm() * n.norm())).item(), abs=1e-6)
