"""Figures: every plot the pipeline and the lessons save to `plots/` (matplotlib, no display needed).

Each function reads artifacts (metrics.jsonl, summaries) and writes one PNG, returning its path.

Deliberate simplifications: one figure per function, default matplotlib style, no interactive output.
"""

from __future__ import annotations

import json
import os

import matplotlib

matplotlib.use("Agg")  # files only; works on a machine without a display
import matplotlib.pyplot as plt  # noqa: E402


def read_metrics(path: str) -> list[dict]:
    """The rows of a metrics.jsonl file, one dict per non-blank line."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def loss_curve(metrics_path: str, out_png: str, title: str = "Loss", ylabel: str = "loss (nats)",
               baseline: tuple[float, str] | None = None) -> str:
    """Training loss per logged step, with validation loss where it was measured.

    The train line is the same quantity as the validation line: SFT with a pretraining mix logs
    loss = sft_loss + ptx_coef * ptx_loss, so its `sft_loss` is drawn when the rows have one.
    baseline: (value, label) drawn as a dashed line, e.g. the unigram entropy of the tokens.
    """
    rows = read_metrics(metrics_path)
    key = "sft_loss" if rows and all("sft_loss" in r for r in rows) else "loss"
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["step"] for r in rows], [r[key] for r in rows], label="train" if key == "loss" else "train (SFT loss)",
            lw=1)
    val = [r for r in rows if "val_loss" in r]
    if val:
        ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="validation")
    if baseline is not None:
        ax.axhline(baseline[0], ls="--", color="gray", label=baseline[1])
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return out_png
