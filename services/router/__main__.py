"""`python -m tierroute.router`: run the router service."""

import sys

from tierroute.router.service import main

if __name__ == "__main__":
    sys.exit(main())
