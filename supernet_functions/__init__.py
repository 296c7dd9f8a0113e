"""FBNet's search: latency lookup table, stochastic supernet, loss, training loop and sampling."""
