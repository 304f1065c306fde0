"""A fake libnvidia-ml.so.1 (C) and the helpers tests use to build and configure it."""
