"""Cost lookup tables: one entry per (layer, op), measured on a device, summed to predict a network."""
