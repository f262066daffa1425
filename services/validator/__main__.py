"""`python -m tierroute.validator`: run the validator service."""

import sys

from tierroute.validator.service import main

if __name__ == "__main__":
    sys.exit(main())
