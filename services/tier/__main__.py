"""`python -m tierroute.tier`: run one tier service (vLLM spawns processes: keep the guard)."""

import sys

from tierroute.tier.service import main

if __name__ == "__main__":
    sys.exit(main())
