"""rlhfkit: the preference-learning pipeline for causal language models.

pretrain -> SFT -> sample -> label -> reward model -> PPO, or -> DPO and its baselines; then evaluate.
"""

__version__ = "0.1.0"
