"""--grad_accum bounds the memory of every pass that is sized by the batch, not only of training.

A user who raises --grad_accum because a batch does not fit expects no forward pass of a stage to hold more than
batch_size / grad_accum sequences. Validation (pretraining, SFT, reward model, DPO), the reward model's final
accuracy and DPO's precomputed reference log-probs run in such micro-batches too. Each stage below runs with a
global batch of 8 in 4 micro-batches of 2, and every forward pass made inside those passes is recorded.
(The evaluation harness and the reward model's calibration have their own fixed batch sizes and are not checked.)
"""

import functools
import os

import pytest
import torch

from minirlhf import dpo, model as M, pretrain, reward, sft
from minirlhf.config import DPOConfig, PretrainConfig, RewardConfig, SFTConfig, make_config

BATCH, ACCUM = 8, 4  # micro-batches of 2 sequences (pairs: 2 chosen + 2 rejected = 4 rows)


@pytest.fixture
def forward_rows(monkeypatch):
    """Records (pass, grad enabled, rows) for every full forward pass (no KV cache) of any GPT trunk, where `pass`
    is the innermost of the watched functions running at the time (None outside them)."""
    seen, active = [], []
    hidden_states = M.GPT.hidden_states

    def recording(self, idx, *args, **kwargs):
        if kwargs.get("kv_cache") is None:
            seen.append((active[-1] if active else None, torch.is_grad_enabled(), idx.shape[0]))
        return hidden_states(self, idx, *args, **kwargs)

    def watch(module, name):
        original = getattr(module, name)

        @functools.wraps(original)
        def watched(*args, **kwargs):
            active.append(name)
            try:
                return original(*args, **kwargs)
            finally:
                active.pop()
        monkeypatch.setattr(module, name, watched)

    monkeypatch.setattr(M.GPT, "hidden_states", recording)
    for module in (pretrain, sft, reward, dpo):
        watch(module, "train_loop")  # training steps and the validation passes between them
    watch(reward, "pair_accuracy")  # the final accuracy after training
    watch(dpo, "reference_logps")  # the precomputed reference
    return seen


def rows_by_pass(seen) -> dict:
    out = {}
    for name, grad, rows in seen:
        if name is not None:
            out.setdefault((name, grad), set()).add(rows)
    return out


COMMON = dict(preset="micro", progress=False, batch_size=BATCH, grad_accum=ACCUM, max_steps=2, eval_interval=2,
              force=True)


def test_pretraining_and_sft_validate_in_micro_batches(base, tmp_path, forward_rows):
    out = str(tmp_path / "out")
    pretrain.run(make_config(PretrainConfig, overrides=dict(COMMON, out_dir=out, vocab_size=320, n_layer=1, n_embd=32,
                                                            n_head=2, corpus=str(base["root"] / "corpus.txt"))))
    # 4 micro-batches of 2 windows per step, with and without gradients (validation: eval_batches of them)
    assert rows_by_pass(forward_rows) == {("train_loop", True): {2}, ("train_loop", False): {2}}
    forward_rows.clear()
    sft.run(make_config(SFTConfig, overrides=dict(COMMON, out_dir=out, init=base["init"], data=base["sft"],
                                                  eval_data=base["sft"])))
    assert rows_by_pass(forward_rows) == {("train_loop", True): {2}, ("train_loop", False): {2}}


def test_reward_model_and_dpo_validate_in_micro_batches(base, tmp_path, forward_rows):
    out = str(tmp_path / "out")
    sft.run(make_config(SFTConfig, overrides=dict(preset="micro", progress=False, out_dir=out, init=base["init"],
                                                  data=base["sft"], eval_data=base["sft"], max_steps=2)))
    forward_rows.clear()
    reward.run(make_config(RewardConfig, overrides=dict(COMMON, out_dir=out, prefs=base["prefs"],
                                                        eval_prefs=base["prefs"], prompts=base["prompts"],
                                                        calibration_prompts=6, max_new_tokens=16)))
    # chosen and rejected of 2 pairs in one pass: 4 rows, in training and in pair_accuracy (the validation
    # inside the training loop and the final accuracy after it)
    assert rows_by_pass(forward_rows) == {("train_loop", True): {4}, ("pair_accuracy", False): {4}}
    assert sum(name == "pair_accuracy" for name, _, _ in forward_rows) == 2 * 16 // 2  # twice over 16 pairs
    forward_rows.clear()
    dpo.run(make_config(DPOConfig, overrides=dict(COMMON, out_dir=out, prefs=base["prefs"], eval_prefs=base["prefs"])))
    assert rows_by_pass(forward_rows) == {("train_loop", True): {4}, ("train_loop", False): {4},
                                          ("reference_logps", False): {4}}
    assert os.path.exists(os.path.join(out, "micro", "dpo", "model.pt"))
