"""The reward-vs-KL frontier: how much true (gold) reward each method buys per nat of KL from SFT.

Run it:
    minirlhf frontier --preset tiny                      # every method at its default sweep, then the plot
    minirlhf frontier --preset tiny --methods=ppo,dpo    # a subset
    minirlhf frontier --preset tiny --dpo_betas=0.05,0.1,0.5,1

Each point is one trained policy (or, for best-of-n, one n), placed at
    x = mean sequence KL to the SFT reference (k1, nats per response) on the held-out prompts
        (evaluate_policy's `kl_k1_heldout`: eval_prompts.jsonl, not the training-split sample),
    y = mean gold reward on the same prompts (`gold`),
in the manner of the DPO paper's Figure 2, left (Rafailov et al. 2023) and of Gao et al. 2022's
over-optimisation plots. Methods and what is swept:
    sft   the SFT model itself: the common origin, KL 0
    ppo   PPO against the reward model with a FIXED kl_coef in r - kl_coef * KL   (--ppo_kl_coefs)
    dpo   DPO on the preference pairs, temperature beta                         (--dpo_betas)
    grpo  GRPO against the reward model, k3 penalty weight beta (0 allowed)     (--grpo_betas)
    bon   best-of-n by the reward model, KL <= log n - (n - 1) / n (an upper    (--bon_ns)
          bound, reached when repeated samples are negligible: `best_of_n`)
    temp  the SFT model itself sampled at temperature T < 1: no training and no reward model at all,
          only a sharper distribution (--temperatures); the baseline that says how much of a gain
          is plain entropy reduction (most answers the SFT model gives most often are right)
Every trained (or tempered) policy is measured by the same `evaluate_policy` call (same prompts, same
seed, the SFT model as reference, the reward model for the proxy column), so the points are comparable;
best-of-n takes its gold and proxy from its own stage on the same held-out prompts and the analytic KL
(an upper bound: its points may lie further left than drawn).

Writes out/<preset>/frontier/frontier.json (one row per point: method, knob, kl, gold, proxy, and length:
the mean response length in tokens on the same held-out prompts, None for best-of-n; `complete` is false
while points are still being added) and plots/frontier_<preset>.png (gold vs KL per method; proxy vs gold per method). Each training run
is its own stage folder (out/<preset>/frontier_ppo_kl0.05, ...), reused when it already ran.

Deliberate simplifications: one seed per point; the stages' default budgets (a method that would do
better with more steps is not tuned per point); KL is measured on the policy's own samples at T = 1
(for the tempered SFT model: on samples of the tempered copy, i.e. of the SFT model at T).
"""

from __future__ import annotations

import math
import os
import time

from minirlhf.common import write_json
from minirlhf.config import BestOfNConfig, DPOConfig, FrontierConfig, GRPOConfig, PPOConfig, make_config, stage_dir

METHODS = ("ppo", "dpo", "grpo", "bon", "temp")
LABELS = {"ppo": "PPO (kl_coef)", "dpo": "DPO (beta)", "grpo": "GRPO (beta)", "bon": "best-of-n (n)",
          "temp": "SFT at temperature T"}


# what each method's knob may be (the ranges its stage accepts)
KNOB_RANGES = {"bon": (lambda n: n >= 1 and float(n).is_integer(), "a whole number >= 1"),
               "ppo": (lambda c: c >= 0, ">= 0"), "dpo": (lambda b: b > 0, "> 0"), "grpo": (lambda b: b >= 0, ">= 0"),
               "temp": (lambda t: t > 0, "> 0")}


def parse_floats(spec: str, name: str) -> list[float]:
    """"0.05,0.1" -> [0.05, 0.1] (order and repeats kept); a ValueError naming the option (--{name}) when a value is
    not a number or the list is empty."""
    try:
        values = [float(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--{name}={spec!r}: expected comma-separated numbers, e.g. 0.05,0.1,0.3") from None
    if not values:
        raise ValueError(f"--{name} is empty")
    return values


def tempered(model, temperature: float):
    """A copy of `model` whose sampling at temperature 1 IS sampling `model` at `temperature`.

    Logits are h @ W.T with W the (tied) embedding matrix; the copy gets its own LM head W / T, so every
    consumer (the generator, the KL in `evaluate_policy`) sees softmax(logits / T) without knowing about
    temperature. Its KL to `model` is then KL(pi_T || pi) of the policy actually sampled. `model` is
    left unchanged (its embedding and LM head stay tied).
    """
    import copy

    import torch

    if not temperature > 0:
        raise ValueError(f"--temperatures: each must be > 0, got {temperature}")
    copied = copy.deepcopy(model)
    copied.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach() / temperature)  # unties it
    return copied


def measure(policy, cfg, sft, tok, reward_model) -> dict:
    """The held-out numbers of one policy (a model, or a model.pt path loaded on the SFT model's device),
    measured like every other point: KL, gold, proxy and length all on the held-out prompts."""
    from minirlhf.checkpoint import load_model
    from minirlhf.evaluate import evaluate_policy

    if isinstance(policy, str):
        policy, _ = load_model(policy, sft.lm_head.weight.device)
    world = os.path.join(cfg.out_dir, cfg.preset, "world")
    m, samples = evaluate_policy(policy, tok, world, reference=sft, reward_model=reward_model, seed=cfg.seed)
    held_lengths = [s["length"] for s in samples if s["split"] == "eval"]  # the prompts of `gold`
    return {"kl": m["kl_k1_heldout"], "gold": m["gold"], "proxy": m["proxy"],
            "length": sum(held_lengths) / len(held_lengths) if held_lengths else float("nan")}


def run(cfg: FrontierConfig) -> dict:
    """`minirlhf frontier`: train or sample one policy per knob of every method in --methods and measure each.

    Reads out/<preset>/sft/model.pt and out/<preset>/reward/model.pt. Runs the best-of-n stage
    (out/<preset>/best_of_n/) and one PPO, DPO or GRPO run per knob, each in its own out/<preset>/frontier_<method>_...
    folder and reused by that stage when its config and inputs are unchanged; the tempered SFT points need no training.
    Every point but best-of-n's is measured now with `measure` (nothing of the frontier's own is reused). Writes
    out/<preset>/frontier/frontier.json and <plots_dir>/frontier_<preset>.png and returns {"preset", "points",
    "seconds", "complete"}. Every sweep is checked before anything runs: a ValueError for an unknown method, a list that is not
    numbers, or a knob out of its range (n a whole number >= 1, beta > 0 for DPO, kl_coef and GRPO's beta >= 0,
    T > 0). frontier.json is rewritten after every point, so a run that fails half-way keeps what it measured.
    """
    from minirlhf.best_of_n import run as best_of_n
    from minirlhf.checkpoint import load_model, load_scalar_model
    from minirlhf.common import resolve_device
    from minirlhf.dpo import run as dpo
    from minirlhf.grpo import run as grpo
    from minirlhf.ppo import run as ppo
    from minirlhf.sft import stage_file, tokenizer_of

    methods = [m.strip() for m in cfg.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"--methods={cfg.methods!r}: expected some of {', '.join(METHODS)}"
                         + (f" (unknown: {', '.join(unknown)})" if unknown else ""))
    # every sweep is read and checked before any run starts: a typo in the last one must not cost an hour of the others
    knob = {"bon": "bon_ns", "ppo": "ppo_kl_coefs", "dpo": "dpo_betas", "grpo": "grpo_betas", "temp": "temperatures"}
    sweeps = {m: parse_floats(getattr(cfg, knob[m]), knob[m]) for m in methods}
    for m, values in sweeps.items():
        ok, rule = KNOB_RANGES[m]
        bad = [v for v in values if not (math.isfinite(v) and ok(v))]
        if bad:
            raise ValueError(f"--{knob[m]}={getattr(cfg, knob[m])!r}: each must be a finite number, {rule} "
                             f"({', '.join(f'{v:g}' for v in bad)} is not)")
    out = stage_dir(cfg, "frontier")
    sft_path = stage_file(cfg, "sft", "model.pt")
    rm_path = stage_file(cfg, "reward", "model.pt")
    tok = tokenizer_of(sft_path)
    device = resolve_device(cfg.device)
    sft, _ = load_model(sft_path, device)  # every measured policy is loaded on this device too (`measure`)
    reward_model, _ = load_scalar_model(rm_path, device)
    common = {"preset": cfg.preset, "out_dir": cfg.out_dir, "seed": cfg.seed, "device": cfg.device,
              "progress": cfg.progress}
    points: list[dict] = []
    t0 = time.perf_counter()

    def save(complete: bool) -> dict:
        """frontier.json with the points so far (atomically, as every stage's JSON)."""
        result = {"preset": cfg.preset, "points": points, "seconds": round(time.perf_counter() - t0, 1),
                  "complete": complete}
        write_json(os.path.join(out, "frontier.json"), result)
        return result

    def add(method: str, knob: float, policy):
        """Measure one point; `policy` is a stage folder (its model.pt is loaded) or a model."""
        policy = os.path.join(policy, "model.pt") if isinstance(policy, str) else policy
        point = {"method": method, "knob": knob, **measure(policy, cfg, sft, tok, reward_model)}
        points.append(point)
        save(complete=False)
        print(f"[frontier] {method:<5} {knob:<8g} KL {point['kl']:7.3f}  gold {point['gold']:+.3f}  "
              f"proxy {point['proxy']:+.3f}  ({time.perf_counter() - t0:.0f} s)")

    base = os.path.join(cfg.out_dir, cfg.preset)
    add("sft", 0, os.path.dirname(sft_path))  # the common origin: KL 0 by definition
    if "bon" in methods:
        ns = [int(n) for n in sweeps["bon"]]
        s = best_of_n(make_config(BestOfNConfig, overrides={**{k: v for k, v in common.items() if k != "progress"},
                                                            "ns": ",".join(map(str, ns))}))
        for row in s["rows"]:
            points.append({"method": "bon", "knob": row["n"], "kl": row["kl_analytic"], "gold": row["gold"],
                           "proxy": row["proxy"], "length": None})
            print(f"[frontier] bon   {row['n']:<8} KL {row['kl_analytic']:7.3f}  gold {row['gold']:+.3f}  "
                  f"proxy {row['proxy']:+.3f}")
        save(complete=False)
    if "ppo" in methods:
        for c in sweeps["ppo"]:
            name = f"frontier_ppo_kl{c:g}"
            ppo(make_config(PPOConfig, overrides={**common, "run_name": name, "kl_coef": c, "adaptive_kl": False}))
            add("ppo", c, os.path.join(base, name))
    if "dpo" in methods:
        for b in sweeps["dpo"]:
            name = f"frontier_dpo_beta{b:g}"
            dpo(make_config(DPOConfig, overrides={**common, "run_name": name, "beta": b, "truncate": True}))
            add("dpo", b, os.path.join(base, name))
    if "grpo" in methods:
        for b in sweeps["grpo"]:
            name = f"frontier_grpo_beta{b:g}"
            grpo(make_config(GRPOConfig, overrides={**common, "run_name": name, "beta": b}))
            add("grpo", b, os.path.join(base, name))
    if "temp" in methods:
        for t in sweeps["temp"]:
            add("temp", t, tempered(sft, t))

    result = save(complete=True)
    png = plot_frontier(points, cfg.preset, os.path.join(cfg.plots_dir, f"frontier_{cfg.preset}.png"), cfg.caption)
    print(f"[frontier] {len(points)} points in {result['seconds']:.0f} s; plot {png}")
    return result


def plot_frontier(points: list[dict], preset: str, png: str, caption: str = "") -> str:
    """Gold reward vs KL (one line per method, sorted by KL) and proxy vs gold, side by side."""
    from minirlhf.plots import plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.4))
    origin = [p for p in points if p["method"] == "sft"]
    for p in origin:
        ax.plot(p["kl"], p["gold"], "k*", markersize=12, label="SFT (the reference)")
        ax2.plot(p["proxy"], p["gold"], "k*", markersize=12, label="SFT")
    for method in METHODS:
        pts = sorted((p for p in points if p["method"] == method), key=lambda p: p["kl"])
        if not pts:
            continue
        if method != "bon":  # the others start from the SFT model (best-of-n has its own n = 1 point)
            pts = origin + pts
        line, = ax.plot([p["kl"] for p in pts], [p["gold"] for p in pts], "o-", label=LABELS[method])
        for p in pts[1 if method != "bon" and origin else 0:]:
            ax.annotate(f"{p['knob']:g}", (p["kl"], p["gold"]), fontsize=7, xytext=(3, 3), textcoords="offset points",
                        color=line.get_color())
        trained = [p for p in pts if p["method"] == method]
        ax2.plot([p["proxy"] for p in trained], [p["gold"] for p in trained], "o", color=line.get_color(),
                 label=LABELS[method])
    ax.set_xlabel("KL to the SFT model (nats per response, held-out prompts; best-of-n: analytic upper bound)")
    ax.set_ylabel("gold reward (held-out prompts)")
    ax.set_title("Reward vs KL frontier")
    ax.legend(fontsize=8)
    ax2.set_xlabel("proxy (reward-model) reward")
    ax2.set_ylabel("gold reward")
    ax2.set_title("Proxy vs gold")
    fig.suptitle(f"{preset} preset" + (f" -- {caption}" if caption else ""), fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(png) or ".", exist_ok=True)
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return png


def dominance(points: list[dict]) -> list[str]:
    """Plain-language lines: as the KL budget grows, which point has the highest gold within it.

    One line each time the leader changes (ties go to the point with the smaller KL, then list order).
    """
    lines, leader = [], None
    for p in sorted(points, key=lambda p: p["kl"]):
        within = [q for q in points if q["kl"] <= p["kl"] + 1e-9]
        best = max(within, key=lambda q: (q["gold"], -q["kl"]))
        if best is not leader:
            lines.append(f"KL <= {p['kl']:.2f}: best gold {best['gold']:+.3f} by {best['method']} ({best['knob']:g}, "
                         f"KL {best['kl']:.2f})")
            leader = best
    return lines
