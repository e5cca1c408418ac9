"""minirlhf: the whole RLHF pipeline in readable PyTorch.

Stages (each a module with ``run(cfg) -> summary``): world -> tokenizer -> pretrain -> SFT ->
reward model -> PPO / DPO family / GRPO -> evaluation. Run everything with ``minirlhf pipeline``.
"""

__version__ = "0.1.0"
