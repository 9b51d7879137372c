"""`python -m meshcore_relay` is `meshcore-relay`."""

import sys

from meshcore_relay.cli import main

sys.exit(main())
