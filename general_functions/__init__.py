"""Shared utilities: data, configuration, logging, checkpoints, seeding, devices."""
