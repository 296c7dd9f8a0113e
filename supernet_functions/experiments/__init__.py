"""Experiments on the search: DARTS vs FBNet on one slot, and the searched networks against random ones."""
