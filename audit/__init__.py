"""safepolicy audit."""
