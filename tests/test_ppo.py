"""The PPO loop: the classic bugs pinned (ratio 1 on the first minibatch, KL 0 before any update), a
sanity task in which PPO must raise a trivial programmatic reward within seconds, the logged scores under
--whiten_rewards, the NaN guard's step, the documented metric list, and --stop_after + --resume ending
exactly where an uninterrupted run ends."""

import copy
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from minirlhf.config import ModelConfig, PPOConfig, make_config
from minirlhf.model import GPT, ScalarModel
from minirlhf.ppo import train_ppo
from resume_check import Crash, check_stage_stop_and_resume, check_stop_and_resume, rows
from conftest import untrained_reward_model

V, END, PAD, P = 64, 62, 63, 6
TOK = SimpleNamespace(end_id=END, pad_id=PAD)


def setup(seed=0):
    torch.manual_seed(seed)
    policy = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=32, vocab_size=V))
    value = ScalarModel(copy.deepcopy(policy))
    prompts = torch.randint(0, 60, (40, P)).tolist()
    return policy, copy.deepcopy(policy), value, prompts


def low_token_share(tokens, attention_mask):
    """Reward: share of response tokens with an id below 30 (about half the vocabulary at random init)."""
    response, mask = tokens[:, P:], attention_mask[:, P:].float()
    return ((response < 30).float() * mask).sum(1) / mask.sum(1).clamp(min=1)


def cfg(tmp_path, **kw):
    defaults = dict(preset="micro", out_dir=str(tmp_path), iterations=1, batch_size=16, minibatch_size=16,
                    ppo_epochs=1, lr=1e-3, max_new_tokens=10, progress=False, eval_interval=1000)
    return make_config(PPOConfig, overrides={**defaults, **kw})


@pytest.mark.parametrize("temperature", [0.7, 1.0, 1.3])
def test_first_minibatch_ratio_is_one_and_kl_is_zero(tmp_path, temperature):
    policy, ref, value, prompts = setup()
    train_ppo(policy, ref, value, low_token_share, prompts, TOK, cfg(tmp_path, temperature=temperature), str(tmp_path))
    row = rows(tmp_path)[0]
    # one epoch, one minibatch = the whole batch: the update comes after these numbers are computed
    assert abs(row["policy/ratio_mean"] - 1) < 1e-6 and abs(row["policy/ratio_max"] - 1) < 1e-6
    assert row["policy/clipfrac"] == 0.0 and abs(row["policy/approx_kl"]) < 1e-7
    assert row["objective/kl"] == 0.0 and row["objective/kl_k3"] == 0.0  # policy == reference before any update


def test_ppo_raises_a_programmatic_reward(tmp_path):
    policy, ref, value, prompts = setup(1)
    c = cfg(tmp_path, iterations=25, batch_size=32, minibatch_size=16, ppo_epochs=2, lr=3e-3, kl_coef=0.0,
            adaptive_kl=False, missing_eos_penalty=0.0, anneal_lr=False)
    train_ppo(policy, ref, value, low_token_share, prompts, TOK, c, str(tmp_path))
    scores = [r["objective/scores"] for r in rows(tmp_path)]
    first, last = sum(scores[:3]) / 3, sum(scores[-3:]) / 3
    assert last > first + 0.2, (first, last)


def test_bf16_autocast_the_cuda_default_keeps_ratio_one_and_learns(tmp_path):
    """--dtype=bfloat16 (what "auto" means on CUDA), run here under CPU autocast: the forward passes are
    bf16, so the weights end elsewhere than in float32; the log-probs are still float32 and taken alike in
    scoring and training (ratio 1 on the first minibatch), and the sanity task's reward still rises."""
    policy, ref, value, prompts = setup()
    train_ppo(policy, ref, value, low_token_share, prompts, TOK, cfg(tmp_path, dtype="bfloat16"), str(tmp_path))
    row = rows(tmp_path)[0]  # one iteration, one minibatch = the whole batch
    assert abs(row["policy/ratio_max"] - 1) < 1e-6 and row["policy/clipfrac"] == 0.0
    assert row["objective/kl"] == 0.0
    ends = {}
    for dtype in ("float32", "bfloat16"):
        (tmp_path / dtype).mkdir()
        policy, ref, value, prompts = setup(1)
        c = cfg(tmp_path / dtype, iterations=25, batch_size=32, minibatch_size=16, ppo_epochs=2, lr=3e-3,
                kl_coef=0.0, adaptive_kl=False, missing_eos_penalty=0.0, anneal_lr=False, dtype=dtype)
        train_ppo(policy, ref, value, low_token_share, prompts, TOK, c, str(tmp_path / dtype))
        scores = [row["objective/scores"] for row in rows(tmp_path / dtype)]
        assert sum(scores[-3:]) / 3 > sum(scores[:3]) / 3 + 0.2, (dtype, scores)
        ends[dtype] = policy.lm_head.weight.detach().clone()
    assert not torch.equal(ends["float32"], ends["bfloat16"])  # autocast was on


def test_unknown_dtype_is_a_clear_error(tmp_path):
    policy, ref, value, prompts = setup()
    with pytest.raises(ValueError, match="--dtype='fp16': expected auto, float32 or bfloat16"):
        train_ppo(policy, ref, value, low_token_share, prompts, TOK, cfg(tmp_path, dtype="fp16"), str(tmp_path))


def test_shared_trunk_value_head_keeps_ratio_one_and_learns(tmp_path):
    """--value_model=shared: the value head reads the policy's hidden states; the first minibatch still
    sees ratio 1 (the value head does not change the policy's log-probs), and the value loss falls."""
    from minirlhf.model import ScalarHead

    policy, ref, _, prompts = setup()
    head = ScalarHead(policy.config.n_embd)
    w0 = head.linear.weight.detach().clone()
    c = cfg(tmp_path, iterations=6, ppo_epochs=1, lr=1e-3, value_model="shared")
    train_ppo(policy, ref, head, low_token_share, prompts, TOK, c, str(tmp_path))
    r = rows(tmp_path)
    assert abs(r[0]["policy/ratio_mean"] - 1) < 1e-6 and r[0]["policy/clipfrac"] == 0.0
    assert not torch.equal(head.linear.weight, w0)  # the head was trained
    # the value loss falls (measured here: 0.55 at the first iteration, 0.06 at the sixth)
    assert r[-1]["value_loss"] < 0.5 * r[0]["value_loss"], [x["value_loss"] for x in r]


def test_ptx_term_is_logged_and_pulls_towards_the_corpus(tmp_path):
    """PPO-ptx: with only the pretraining term (zero reward, zero KL) the policy's loss on the corpus falls."""
    import numpy as np

    from minirlhf.pretrain import get_batch, lm_loss

    policy, ref, value, prompts = setup(2)
    corpus = np.tile(np.arange(20, dtype=np.uint16), 200)  # a trivially learnable "corpus": 0 1 2 ... 19 0 1 ...
    gen = torch.Generator().manual_seed(0)
    x, y = get_batch(corpus, 8, policy.config.block_size, gen, "cpu")
    before = lm_loss(policy, x, y).item()
    c = cfg(tmp_path, iterations=8, ptx_coef=1.0, kl_coef=0.0, adaptive_kl=False, lr=3e-3, anneal_lr=False)
    train_ppo(policy, ref, value, lambda t, m: torch.zeros(t.size(0)), prompts, TOK, c, str(tmp_path),
              ptx_data=corpus)
    after = lm_loss(policy, x, y).item()
    assert "ptx_loss" in rows(tmp_path)[0]
    assert after < before - 0.5, (before, after)


def test_ptx_without_data_is_a_clear_error(tmp_path):
    policy, ref, value, prompts = setup()
    with pytest.raises(ValueError, match="ptx_data"):
        train_ppo(policy, ref, value, low_token_share, prompts, TOK, cfg(tmp_path, ptx_coef=0.5), str(tmp_path))


def test_gold_score_reads_each_rows_prompt_and_response_through_padding():
    """--reward=gold: every row is judged on its own prompt's text and its own decoded response, whatever
    the left and right padding, and a multi-turn prompt is not mistaken for the shorter prompt it starts with."""
    from minirlhf.engine import cat_generations, Generation
    from minirlhf.ppo import gold_score_fn

    short, long_ = [1, 2, 9], [1, 2, 9, 5, 6, 7, 9]  # long_ begins with short (a multi-turn rendering)
    other = [3, 9]
    tok = SimpleNamespace(decode=lambda ids: ",".join(map(str, ids)))
    seen = []

    def judge(prompt, response):
        seen.append((prompt, response))
        return float(len(response))

    score = gold_score_fn([short, long_, other], ["short?", "long?", "other?"], tok, judge)
    parts = []
    for prompt, response in ((short, [11, 12]), (long_, [13]), (other, [14, 15, 16])):
        mask = torch.ones(1, len(response), dtype=torch.long)
        parts.append(Generation(torch.tensor([prompt]), torch.ones(1, len(prompt), dtype=torch.long),
                                torch.tensor([response]), torch.zeros(1, len(response)), mask))
    g = cat_generations(parts, P=9, N=5, pad_id=PAD)  # left-padded prompts, right-padded responses
    scores = score(g.tokens, g.attention_mask)
    assert seen == [("short?", "11,12"), ("long?", "13"), ("other?", "14,15,16")]
    assert scores.tolist() == [5.0, 2.0, 8.0]
    with pytest.raises(ValueError, match="does not start with any of the rendered prompts"):
        score(torch.tensor([[4, 4, 4]]), torch.ones(1, 3, dtype=torch.long))


def test_unknown_reward_is_a_clear_error(tmp_path):
    from minirlhf.ppo import run

    with pytest.raises(ValueError, match="--reward='judge'"):
        run(cfg(tmp_path, reward="judge"))


def test_whiten_rewards_logs_the_raw_scores(tmp_path):
    """--whiten_rewards shapes with the whitened scores, but objective/scores is still the mean reward-model
    score after the missing-EOS penalty (not ~0), and objective/rlhf_reward = scores + non_score_reward."""
    seen = []  # per call: the scores after the penalty, computed here from the rows score_fn is given

    def score(tokens, attention_mask):
        s = low_token_share(tokens, attention_mask) + 5.0  # an offset that whitening would remove
        ended = ((tokens[:, P:] == END) & attention_mask[:, P:].bool()).any(1)
        seen.append(s - 1.0 * (~ended).float())
        return s

    runs = {}
    for whiten in (False, True):
        policy, ref, value, prompts = setup()
        out = tmp_path / str(whiten)
        out.mkdir()
        train_ppo(policy, ref, value, score, prompts, TOK,
                  cfg(out, iterations=2, whiten_rewards=whiten, missing_eos_penalty=1.0), str(out))
        runs[whiten] = rows(out), policy.state_dict()
    whitened_rows = runs[True][0]
    for row, s in zip(whitened_rows, seen[2:]):  # the second run's two iterations
        assert row["objective/scores"] == pytest.approx(s.mean().item(), abs=1e-5)
        assert row["objective/scores"] > 4  # raw, not whitened
        assert row["objective/rlhf_reward"] == pytest.approx(row["objective/scores"] + row["objective/non_score_reward"],
                                                             abs=1e-5)
    # the same first rollouts either way, logged alike; the whitening changed the update
    assert whitened_rows[0]["objective/scores"] == runs[False][0][0]["objective/scores"]
    assert any(not torch.equal(a, b) for a, b in zip(runs[True][1].values(), runs[False][1].values()))


def test_nan_loss_error_names_the_iteration_and_the_optimizer_step(tmp_path, monkeypatch):
    """2 epochs x 4 minibatches = 8 optimizer steps per iteration: a NaN policy loss at iteration 2,
    epoch 1, minibatch 3 is optimizer step 8 + 3 = 11 of the run."""
    import minirlhf.ppo as ppo
    from minirlhf.common import NonFiniteLossError
    from minirlhf.losses import ppo_policy_loss

    calls = []

    def loss_with_a_nan(*args, **kwargs):
        loss, metrics = ppo_policy_loss(*args, **kwargs)
        calls.append(1)
        return (loss * float("nan") if len(calls) == 11 else loss), metrics

    monkeypatch.setattr(ppo, "ppo_policy_loss", loss_with_a_nan)
    policy, ref, value, prompts = setup()
    c = cfg(tmp_path, iterations=3, batch_size=16, minibatch_size=4, ppo_epochs=2)
    with pytest.raises(NonFiniteLossError, match=r"^ppo \(iteration 2\): policy_loss is nan at step 11 "):
        train_ppo(policy, ref, value, low_token_share, prompts, TOK, c, str(tmp_path))
    assert [r["iteration"] for r in rows(tmp_path)] == [1]  # the iteration with the NaN is not logged


def documented_metrics(doc: str) -> set[str]:
    """The names in the first column of a module docstring's "Logged metrics" list."""
    section = doc.split("Logged metrics")[1].split("\n\n")[0]
    names = set()
    for line in section.splitlines()[1:]:
        if line.startswith("  ") and not line.startswith("   "):  # not a continuation line
            names.update(n.strip() for n in re.split(r"\s{2,}", line.strip())[0].split(","))
    return names


def test_every_logged_metric_is_documented(tmp_path):
    import minirlhf.ppo as ppo

    policy, ref, value, prompts = setup()
    corpus = np.tile(np.arange(20, dtype=np.uint16), 200)
    c = cfg(tmp_path, iterations=1, ptx_coef=0.5, eval_interval=1)
    train_ppo(policy, ref, value, low_token_share, prompts, TOK, c, str(tmp_path),
              evaluate_fn=lambda model, iteration: {"gold": 0.5}, ptx_data=corpus)
    logged = {"eval/*" if k.startswith("eval/") else k for k in rows(tmp_path)[0]}
    assert {"ptx_loss", "eval/*", "policy_loss"} <= logged
    assert logged <= documented_metrics(ppo.__doc__), logged - documented_metrics(ppo.__doc__)


def test_stop_and_resume_end_where_an_uninterrupted_run_ends(tmp_path):
    """--stop_after, then --resume, then a crash between two checkpoints, then --resume again: the same
    weights (policy and value model) and the same metrics rows as one uninterrupted run, none twice (the
    rows logged after the last checkpoint are dropped and logged again); a finished run resumes to itself."""
    settings = dict(iterations=4, batch_size=16, minibatch_size=8, ppo_epochs=2, eval_interval=2)

    def run(out, score_fn, **kw):
        policy, ref, value, prompts = setup()  # fresh models: a resumed run restores everything from ckpt.pt
        out.mkdir(exist_ok=True)
        result = train_ppo(policy, ref, value, score_fn, prompts, TOK, cfg(out, **settings, **kw), str(out))
        return result, {**policy.state_dict(), **{"value." + k: v for k, v in value.state_dict().items()}}

    expected_rows = check_stop_and_resume(run, low_token_share, tmp_path)
    assert len({r["kl_coef"] for r in expected_rows}) == 4  # the adaptive controller moved: its state mattered


def test_resume_refuses_a_checkpoint_of_other_settings_and_a_fresh_run_removes_it(tmp_path):
    """ckpt.pt records the run's settings and input digests: --resume with another KL coefficient or other
    inputs is an error saying what changed; a run without --resume removes the old ckpt.pt first."""
    policy, ref, value, prompts = setup()
    inputs = {"init": "aaa", "rm": "bbb", "prompts": "ccc"}
    train_ppo(policy, ref, value, low_token_share, prompts, TOK, cfg(tmp_path, iterations=2, stop_after=1), str(tmp_path),
              inputs=inputs)
    with pytest.raises(ValueError, match=r"other settings \(--kl_coef=0.2 then, 0.5 now\)"):
        train_ppo(policy, ref, value, low_token_share, prompts, TOK, cfg(tmp_path, iterations=2, kl_coef=0.5, resume=True),
                  str(tmp_path), inputs=inputs)
    with pytest.raises(ValueError, match=r"other inputs \(rm changed since\)"):
        train_ppo(policy, ref, value, low_token_share, prompts, TOK, cfg(tmp_path, iterations=2, resume=True),
                  str(tmp_path), inputs={**inputs, "rm": "ddd"})
    assert (tmp_path / "ckpt.pt").exists()

    def crash(*args):  # a fresh run killed in its first iteration, before any checkpoint of its own
        raise Crash

    with pytest.raises(Crash):
        train_ppo(policy, ref, value, crash, prompts, TOK, cfg(tmp_path, iterations=2, kl_coef=0.5), str(tmp_path),
                  inputs=inputs)
    assert not (tmp_path / "ckpt.pt").exists()  # so a --resume of it cannot continue the first run


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path):
    policy, ref, value, prompts = setup()
    with pytest.raises(FileNotFoundError, match="--resume: no checkpoint at .*ckpt.pt"):
        train_ppo(policy, ref, value, low_token_share, prompts, TOK, cfg(tmp_path, resume=True), str(tmp_path))


def test_stage_stop_resume_and_resume_of_a_finished_run(base, tmp_path):
    """`minirlhf ppo --stop_after=1`, then `--resume`, then `--resume` of the finished run (resume_check)."""
    from minirlhf.ppo import run

    check_stage_stop_and_resume(run, PPOConfig, "ppo", base, tmp_path, "final_kl_coef",
                                batch_size=8, minibatch_size=4)


def test_prompts_too_long_for_the_context_are_left_out_and_counted(base, tmp_path, capsys):
    """A prompt that leaves fewer than 8 tokens of the context for the response is left out, said and counted
    in the summary, never silently; if none is left, that is an error naming the file."""
    import json

    from minirlhf import checkpoint as ck
    from minirlhf.ppo import run

    rm = untrained_reward_model(base, tmp_path)
    long_prompt = " ".join(["tell me about the capital"] * ck.load_model(base["init"])[0].config.block_size)
    prompts = [json.loads(line)["prompt"] for line in open(base["prompts"])][:6]
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts + [long_prompt]))
    over = dict(preset="micro", out_dir=str(tmp_path / "out"), init=base["init"], reward_model=rm, prompts=str(path),
                iterations=1, batch_size=4, minibatch_size=4, max_new_tokens=8, progress=False)
    summary = run(make_config(PPOConfig, overrides=over))
    assert summary["prompts"] == 6 and summary["prompts_left_out"] == 1
    rows = [json.loads(line) for line in open(tmp_path / "out" / "micro" / "ppo" / "metrics.jsonl")]
    assert summary["final_kl_coef"] == rows[-1]["kl_coef"] == 0.2  # what the last iteration shaped with
    assert "left out 1 of 7 prompts too long for the context" in capsys.readouterr().out
    path.write_text(json.dumps({"prompt": long_prompt}) + "\n")
    with pytest.raises(ValueError, match="prompts.jsonl: every prompt leaves fewer than 8 tokens"):
        run(make_config(PPOConfig, overrides={**over, "run_name": "none_left"}))


def test_eval_interval_below_one_is_a_clear_error(tmp_path):
    policy, ref, value, prompts = setup()
    with pytest.raises(ValueError, match="--eval_interval=0: must be >= 1"):
        train_ppo(policy, ref, value, low_token_share, prompts, TOK, cfg(tmp_path, eval_interval=0), str(tmp_path))


def test_temperature_at_or_below_zero_is_a_clear_error_before_any_rollout(tmp_path):
    policy, ref, value, prompts = setup()
    with pytest.raises(ValueError, match=r"^--temperature=0.0: must be > 0$"):  # the command line's config
        cfg(tmp_path, temperature=0.0)
    config = cfg(tmp_path)
    config.temperature = 0.0  # a config built in Python without the range checks: train_ppo's own check
    with pytest.raises(ValueError, match="--temperature=0.0: PPO samples its rollouts"):
        train_ppo(policy, ref, value, low_token_share, prompts, TOK, config, str(tmp_path))
    assert not (tmp_path / "metrics.jsonl").exists()


def test_a_users_gold_judge_gets_the_whole_prompt_and_too_few_prompts_is_an_error(base, tmp_path,
                                                                                     recording_judge):
    """--reward=gold --gold_judge: the user's judge receives what evaluation gives it (a string, or the message
    list of a longer conversation), not only the last user turn; --batch_size above the number of prompts
    is an error naming both, before the folder is touched."""
    import json

    from minirlhf.ppo import run

    rm = untrained_reward_model(base, tmp_path)
    judge_spec, judge_received = recording_judge
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "What is 2 plus 3?"}]
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps({"prompt": conversation}) + "\n" + json.dumps({"prompt": "Hello!"}) + "\n")
    over = dict(preset="micro", out_dir=str(tmp_path / "out"), init=base["init"], reward_model=rm, prompts=str(path),
                iterations=1, batch_size=2, minibatch_size=2, max_new_tokens=4, progress=False, reward="gold",
                gold_judge=judge_spec, eval_interval=1000)
    run(make_config(PPOConfig, overrides=over))
    received = judge_received()
    assert conversation in received and "Hello!" in received
    with pytest.raises(ValueError, match=r"2 usable prompts .* fewer than --batch_size=4"):
        run(make_config(PPOConfig, overrides={**over, "batch_size": 4, "minibatch_size": 4, "run_name": "few"}))
    assert not (tmp_path / "out" / "micro" / "few" / "config.json").exists()


def test_too_few_prompts_for_the_batch_is_a_clear_error_in_train_ppo(tmp_path):
    policy, ref, value, prompts = setup()
    with pytest.raises(ValueError, match="--batch_size=16: each iteration draws that many distinct prompts, and "
                                         "there are 10"):
        train_ppo(policy, ref, value, low_token_share, prompts[:10], TOK, cfg(tmp_path), str(tmp_path))
