"""The algorithms, one file each; training/registry.py lists them."""
