"""The command line: option checking and clear one-line errors."""

import pytest

from minirlhf.cli import main
from minirlhf.config import ConfigError, PretrainConfig, apply_overrides, make_config


def test_unknown_key_lists_valid_options(capsys):
    assert main(["pretrain", "--no_such_key=3"]) == 2
    err = capsys.readouterr().err
    assert "unknown option --no_such_key" in err and "--max_steps" in err


def test_wrong_type_names_key_and_type(capsys):
    assert main(["pretrain", "--max_steps=ten"]) == 2
    assert "--max_steps='ten': expected a value of type int" in capsys.readouterr().err


def test_unknown_command(capsys):
    assert main(["fly"]) == 2
    assert "unknown command 'fly'" in capsys.readouterr().err


def test_overrides_parse_types_and_bool_flags():
    cfg = apply_overrides(PretrainConfig(), ["--lr=0.01", "--max-steps=7", "--resume", "--progress=false"])
    assert cfg.lr == 0.01 and cfg.max_steps == 7 and cfg.resume is True and cfg.progress is False
    with pytest.raises(ConfigError, match="expected a value of type bool"):
        apply_overrides(PretrainConfig(), ["--resume=maybe"])
    with pytest.raises(ConfigError, match="expected a value of type int"):
        apply_overrides(PretrainConfig(), {"max_steps": 1.5})


def test_preset_fills_unset_fields_only():
    cfg = make_config(PretrainConfig, overrides=["--preset=micro", "--n_layer=3"])
    assert cfg.n_layer == 3 and cfg.n_embd == 64 and cfg.block_size == 64
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        make_config(PretrainConfig, overrides=["--preset=huge"])


def test_help_lists_documented_options(capsys):
    assert main(["pretrain", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--max_steps" in out and "optimiser steps" in out


def test_entry_point_exits_with_mains_status():
    """`python -m minirlhf` (the entry point the console script and torchrun use) ends the process with the
    status `main` returned: 2 for a bad option, 0 for help."""
    import subprocess
    import sys

    bad = subprocess.run([sys.executable, "-m", "minirlhf", "pretrain", "--no_such_key=3"], capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "unknown option --no_such_key" in bad.stderr
    ok = subprocess.run([sys.executable, "-m", "minirlhf", "--help"], capture_output=True, text=True)
    assert ok.returncode == 0 and "pipeline" in ok.stdout


def test_zero_is_kept_where_it_is_a_setting():
    """SFT's pretraining mix: the tiny preset sets 0.5, and `--ptx_coef=0` turns it off (not refilled);
    fields whose 0 means "from the preset" (max_steps) are still filled."""
    from minirlhf.config import SFTConfig

    assert make_config(SFTConfig, preset="tiny").ptx_coef == 0.5
    off = make_config(SFTConfig, preset="tiny", overrides=["--ptx_coef=0", "--max_steps=0"])
    assert off.ptx_coef == 0.0 and off.max_steps == 600
    assert make_config(SFTConfig, preset="micro").ptx_coef == 0.0


@pytest.mark.parametrize("option, message", [
    ("--top_p=0", "--top_p=0.0: must be in (0, 1]"),
    ("--top_k=-3", "--top_k=-3: must be >= 0"),
    ("--max_new_tokens=0", "--max_new_tokens=0: must be >= 1"),  # not "the prompt fills the context"
    ("--max_new_tokens=-1", "--max_new_tokens=-1: must be >= 1"),
    ("--num_samples=0", "--num_samples=0: must be >= 1"),  # not "no prompts to generate from"
    ("--temperature=-1", "--temperature=-1.0: must be >= 0"),  # not greedy in silence
    ("--temperature=nan", "--temperature=nan: must be a finite number"),  # not torch's "probability tensor contains nan"
    ("--device=foo", "--device='foo': expected auto, cpu, cuda or cuda:N (e.g. cuda:1)"),  # not torch's device list
    ("--seed=99999999999999999999", "--seed=99999999999999999999: must be in [0, 4294967295]"),  # not "Overflow"
    ("--seed=-1", "--seed=-1: must be in [0, 4294967295]"),
    # a byte of the command line that is not UTF-8 (here 0xe9, Latin-1's é) reaches Python as U+DCE9
    ("--prompt=caf\udce9", "--prompt='caf\\udce9': not UTF-8 text (character 3); give the prompt in UTF-8"),
])
def test_sample_options_out_of_range_fail_before_the_checkpoint_is_read(option, message, capsys):
    """`minirlhf sample` has no preset, and its options are range-checked all the same: exit 2 naming the
    option, before any checkpoint is read (this one does not exist)."""
    assert main(["sample", "--checkpoint=/nonexistent/minirlhf/model.pt", option]) == 2
    assert message in capsys.readouterr().err


def test_mistyped_bare_flag_is_an_unknown_option(capsys):
    """`minirlhf sft --forse` (no value) gets the unknown-option error that lists the valid options; a known
    non-bool option without a value still asks for one."""
    assert main(["sft", "--forse"]) == 2
    err = capsys.readouterr().err
    assert "unknown option --forse for SFTConfig; valid options:" in err and "--force" in err
    with pytest.raises(ConfigError, match="'--max_steps': expected --max_steps=value"):
        apply_overrides(PretrainConfig(), ["--max_steps"])


def test_other_ranks_leave_a_command_that_is_not_data_parallel_without_a_collective(monkeypatch):
    """Under torchrun, rank 0 alone runs `sample`, `eval`, `frontier`, ...; another rank returns 0 at once, never
    waiting in a collective (which would fail after MINIRLHF_DIST_TIMEOUT if rank 0's command ran longer), and
    runs nothing. A data-parallel command still runs on every rank."""
    import sys
    import types

    from minirlhf import cli
    from minirlhf import distributed as dist

    ran = []
    monkeypatch.setitem(sys.modules, "fake_stage", types.SimpleNamespace(run=lambda cfg: ran.append(cfg)))
    monkeypatch.setitem(cli.COMMANDS, "sample", (cli.COMMANDS["sample"][0], "fake_stage:run", "test"))
    monkeypatch.setitem(cli.COMMANDS, "sft", (cli.COMMANDS["sft"][0], "fake_stage:run", "test"))

    waits = []
    monkeypatch.setattr(dist, "init", lambda: None)
    monkeypatch.setattr(dist, "barrier", lambda: waits.append("barrier"))
    monkeypatch.setattr(dist, "is_main", lambda: False)  # rank 1 of 2
    assert main(["sample"]) == 0 and ran == [] and waits == []
    assert main(["sft"]) == 0 and len(ran) == 1 and waits == ["barrier"]  # data-parallel: every rank runs it
    monkeypatch.setattr(dist, "is_main", lambda: True)  # rank 0
    assert main(["sample"]) == 0 and len(ran) == 2


@pytest.mark.parametrize("argv, message", [
    (["pretrain", "--max_steps=-3"], "--max_steps=-3: must be >= 1"),
    (["sft", "--eval_interval=0"], "--eval_interval=0: must be >= 1"),
    (["sft", "--log_interval=0"], "--log_interval=0: must be >= 1"),
    (["pretrain", "--n_layer=-1"], "--n_layer=-1: must be >= 1"),
    (["pretrain", "--n_head=3"], "--n_embd=64 is not divisible by --n_head=3"),
    (["sft", "--batch_size=-4"], "--batch_size=-4: must be >= 1"),
    (["pretrain", "--block_size=-5"], "--block_size=-5: must be >= 1"),
    (["sft", "--lr=-1"], "--lr=-1.0: must be > 0"),
    (["dpo", "--beta=-1"], "--beta=-1.0: must be > 0"),
    (["pretrain", "--val_fraction=1.5"], "--val_fraction=1.5: must be in (0, 1)"),
    (["pretrain", "--dropout=1"], "--dropout=1.0: must be in [0, 1)"),
    (["ppo", "--lam=1.5"], "--lam=1.5: must be in [0, 1]"),
    (["pretrain", "--dtype=fp8"], "--dtype='fp8': expected auto, float32 or bfloat16"),
    (["ppo", "--kl_estimator=k2"], "--kl_estimator='k2': expected k1 or k3"),
    (["sft", "--embedding_lr_scale=-1"], "--embedding_lr_scale=-1.0: must be >= 0"),
    (["sft", "--embedding_lr_scale=nan"], "--embedding_lr_scale=nan: must be a finite number"),
    (["ppo", "--cliprange=0"], "--cliprange=0.0: must be > 0"),
    (["ppo", "--cliprange=nan"], "--cliprange=nan: must be a finite number"),
    (["ppo", "--kl_coef=inf"], "--kl_coef=inf: must be a finite number"),  # every reward -inf
    (["pretrain", "--lr=inf"], "--lr=inf: must be a finite number"),  # trained until the loss was NaN
    (["grpo", "--beta=-inf"], "--beta=-inf: must be a finite number"),
    (["ppo", "--kl_coef=-0.1"], "--kl_coef=-0.1: must be >= 0"),
    (["ppo", "--kl_target=0"], "--kl_target=0.0: must be > 0"),
    (["ppo", "--ptx_coef=-1"], "--ptx_coef=-1.0: must be >= 0"),  # PPO's -1 is not "from preset" (SFT's is)
    (["sft", "--ptx_coef=-0.5"], "--ptx_coef=-0.5: must be >= 0"),
    (["ppo", "--temperature=0"], "--temperature=0.0: must be > 0"),
    (["grpo", "--temperature=-1"], "--temperature=-1.0: must be > 0"),
    (["best-of-n", "--temperature=-1"], "--temperature=-1.0: must be > 0"),
    (["pairs", "--temperature=-0.5"], "--temperature=-0.5: must be > 0"),
    (["reward", "--temperature=0"], "--temperature=0.0: must be > 0"),
    (["eval", "--temperature=-1"], "--temperature=-1.0: must be >= 0"),
    (["eval", "--temperature=nan"], "--temperature=nan: must be a finite number"),
    (["grpo", "--epsilon=1"], "--epsilon=1.0: must be in (0, 1)"),
    (["pairs", "--samples_per_prompt=1"], "--samples_per_prompt=1: must be >= 2"),
    (["pairs", "--samples_per_prompt=0"], "--samples_per_prompt=0: must be >= 2"),
    (["pairs", "--n_prompts=-3"], "--n_prompts=-3: must be >= 0"),
    (["pretrain", "--vocab_size=-5"], "--vocab_size=-5: must be >= 1"),
    (["ppo", "--device=gpu"], "--device='gpu': expected auto, cpu, cuda or cuda:N (e.g. cuda:1)"),
    (["sft", "--seed=4294967296"], "--seed=4294967296: must be in [0, 4294967295]"),  # sft seeds with ~seed * 1e9
    (["world", "--seed=-1"], "--seed=-1: must be in [0, 4294967295]"),
])
def test_options_out_of_range_fail_before_the_stage_touches_anything(argv, message, capsys, tmp_path):
    """A nonsense value is a one-line error naming the option (exit 2), before any file is read or written
    (pretrain --max_steps=-3 used to overwrite a good model with an untrained one and call it finished)."""
    out = tmp_path / "out"
    assert main(argv + ["--preset=micro", f"--out_dir={out}"]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_range_checks_keep_the_settings_that_are_zero_on_purpose():
    """GRPO's beta 0 (no KL term), grad_clip 0 (off), PPO's fixed KL coefficient 0 and ptx_coef 0, greedy
    evaluation (temperature 0) and a preset's own values all pass."""
    from minirlhf.config import EvalConfig, GRPOConfig, PPOConfig, SampleConfig, check_ranges

    cfg = make_config(GRPOConfig, "micro", {"beta": 0.0, "grad_clip": 0.0, "rollout_shards": 0})
    check_ranges(cfg)
    assert cfg.beta == 0.0
    ppo = make_config(PPOConfig, "micro", {"kl_coef": 0.0, "ptx_coef": 0.0, "cliprange_value": 0.0})
    assert (ppo.kl_coef, ppo.ptx_coef, ppo.cliprange_value) == (0.0, 0.0, 0.0)
    assert make_config(EvalConfig, "micro", {"temperature": 0.0}).temperature == 0.0
    assert make_config(SampleConfig, overrides={"temperature": 0.0}).temperature == 0.0


def test_compile_is_an_option_only_of_the_stages_that_compile(capsys, tmp_path):
    """pretrain and SFT torch.compile the model with --compile; reward and DPO never read it, so there it is an
    unknown option (it used to be listed by their --help and accepted without effect)."""
    for name, config in (("reward", "RewardConfig"), ("dpo", "DPOConfig")):
        assert main([name, "--compile", "--preset=micro", f"--out_dir={tmp_path}"]) == 2
        assert f"unknown option --compile for {config}; valid options:" in capsys.readouterr().err
        assert main([name, "--help"]) == 0
        assert "--compile" not in capsys.readouterr().out
    for name in ("pretrain", "sft"):
        assert main([name, "--help"]) == 0
        assert "--compile          (bool, default False) torch.compile the model (CUDA only)" in capsys.readouterr().out
    from minirlhf.config import SFTConfig

    assert make_config(SFTConfig, "micro", ["--compile"]).compile is True


@pytest.mark.parametrize("name, message", [
    ("sft", "minirlhf sft: interrupted; the last checkpoint is kept (continue with --resume)"),
    ("ppo", "minirlhf ppo: interrupted; the last checkpoint is kept (continue with --resume)"),
    ("pipeline", "minirlhf pipeline: interrupted; run the same command again to continue (finished stages are reused)"),
    ("sample", "minirlhf sample: interrupted"),
    ("pairs", "minirlhf pairs: interrupted"),
    ("export-hf", "minirlhf export-hf: interrupted"),
])
def test_ctrl_c_says_how_to_continue_only_where_a_command_can(name, message, monkeypatch, capsys):
    """Ctrl-C: exit 130, and the --resume hint only for a command that has --resume (sample, pairs, ... have none)."""
    import sys
    import types

    from minirlhf import cli
    from minirlhf import distributed as dist

    def interrupted(cfg):
        raise KeyboardInterrupt

    monkeypatch.setitem(sys.modules, "fake_stage", types.SimpleNamespace(run=interrupted))
    monkeypatch.setitem(cli.COMMANDS, name, (cli.COMMANDS[name][0], "fake_stage:run", "test"))
    monkeypatch.setattr(dist, "init", lambda: None)
    assert main([name]) == 130
    assert capsys.readouterr().err == f"\n{message}\n"


@pytest.mark.parametrize("argv, message", [
    (["sample", "--seed=1", "--seed=2"], "--seed given twice (--seed=1 and --seed=2); give it once"),
    (["sample", "--seed", "1", "--seed=1"], "--seed given twice (--seed=1 and --seed=1); give it once"),
    (["pretrain", "--max-steps=5", "--max_steps=6", "--out_dir={out}"],
     "--max_steps given twice (--max-steps=5 and --max_steps=6)"),
    (["sft", "--sft-data=a.jsonl", "--data=b.jsonl", "--out_dir={out}"],
     "--data given twice (--sft-data=a.jsonl and --data=b.jsonl)"),
    (["ppo", "--force", "--force=false", "--out_dir={out}"], "--force given twice (--force and --force=false)"),
    (["export-hf", "a.pt", "b", "--out=c"], "--out given twice (as OUT 'b' and as --out=c); give it once"),
    (["import-hf", "folder", "--path=other"], "--path given twice (as PATH 'folder' and as --path=other)"),
])
def test_an_option_given_twice_is_an_error_not_the_last_one_winning(argv, message, capsys, tmp_path):
    """Spelled the same, with dashes, through an alias or as a positional argument: exit 2 before anything runs."""
    out = tmp_path / "out"
    assert main([a.format(out=out) for a in argv]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_a_dict_of_overrides_setting_a_field_twice_through_an_alias_is_an_error():
    from minirlhf.config import SFTConfig

    with pytest.raises(ConfigError, match=r"^--data given twice \(sft_data='a' and data='b'\); give it once$"):
        apply_overrides(SFTConfig(), {"sft_data": "a", "data": "b"})


def test_a_file_that_is_not_a_policy_checkpoint_is_one_line_saying_what_to_pass(tmp_path, capsys):
    """A JSON file, a text file or a reward model as `sample --checkpoint`: one line naming the file and what to
    pass instead (not torch's weights_only advice, "pop from empty list", or a Python function to call)."""
    import torch

    from minirlhf import checkpoint as ck
    from minirlhf.config import ModelConfig
    from minirlhf.model import GPT, ScalarModel

    (tmp_path / "config.json").write_text('{"n_layer": 2}\n')
    (tmp_path / "notes.txt").write_text("hello\n")
    torch.save([1, 2, 3], tmp_path / "list.pt")  # a torch file, but no checkpoint dict
    expected = "(expected a stage's model.pt, e.g. out/tiny/sft/model.pt)"
    for name in ("config.json", "notes.txt", "list.pt"):
        path = tmp_path / name
        assert main(["sample", f"--checkpoint={path}"]) == 1
        assert capsys.readouterr().err == f"minirlhf sample: error: {path} is not a checkpoint written by minirlhf " \
            f"{expected}\n"
    rm = str(tmp_path / "reward" / "model.pt")
    ck.save_checkpoint(rm, ck.model_payload(ScalarModel(GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=8,
                                                                        vocab_size=300))), "reward"))
    assert main(["sample", f"--checkpoint={rm}"]) == 1
    assert capsys.readouterr().err == (f"minirlhf sample: error: {rm} is a reward/value model (trunk + scalar head); "
                                       "pass a policy model.pt, e.g. out/tiny/sft/model.pt\n")
    state = tmp_path / "ckpt.pt"  # a damaged training state: the message says what --resume expected there
    state.write_text("hello\n")
    with pytest.raises(RuntimeError, match=r"^.*ckpt.pt is not a checkpoint written by minirlhf \(expected the "
                                           r"training state a stage writes for --resume\)$"):
        ck.load_checkpoint(str(state))


def scripted_checkpoint(folder, switch_at: int) -> str:
    """A model.pt (+ tokenizer.json) whose greedy next token depends only on the position: "x" at positions
    < switch_at, <|end|> from there on. One byte per token (no merges), so token counts are character counts.
    Every block adds 0 to the residual (zero weights); the position embedding decides the final layer norm's
    sign between the two channels that the tied embedding rows of "x" and <|end|> read."""
    import torch

    from minirlhf import checkpoint as ck
    from minirlhf.config import ModelConfig
    from minirlhf.model import GPT
    from minirlhf.tokenizer import Tokenizer

    tok = Tokenizer.train("no merges needed", vocab_size=261)
    model = GPT(ModelConfig(n_layer=1, n_head=1, n_embd=8, block_size=32, vocab_size=tok.n_vocab))
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.transformer.ln_f.weight.fill_(1.0)
        wte, wpe = model.transformer.wte.weight, model.transformer.wpe.weight
        wte[tok.encode("x")[0], 0] = wte[tok.end_id, 1] = 1.0
        wpe[:switch_at, 0], wpe[:switch_at, 1] = 10.0, -10.0
        wpe[switch_at:, 0], wpe[switch_at:, 1] = -10.0, 10.0
    path = str(folder / "model.pt")
    ck.save_checkpoint(path, ck.model_payload(model, "sft"))
    tok.save(folder / "tokenizer.json")
    return path


def test_sample_prints_each_continuation_and_a_chat_reply_stops_at_end(tmp_path, capsys):
    """`minirlhf sample` on a model whose greedy output is known: a plain prompt printed with its continuation
    (which runs past <|end|> to --max_new_tokens), a chat reply alone and cut at its first <|end|>; a prompt
    leaving less room than --max_new_tokens gets the shorter continuation and a note saying so."""
    # chat prompt "hi" = <|user|> h i <|end|> <|assistant|>: 5 tokens, so positions 4 and 5 predict "x", 6 <|end|>
    path = scripted_checkpoint(tmp_path, switch_at=6)
    common = ["sample", f"--checkpoint={path}", "--prompt=hi", "--temperature=0", "--max_new_tokens=8"]
    assert main([*common, "--chat", "--num_samples=2"]) == 0
    out, err = capsys.readouterr()
    assert out == "--- sample 1 ---\nxx<|end|>\n--- sample 2 ---\nxx<|end|>\n" and err == ""
    assert main([*common, "--num_samples=1"]) == 0  # plain "hi": positions 1-5 predict "x", 6-8 <|end|>
    out, err = capsys.readouterr()
    assert out == "--- sample 1 ---\nhixxxxx<|end|><|end|><|end|>\n" and err == ""
    long = "a" * 28  # 28 of the 32 positions: room for 4 new tokens
    assert main(["sample", f"--checkpoint={path}", f"--prompt={long}", "--temperature=0", "--max_new_tokens=8",
                 "--num_samples=1"]) == 0
    out, err = capsys.readouterr()
    assert out == f"--- sample 1 ---\n{long}" + "<|end|>" * 4 + "\n"
    assert err == ("[sample] note: the prompt has 28 tokens, which leaves room for 4 new tokens in the context of 32, "
                   "not --max_new_tokens=8\n")


def test_help_command_prints_that_commands_options(capsys):
    """`minirlhf help sample` is `minirlhf sample --help`, not the top-level usage; `help fly` is an unknown command."""
    assert main(["sample", "--help"]) == 0
    expected = capsys.readouterr().out
    assert expected.startswith("minirlhf sample: print continuations of a prompt from a checkpoint\n")
    assert main(["help", "sample"]) == 0
    assert capsys.readouterr().out == expected
    assert main(["help", "fly"]) == 2
    assert "unknown command 'fly'" in capsys.readouterr().err


def test_a_cuda_device_with_an_index_is_a_valid_option():
    from minirlhf.config import SampleConfig

    assert make_config(SampleConfig, overrides=["--device=cuda:1"]).device == "cuda:1"
    assert make_config(SampleConfig, overrides=["--seed=4294967295"]).seed == 4294967295


def test_help_joins_a_comment_continued_on_the_next_line(capsys):
    """An option whose comment goes on over two source lines gets all of it in --help, not a sentence cut off."""
    assert main(["sft", "--help"]) == 0
    line = next(li for li in capsys.readouterr().out.splitlines() if li.startswith("  --grad_accum "))
    assert line.endswith("; validation and DPO's reference passes run in batches of that size too, so it bounds their "
                         "memory)")


def test_an_override_of_the_preset_wins_over_the_preset_argument():
    """make_config: defaults, then the `preset` argument, then the overrides (a --preset among them wins), as documented."""
    cfg = make_config(PretrainConfig, "tiny", ["--preset=micro"])
    assert (cfg.preset, cfg.n_layer, cfg.max_steps) == ("micro", 2, 60)
    assert make_config(PretrainConfig, "micro", {"lr": 0.5}).lr == 0.5


@pytest.mark.parametrize("name", ["sft", "world", "eval"])
def test_an_empty_preset_is_an_unknown_preset_except_for_the_pipeline(name, capsys, tmp_path):
    """`--preset=` names no preset (only the pipeline's "" means "by device"): exit 2 listing the presets, not an
    error about --max_steps=0 the user never gave, nor a stage run without one."""
    out = tmp_path / "out"
    assert main([name, "--preset=", f"--out_dir={out}"]) == 2
    assert f"minirlhf {name}: unknown preset ''; valid presets: micro, tiny, small, gpt2\n" == capsys.readouterr().err
    assert not out.exists()
