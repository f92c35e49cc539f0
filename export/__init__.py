"""safepolicy export."""
