"""`python -m registry_client` runs the same CLI as the console script."""

import sys

from registry_client.entry import main

if __name__ == "__main__":
    sys.exit(main())
