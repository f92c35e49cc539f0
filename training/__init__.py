"""safepolicy training."""
