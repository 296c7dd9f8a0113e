"""FBNet's search, and the latency tables and experiments built around it.

Three rooms, each importing only the ones above it in this list:

- ``supernet_functions.latency``: cost lookup tables (``table``: load, key, predict; ``measure``:
  build by timing each op; ``validate``: whole networks against the table's sums; ``cli``; and
  ``random_archs``: architectures drawn uniformly within a predicted-latency window).
- this package's own modules, the search: the stochastic supernet (``model_supernet``,
  ``shared_ops``, ``speed``, ``reference_supernet``), the loss, the alternating weight/theta loop
  (``search_setup``, ``training_functions_supernet``, ``path_probe``, ``search_outputs``) and
  ``sampling``.
- ``supernet_functions.experiments``: the DARTS vs FBNet experiment and the search-vs-random
  evaluation, which also train fixed architectures with ``architecture_functions``.
"""
