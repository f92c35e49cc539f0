"""safepolicy: offline safe RL policies from dataset to production."""
