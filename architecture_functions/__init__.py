"""Training a fixed architecture from scratch."""
