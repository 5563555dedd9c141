"""The `decoquant-cli` command: execs the compiled binary installed inside the package.

The binary lives in ``decoquant/bin/`` so that its RUNPATH ($ORIGIN/.. and $ORIGIN/../lib)
finds libdecoquant and libllama in every install layout; this console script puts it on PATH.
It is found next to libdecoquant (so also when DECOQUANT_LIB points sources at an installed build).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def main() -> int:
    from . import _lib

    binary = Path(_lib._find()).resolve().parent / "bin" / "decoquant-cli"
    if not os.access(binary, os.X_OK):
        print(f"decoquant-cli: error: {binary} is missing; decoquant was built without it "
              "(reinstall with pip, and without -DDQ_BUILD_CLI=OFF)", file=sys.stderr)
        return 1
    sys.stdout.flush()
    os.execv(binary, ["decoquant-cli", *sys.argv[1:]])
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main())
