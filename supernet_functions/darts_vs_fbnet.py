"""Old path of :mod:`supernet_functions.experiments.darts_vs_fbnet`, kept so ``python -m`` with it still runs."""

import sys

if __name__ == "__main__":
    from supernet_functions.experiments.darts_vs_fbnet import main

    print(
        "note: supernet_functions.darts_vs_fbnet moved to supernet_functions.experiments.darts_vs_fbnet",
        file=sys.stderr,
    )
    main()
