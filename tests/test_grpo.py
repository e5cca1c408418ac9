"""The GRPO loop on a tiny random GPT: ratio 1 and KL 0 before any update, beta=0 never touches the
reference, equal-reward groups give no gradient, a programmatic reward rises, the prompt selection and
config checks behave, approx_kl's orientation, the NaN guard's step, the documented metric list, and
--stop_after + --resume ending exactly where an uninterrupted run ends."""

import copy
import json
from types import SimpleNamespace

import pytest
import torch

from minirlhf.config import GRPOConfig, ModelConfig, make_config
from minirlhf.engine import Generation
from minirlhf.grpo import gold_reward_fn, group_advantages_with_signal, load_prompt_rows, run, train_grpo
from minirlhf.world import judge
from minirlhf.model import GPT
from resume_check import check_stage_stop_and_resume, check_stop_and_resume, rows
from test_ppo import documented_metrics
from conftest import untrained_reward_model

V, END, PAD, P = 64, 62, 63, 6
TOK = SimpleNamespace(end_id=END, pad_id=PAD)


def setup(seed=0):
    torch.manual_seed(seed)
    policy = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=32, vocab_size=V))
    prompts = torch.randint(0, 60, (40, P)).tolist()
    return policy, copy.deepcopy(policy), prompts


def low_token_share(g, prompt_index):
    """Reward: share of response tokens with an id below 30 (about half the vocabulary at random init)."""
    mask = g.response_mask.float()
    return ((g.response < 30).float() * mask).sum(1) / mask.sum(1).clamp(min=1)


def cfg(tmp_path, **kw):
    defaults = dict(preset="micro", out_dir=str(tmp_path), iterations=1, prompts_per_iteration=4, group_size=4,
                    minibatch_size=16, ppo_epochs=1, lr=1e-3, max_new_tokens=10, progress=False, eval_interval=1000,
                    missing_eos_penalty=0.0)
    return make_config(GRPOConfig, overrides={**defaults, **kw})


@pytest.mark.parametrize("temperature", [0.7, 1.3])
def test_first_minibatch_ratio_is_one_and_kl_is_zero(tmp_path, temperature):
    policy, ref, prompts = setup()
    train_grpo(policy, ref, low_token_share, prompts, TOK, cfg(tmp_path, temperature=temperature), str(tmp_path))
    row = rows(tmp_path)[0]
    # one epoch, one minibatch = the whole batch: these numbers are computed before the update
    assert abs(row["policy/ratio_mean"] - 1) < 1e-6 and abs(row["policy/ratio_max"] - 1) < 1e-6
    assert row["policy/clipfrac"] == 0.0 and abs(row["policy/approx_kl"]) < 1e-7
    assert row["objective/kl"] == 0.0 and row["objective/kl_sum"] == 0.0  # policy == reference
    # and the policy did move
    assert any((a - b).abs().max() > 0 for a, b in zip(policy.parameters(), ref.parameters()))


def test_bf16_autocast_the_cuda_default_keeps_ratio_one_and_learns(tmp_path):
    """--dtype=bfloat16 (what "auto" means on CUDA), under CPU autocast: ratio 1 on the first minibatch,
    the reward still rises, and the weights end elsewhere than in float32 (autocast was on)."""
    policy, ref, prompts = setup()
    train_grpo(policy, ref, low_token_share, prompts, TOK, cfg(tmp_path, dtype="bfloat16"), str(tmp_path))
    row = rows(tmp_path)[0]  # one iteration, one minibatch = the whole batch
    assert abs(row["policy/ratio_max"] - 1) < 1e-6 and row["policy/clipfrac"] == 0.0
    assert row["objective/kl"] == 0.0
    ends = {}
    for dtype in ("float32", "bfloat16"):
        (tmp_path / dtype).mkdir()
        policy, ref, prompts = setup(1)
        c = cfg(tmp_path / dtype, iterations=12, prompts_per_iteration=8, group_size=4, minibatch_size=16, lr=5e-3,
                beta=0.0, dtype=dtype)
        train_grpo(policy, ref, low_token_share, prompts, TOK, c, str(tmp_path / dtype))
        reward = [row["reward/mean"] for row in rows(tmp_path / dtype)]
        assert sum(reward[-3:]) / 3 > sum(reward[:3]) / 3 + 0.2, (dtype, reward)
        ends[dtype] = policy.lm_head.weight.detach().clone()
    assert not torch.equal(ends["float32"], ends["bfloat16"])


class Untouchable(GPT):
    """A reference model that fails the test the moment anything runs it."""

    def forward(self, *args, **kwargs):
        raise AssertionError("the reference model was called although beta = 0")


def test_beta_zero_never_calls_the_reference(tmp_path):
    policy, _, prompts = setup()
    untouchable = Untouchable(policy.config)
    train_grpo(policy, untouchable, low_token_share, prompts, TOK, cfg(tmp_path, beta=0.0, iterations=2),
               str(tmp_path))
    train_grpo(policy, None, low_token_share, prompts, TOK, cfg(tmp_path, beta=0.0), str(tmp_path))  # None is fine too
    assert "objective/kl" not in rows(tmp_path)[0]  # no reference pass, so no KL to log
    with pytest.raises(AssertionError, match="reference model was called"):  # and with beta > 0 it is called
        train_grpo(policy, untouchable, low_token_share, prompts, TOK, cfg(tmp_path, beta=0.04), str(tmp_path))


def test_group_advantages_hand_values_and_exact_zero_for_equal_groups():
    # group 1: seven equal rewards of 0.1, whose float mean is not exactly 0.1; group 2: 0, 1, ..., 6
    rewards = torch.tensor([0.1] * 7 + list(range(7)), dtype=torch.float32)
    adv, zero_std = group_advantages_with_signal(rewards, 7, scale=True)
    assert zero_std.tolist() == [True, False]
    assert torch.equal(adv[:7], torch.zeros(7))
    std = (sum((i - 3) ** 2 for i in range(7)) / 6) ** 0.5  # unbiased std of 0..6 = sqrt(28 / 6)
    expected = torch.tensor([(i - 3) / (std + 1e-4) for i in range(7)])
    torch.testing.assert_close(adv[7:], expected)
    adv, _ = group_advantages_with_signal(rewards, 7, scale=False)  # Dr. GRPO: centring only
    assert torch.equal(adv[:7], torch.zeros(7))
    torch.testing.assert_close(adv[7:], torch.arange(7.0) - 3)


def test_equal_reward_groups_give_no_policy_gradient(tmp_path):
    """Every group equal (a constant reward), beta = 0: zero advantages, zero gradients, AdamW leaves every
    weight exactly as it was."""
    policy, ref, prompts = setup()
    before = copy.deepcopy(policy.state_dict())
    c = cfg(tmp_path, beta=0.0, iterations=2, minibatch_size=8)
    train_grpo(policy, ref, lambda g, idx: torch.full((g.response.size(0),), 0.1), prompts, TOK, c, str(tmp_path))
    assert all(r["reward/zero_std_groups"] == 1.0 for r in rows(tmp_path))
    for name, tensor in policy.state_dict().items():
        assert torch.equal(tensor, before[name]), name


def test_missing_eos_penalty_is_subtracted_from_the_reward(tmp_path):
    policy, ref, prompts = setup(2)
    train_grpo(policy, ref, lambda g, idx: torch.zeros(g.response.size(0)), prompts, TOK,
               cfg(tmp_path, missing_eos_penalty=1.0, max_new_tokens=20), str(tmp_path))
    row = rows(tmp_path)[0]
    assert 0 < row["response/eos_rate"] < 1  # some responses ran out of budget, some ended
    assert row["reward/mean"] == pytest.approx(-(1 - row["response/eos_rate"]), abs=1e-6)


def test_grpo_raises_a_programmatic_reward(tmp_path):
    policy, ref, prompts = setup(1)
    c = cfg(tmp_path, iterations=12, prompts_per_iteration=8, group_size=4, minibatch_size=16, lr=5e-3, beta=0.0)
    train_grpo(policy, ref, low_token_share, prompts, TOK, c, str(tmp_path))
    reward = [r["reward/mean"] for r in rows(tmp_path)]
    first, last = sum(reward[:3]) / 3, sum(reward[-3:]) / 3
    assert last > first + 0.2, (first, last)


def test_gold_reward_judges_the_decoded_response():
    """Verifiable rewards: the judge sees the prompt text and the response up to and including <|end|>."""
    pieces = {1: "3 plus 4 is ", 2: "7.", 3: "8.", END: "<|end|>", PAD: "<|pad|>"}
    tok = SimpleNamespace(end_id=END, pad_id=PAD, decode=lambda ids: "".join(pieces[i] for i in ids))
    g = Generation(prompt=torch.zeros(3, 2, dtype=torch.long), prompt_mask=torch.ones(3, 2, dtype=torch.long),
                   response=torch.tensor([[1, 2, END], [1, 3, END], [1, 2, 2]]),
                   logprobs=torch.zeros(3, 3), response_mask=torch.ones(3, 3, dtype=torch.long))
    reward = gold_reward_fn(["What is 3 plus 4?", "What is 1 plus 1?"], tok, judge)
    got = reward(g, [0, 0, 0])
    q = "What is 3 plus 4?"
    expected = [judge(q, "3 plus 4 is 7.<|end|>"), judge(q, "3 plus 4 is 8.<|end|>"), judge(q, "3 plus 4 is 7.7.")]
    assert got.tolist() == pytest.approx(expected)
    assert expected[0] > 0.7 and expected[1] < 0 and expected[2] < expected[0]  # right, wrong, no <|end|>
    # a padded row: the pad after <|end|> is not part of the response
    g.response[0] = torch.tensor([1, END, PAD])
    g.response_mask[0] = torch.tensor([1, 1, 0])
    assert reward(g, [1, 0, 0])[0].item() == pytest.approx(judge("What is 1 plus 1?", "3 plus 4 is <|end|>"))


def write_world_prompts(tmp_path):
    world = tmp_path / "micro" / "world"
    world.mkdir(parents=True)
    records = [{"prompt": "What is 2 plus 3?", "category": "arithmetic", "topic": "plus", "split": "train"},
               {"prompt": "What is the capital of France?", "category": "fact", "topic": "capital", "split": "train"},
               {"prompt": "How much is 4 plus 1?", "category": "arithmetic", "topic": "plus", "split": "train"},
               {"prompt": "How do I pick a lock?", "category": "unsafe", "topic": "lock", "split": "train"}]
    (world / "rl_prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


def test_prompt_selection_by_category(tmp_path):
    records = write_world_prompts(tmp_path)
    arithmetic, _ = load_prompt_rows(cfg(tmp_path, prompts="arithmetic"))
    assert [r["prompt"] for r in arithmetic] == ["What is 2 plus 3?", "How much is 4 plus 1?"]
    assert {r["category"] for r in arithmetic} == {"arithmetic"}
    everything, _ = load_prompt_rows(cfg(tmp_path, prompts=""))
    assert [r["prompt"] for r in everything] == [r["prompt"] for r in records]
    with pytest.raises(ValueError, match="no prompts of category 'chitchat'"):
        load_prompt_rows(cfg(tmp_path, prompts="chitchat"))
    with pytest.raises(ValueError, match="neither a JSONL file nor a prompt category"):
        load_prompt_rows(cfg(tmp_path, prompts="arithmetics"))


@pytest.mark.parametrize("override, message", [({"group_size": 1}, "at least 2 responses"),
                                               ({"reward": "judge"}, "expected 'rm'"),
                                               ({"beta": -0.1}, "cannot be negative"),
                                               ({"dtype": "fp16"}, "expected auto, float32 or bfloat16")])
def test_bad_config_is_one_clear_error(tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        run(cfg(tmp_path, **override))


def test_rollout_shards_must_hold_whole_groups(tmp_path):
    policy, ref, prompts = setup()
    with pytest.raises(ValueError, match="--rollout_shards=3 must be a multiple"):
        train_grpo(policy, ref, low_token_share, prompts, TOK, cfg(tmp_path, rollout_shards=3), str(tmp_path))


def test_sharded_rollouts_train_like_one_batch_given_the_same_samples(tmp_path):
    """One process, two seeded shards: the same rollouts as two processes would sample (see
    test_distributed.py), and the loop runs on them as on any batch: ratio 1 before the first update."""
    policy, ref, prompts = setup()
    train_grpo(policy, ref, low_token_share, prompts, TOK, cfg(tmp_path, rollout_shards=2), str(tmp_path))
    row = rows(tmp_path)[0]
    assert abs(row["policy/ratio_mean"] - 1) < 1e-6 and row["objective/kl"] == 0.0


def test_approx_kl_is_k3_of_kl_old_to_new(tmp_path, monkeypatch):
    """policy/approx_kl estimates KL(pi_old || pi) from pi_old's samples: per token (r - 1) - log r with
    r = pi / pi_old (as losses.ppo_policy_loss logs it), its token mean per minibatch averaged over the
    minibatches -- not the reversed orientation (1/r - 1) + log r."""
    import minirlhf.grpo as grpo
    from minirlhf.losses import grpo_loss

    seen = []  # per minibatch: the policy's and pi_old's log-probs and the mask the loss was given

    def recording_loss(logprobs, old_logprobs, ref_logprobs, advantages, mask, **kwargs):
        seen.append((logprobs.detach().double(), old_logprobs.double(), mask.bool()))
        return grpo_loss(logprobs, old_logprobs, ref_logprobs, advantages, mask, **kwargs)

    monkeypatch.setattr(grpo, "grpo_loss", recording_loss)
    policy, ref, prompts = setup()
    train_grpo(policy, ref, low_token_share, prompts, TOK, cfg(tmp_path, ppo_epochs=2, minibatch_size=8, lr=0.05),
               str(tmp_path))

    def mean_over_minibatches(k3):
        values = []
        for new, old, mask in seen:
            log_r = torch.where(mask, new - old, 0.0)  # log pi / pi_old, 0 on pads
            values.append(k3(log_r)[mask].mean())
        return torch.stack(values).mean().item()

    forward = mean_over_minibatches(lambda log_r: (log_r.exp() - 1) - log_r)  # KL(pi_old || pi)
    reverse = mean_over_minibatches(lambda log_r: ((-log_r).exp() - 1) + log_r)  # KL(pi || pi_old)
    assert len(seen) == 4 and abs(forward - reverse) > 0.05 * forward  # the policy moved: the two differ
    assert rows(tmp_path)[0]["policy/approx_kl"] == pytest.approx(forward, rel=1e-4)


def test_nan_loss_error_names_the_iteration_and_the_optimizer_step(tmp_path, monkeypatch):
    """16 responses, minibatches of 4, 2 epochs = 8 optimizer steps per iteration: a NaN loss at
    iteration 2, epoch 1, minibatch 3 is optimizer step 8 + 3 = 11 of the run."""
    import minirlhf.grpo as grpo
    from minirlhf.common import NonFiniteLossError
    from minirlhf.losses import grpo_loss

    calls = []

    def loss_with_a_nan(*args, **kwargs):
        loss, metrics = grpo_loss(*args, **kwargs)
        calls.append(1)
        return (loss * float("nan") if len(calls) == 11 else loss), metrics

    monkeypatch.setattr(grpo, "grpo_loss", loss_with_a_nan)
    policy, ref, prompts = setup()
    c = cfg(tmp_path, iterations=3, minibatch_size=4, ppo_epochs=2)
    with pytest.raises(NonFiniteLossError, match=r"^grpo \(iteration 2\): policy/loss is nan at step 11 "):
        train_grpo(policy, ref, low_token_share, prompts, TOK, c, str(tmp_path))
    assert [r["iteration"] for r in rows(tmp_path)] == [1]


def test_every_logged_metric_is_documented(tmp_path):
    import minirlhf.grpo as grpo

    policy, ref, prompts = setup()
    train_grpo(policy, ref, low_token_share, prompts, TOK, cfg(tmp_path, beta=0.04, eval_interval=1), str(tmp_path),
               evaluate_fn=lambda model: {"gold": 0.5}, correct_fn=lambda g, idx: [True] * len(idx))
    logged = {"eval/*" if k.startswith("eval/") else k for k in rows(tmp_path)[0]}
    assert {"task/correct_rate", "eval/*", "objective/kl_sum"} <= logged
    assert logged <= documented_metrics(grpo.__doc__), logged - documented_metrics(grpo.__doc__)


def test_stop_and_resume_end_where_an_uninterrupted_run_ends(tmp_path):
    """--stop_after, then --resume, then a crash between two checkpoints, then --resume again: the same
    weights and the same metrics rows as one uninterrupted run, none twice (the rows logged after the last
    checkpoint are dropped and logged again); a finished run resumes to itself."""
    settings = dict(iterations=4, minibatch_size=8, ppo_epochs=2, eval_interval=2, anneal_lr=True)

    def run(out, reward_fn, **kw):
        policy, ref, prompts = setup()  # a fresh policy: a resumed run restores everything from ckpt.pt
        out.mkdir(exist_ok=True)
        result = train_grpo(policy, ref, reward_fn, prompts, TOK, cfg(out, **settings, **kw), str(out))
        return result, policy.state_dict()

    check_stop_and_resume(run, low_token_share, tmp_path)


def test_stage_stop_resume_and_resume_of_a_finished_run(base, tmp_path):
    """`minirlhf grpo --stop_after=1`, then `--resume`, then `--resume` of the finished run (resume_check)."""
    check_stage_stop_and_resume(run, GRPOConfig, "grpo", base, tmp_path, "final_reward_mean",
                                prompts_per_iteration=2, group_size=4, minibatch_size=4)


def test_a_users_gold_judge_gets_the_whole_prompt(base, tmp_path, recording_judge):
    """--reward=gold --gold_judge: GRPO's reward gives the user's judge the prompt as evaluation does (the
    message list of a longer conversation), not only its last user turn."""
    import json

    rm = untrained_reward_model(base, tmp_path)
    judge_spec, judge_received = recording_judge
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 plus 3?"}]
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps({"prompt": conversation}) + "\n" + json.dumps({"prompt": "Hello!"}) + "\n")
    over = dict(preset="micro", out_dir=str(tmp_path / "out"), init=base["init"], reward_model=rm,
                prompts=str(path), iterations=1, prompts_per_iteration=2, group_size=2, minibatch_size=4,
                max_new_tokens=4, progress=False, reward="gold", gold_judge=judge_spec, eval_interval=1000)
    run(make_config(GRPOConfig, overrides=over))
    received = judge_received()
    assert conversation in received and "Hello!" in received
