"""Old path of :mod:`supernet_functions.experiments.evaluate_search`, kept so ``python -m`` with it still runs."""

import sys

if __name__ == "__main__":
    from supernet_functions.experiments.evaluate_search import main

    print(
        "note: supernet_functions.evaluate_search moved to supernet_functions.experiments.evaluate_search",
        file=sys.stderr,
    )
    main()
