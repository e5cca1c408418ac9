"""Plots draw the quantities their labels name."""

import json

from matplotlib.axes import Axes

from minirlhf import plots


def test_sft_loss_curve_draws_the_sft_loss_not_the_total_with_the_ptx_term(tmp_path, monkeypatch):
    """With a pretraining mix SFT logs loss = sft_loss + ptx_coef * ptx_loss, but validates the SFT loss
    alone: the train line must be `sft_loss`, or the two lines on one axis are different quantities."""
    rows = [{"step": 10, "loss": 6.0, "sft_loss": 3.9, "ptx_loss": 4.2},
            {"step": 20, "loss": 5.0, "sft_loss": 3.0, "ptx_loss": 4.0, "val_loss": 3.2}]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    drawn = {}
    original = Axes.plot

    def spy(self, x, y, *args, **kwargs):
        drawn[kwargs.get("label")] = list(y)
        return original(self, x, y, *args, **kwargs)

    monkeypatch.setattr(Axes, "plot", spy)
    plots.loss_curve(str(path), str(tmp_path / "sft.png"))
    assert drawn == {"train (SFT loss)": [3.9, 3.0], "validation": [3.2]}
    # a stage that logs only `loss` (pretraining) draws it
    path.write_text("".join(json.dumps({"step": r["step"], "loss": r["loss"]}) + "\n" for r in rows))
    drawn.clear()
    plots.loss_curve(str(path), str(tmp_path / "pretrain.png"))
    assert drawn == {"train": [6.0, 5.0]}
