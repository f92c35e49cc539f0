"""safepolicy server."""
