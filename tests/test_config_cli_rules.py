"""Configuration and command-line rules checked by hand: every preset value reaches the stage it is written for,
the range checks of the less used options (and their boundaries), values parsed by type, the reuse key (what it
ignores, what it resolves, what it counts), --resume's input check, the NaN guard, the metrics log on resume,
and the code digest (class docstrings, import cycles, the package's __init__)."""

import json
import math
import re
import sys
import threading
import types
from dataclasses import fields

import pytest
import torch

from minirlhf import cli
from minirlhf import config as C
from minirlhf import distributed as dist
from minirlhf.common import (MetricsLog, NonFiniteLossError, check_finite, check_resume, code_digest,
                             config_key, run_record)
from minirlhf.config import ConfigError, apply_overrides, make_config

# the PRESETS section each stage config reads, written out here (not read from the classes)
SECTION = {C.PretrainConfig: "pretrain", C.SFTConfig: "sft", C.RewardConfig: "reward", C.PairsConfig: "pairs",
           C.PPOConfig: "ppo", C.DPOConfig: "dpo", C.GRPOConfig: "grpo", C.BestOfNConfig: "best_of_n"}


# ---------------------------------------------------------------------------------------------------
# presets


def test_every_preset_key_names_a_field_of_the_stage_it_is_written_for():
    """A misspelled preset key (or a section no stage reads) would be ignored in silence, leaving the field at 0."""
    model_fields = {f.name for f in fields(C.ModelConfig)}
    for name, preset in C.PRESETS.items():
        assert set(preset) == {"model", *SECTION.values()}, name
        assert set(preset["model"]) <= model_fields, name
        for cls, section in SECTION.items():
            assert set(preset[section]) <= {f.name for f in fields(cls)}, (name, section)


@pytest.mark.parametrize("preset", list(C.PRESETS))
def test_each_stage_takes_the_model_shape_and_its_own_section_of_the_preset(preset):
    """make_config(cls, preset) fills the model shape and the stage's own section (DPO's, not SFT's)."""
    for cls, section in SECTION.items():
        cfg = make_config(cls, preset)
        wanted = {**C.PRESETS[preset]["model"], **C.PRESETS[preset][section]}
        got = {k: getattr(cfg, k) for k in wanted if hasattr(cfg, k)}
        assert got == {k: v for k, v in wanted.items() if hasattr(cfg, k)}, (preset, cls.__name__)
    dpo = make_config(C.DPOConfig, "micro")
    assert (dpo.max_steps, dpo.batch_size, dpo.lr) == (10, 8, 0.0001)  # micro's "dpo" row, not its "sft" row


# ---------------------------------------------------------------------------------------------------
# range checks


@pytest.mark.parametrize("cls, overrides, message", [
    (C.SFTConfig, {"grad_accum": 0}, "--grad_accum=0: must be >= 1"),
    (C.PPOConfig, {"kl_horizon": 0}, "--kl_horizon=0: must be >= 1"),  # the controller divides by it
    (C.PretrainConfig, {"warmup_steps": -1}, "--warmup_steps=-1: must be >= 0"),
    (C.DPOConfig, {"grad_clip": -1.0}, "--grad_clip=-1.0: must be >= 0"),
    (C.DPOConfig, {"tau": 0.0}, "--tau=0.0: must be > 0"),  # IPO divides by it
    (C.DPOConfig, {"label_smoothing": 0.5}, "--label_smoothing=0.5: must be in [0, 0.5)"),
    (C.PretrainConfig, {"min_lr_ratio": 1.5}, "--min_lr_ratio=1.5: must be in [0, 1]"),
    (C.SampleConfig, {"device": "cpu0"}, "--device='cpu0': expected auto, cpu, cuda or cuda:N"),
    (C.SampleConfig, {"device": "cuda:1x"}, "--device='cuda:1x': expected auto, cpu, cuda or cuda:N"),
])
def test_less_used_options_out_of_range_are_refused_by_name(cls, overrides, message):
    """Counts >= 1, weights >= 0, IPO's tau > 0, cDPO's smoothing below 0.5, the LR floor ratio <= 1, whole device names."""
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        make_config(cls, None if cls is C.SampleConfig else "micro", overrides)


def test_closed_ends_of_the_ranges_are_accepted():
    """The edges the ranges include: a constant schedule (min_lr_ratio 1), no warm-up, no smoothing, gamma 1, lambda 0."""
    cfg = make_config(C.PretrainConfig, "micro", {"min_lr_ratio": 1.0, "warmup_steps": 0, "dropout": 0.0, "beta1": 0.0})
    assert (cfg.min_lr_ratio, cfg.warmup_steps) == (1.0, 0)
    assert make_config(C.DPOConfig, "micro", {"label_smoothing": 0.0, "grad_clip": 0.0}).label_smoothing == 0.0
    assert make_config(C.PPOConfig, "micro", {"gamma": 1.0, "lam": 0.0}).lam == 0.0
    assert make_config(C.SampleConfig, overrides={"top_p": 1.0, "device": "cpu"}).top_p == 1.0


# ---------------------------------------------------------------------------------------------------
# parsing


def test_command_line_values_are_parsed_by_the_fields_type():
    """Booleans in any case (and a bare dashed flag), ints that are whole numbers only, floats in any notation."""
    cfg = apply_overrides(C.PPOConfig(), ["--whiten-rewards", "--adaptive_kl=No", "--anneal-lr=TRUE", "--kl_coef=1e-2",
                                          "--iterations=12"])
    assert (cfg.whiten_rewards, cfg.adaptive_kl, cfg.anneal_lr) == (True, False, True)
    assert cfg.kl_coef == 0.01 and cfg.iterations == 12
    for raw in ("1.5", "2.0", "1e3"):
        with pytest.raises(ConfigError, match=rf"^--iterations='{raw}': expected a value of type int$"):
            apply_overrides(C.PPOConfig(), [f"--iterations={raw}"])


def test_a_dict_of_overrides_is_checked_and_stored_like_the_command_line():
    """An int given for a float field is stored as a float (config.json and the reuse key are the same as for
    `--lr=1`); a bool is not an int or a float."""
    from_dict = make_config(C.PPOConfig, "micro", {"kl_coef": 1, "lr": 2})
    from_cli = make_config(C.PPOConfig, "micro", ["--kl_coef=1", "--lr=2"])
    assert type(from_dict.kl_coef) is float and type(from_dict.lr) is float
    assert json.dumps(C.to_dict(from_dict), sort_keys=True) == json.dumps(C.to_dict(from_cli), sort_keys=True)
    with pytest.raises(ConfigError, match=r"^max_steps=True: expected a value of type int$"):
        apply_overrides(C.PretrainConfig(), {"max_steps": True})
    with pytest.raises(ConfigError, match=r"^lr=False: expected a value of type float$"):
        apply_overrides(C.PretrainConfig(), {"lr": False})


def test_a_positional_argument_after_a_key_value_option_stays_positional():
    """`import-hf --out=DIR FOLDER`: FOLDER is the path, not glued onto --out's value."""
    assert cli.positional_args("import-hf", cli.normalise_args(["--out=o", "folder"])) == ["--out=o", "--path=folder"]
    assert cli.normalise_args(["--seed", "3", "--chat", "--prompt", "hi"]) == ["--seed=3", "--chat", "--prompt=hi"]


def test_pipeline_without_a_preset_gets_the_devices_preset(monkeypatch):
    """`minirlhf pipeline` without --preset runs tiny on CPU and small on CUDA; a --preset given is kept."""
    ran = []
    monkeypatch.setitem(sys.modules, "fake_stage", types.SimpleNamespace(run=ran.append))
    monkeypatch.setitem(cli.COMMANDS, "pipeline", (C.PipelineConfig, "fake_stage:run", "test"))
    monkeypatch.setattr(dist, "init", lambda: None)
    assert cli.main(["pipeline"]) == 0 and cli.main(["pipeline", "--preset=micro"]) == 0
    assert [c.preset for c in ran] == ["small" if torch.cuda.is_available() else "tiny", "micro"]


# ---------------------------------------------------------------------------------------------------
# the reuse key and --resume


def test_the_reuse_key_ignores_the_output_folder_and_resolves_device_and_dtype():
    """A moved out/ folder, or "auto" for what it resolves to on this machine, is the same key; other inputs or
    another precision are not."""
    def key(inputs=None, **over):
        return config_key(make_config(C.SFTConfig, "micro", over), inputs or {"init": "x"}, "minirlhf.sft")

    plain = key()
    here = "cuda" if torch.cuda.is_available() else "cpu"
    assert key(out_dir="/elsewhere/out") == plain
    assert key(device=here) == plain
    assert key(dtype="bfloat16" if here == "cuda" else "float32") == plain
    assert key(dtype="float32" if here == "cuda" else "bfloat16") != plain
    assert key({"init": "y"}) != plain and key({"init": "x", "data": "z"}) != plain


def test_resume_refuses_other_inputs_and_takes_what_is_not_recorded():
    """check_resume: the same settings and inputs pass (result-neutral flags may differ); a changed input is named;
    inputs recorded as None (or not known now) are not compared."""
    cfg = make_config(C.SFTConfig, "micro")
    inputs = {"init": "aaa", "data": "bbb"}
    rec = run_record(cfg, inputs)
    neutral = make_config(C.SFTConfig, "micro", {"resume": True, "force": True, "progress": False, "stop_after": 3,
                                                 "out_dir": "moved", "log_interval": 1, "max_minutes": 5.0})
    check_resume("ck.pt", rec, neutral, dict(inputs))
    with pytest.raises(ValueError, match=r"^--resume: ck.pt was written from other inputs \(data changed since\)"):
        check_resume("ck.pt", rec, cfg, {"init": "aaa", "data": "ccc"})
    check_resume("ck.pt", run_record(cfg, None), cfg, inputs)
    check_resume("ck.pt", rec, cfg, None)
    with pytest.raises(ValueError, match=r"other settings \(--lr=0.001 then, 0.002 now\)"):
        check_resume("ck.pt", rec, make_config(C.SFTConfig, "micro", {"lr": 0.002}), inputs)


# ---------------------------------------------------------------------------------------------------
# the NaN guard and the metrics log


def test_the_nan_guard_names_the_first_bad_step_of_any_term():
    """The first non-finite value (NaN or +-inf), counted from first_step, in any term, an empty term skipped."""
    t = torch.tensor
    with pytest.raises(NonFiniteLossError, match=r"^s: b is nan at step 11 -- stopping$"):
        check_finite({"a": [], "b": [t(0.5), t(math.nan), t(math.inf)]}, "s", 10)
    with pytest.raises(NonFiniteLossError, match=r"^s: a is -inf at step 7 -- stopping; the last good checkpoint is ck$"):
        check_finite({"a": [t(1.0), t(-math.inf)]}, "s", 6, last_good="ck")
    check_finite({"a": [t(1.0), t(2.0)], "b": []}, "s", 0)  # all finite: nothing raised


def test_the_metrics_log_keeps_the_rows_up_to_the_resumed_step(tmp_path):
    """Resuming at step 20 keeps the rows of steps <= 20 and drops the later ones; a new run starts an empty log;
    a disabled log (another rank) neither removes nor writes anything."""
    path = tmp_path / "metrics.jsonl"

    def write(steps, key="step"):
        path.write_text("".join(json.dumps({key: s, "loss": 1.0}) + "\n" for s in steps))

    def steps(key="step"):
        return [json.loads(line)[key] for line in path.read_text().splitlines()]

    write([0, 10, 20, 30, 40])
    log = MetricsLog(str(path), resume_step=20)
    assert log.dropped == 2 and steps() == [0, 10, 20]
    log.log({"step": 30, "loss": 0.5})
    assert steps() == [0, 10, 20, 30]
    write([1, 2, 3], key="iteration")
    assert MetricsLog(str(path), resume_step=2, key="iteration").dropped == 1 and steps("iteration") == [1, 2]
    write([0, 10])
    off = MetricsLog(str(path), resume_step=None, enabled=False)
    off.log({"step": 20})
    assert steps() == [0, 10]
    MetricsLog(str(path), resume_step=None)
    assert not path.exists()


# ---------------------------------------------------------------------------------------------------
# the code digest


def test_the_code_digest_ignores_class_docstrings_and_follows_an_import_cycle(tmp_path):
    """Two modules that import each other: the digest ends, counts both, and a class docstring does not count."""
    root = tmp_path / "minirlhf"
    root.mkdir()
    a = 'from minirlhf import b\n\n\nclass K:\n    """Doc."""\n\n    x = 1\n'
    (root / "__init__.py").write_text("")
    (root / "a.py").write_text(a)
    (root / "b.py").write_text("import minirlhf.a\n\nY = 2\n")
    done = []
    worker = threading.Thread(target=lambda: done.append(code_digest("minirlhf.a", str(root))), daemon=True)
    worker.start()
    worker.join(timeout=30)
    assert done, "code_digest did not end on an import cycle"
    plain = done[0]
    (root / "a.py").write_text(a.replace("Doc.", "Another docstring."))
    assert code_digest("minirlhf.a", str(root)) == plain
    (root / "b.py").write_text("import minirlhf.a\n\nY = 3\n")
    assert code_digest("minirlhf.a", str(root)) != plain


def test_the_code_digest_counts_the_package_init_of_a_module_without_imports(tmp_path):
    """Importing minirlhf.leaf runs minirlhf/__init__.py first: its code counts even when leaf imports nothing."""
    root = tmp_path / "minirlhf"
    root.mkdir()
    (root / "__init__.py").write_text("")
    (root / "leaf.py").write_text("Y = 2\n")
    plain = code_digest("minirlhf.leaf", str(root))
    (root / "__init__.py").write_text("SETTING = 1\n")
    assert code_digest("minirlhf.leaf", str(root)) != plain
