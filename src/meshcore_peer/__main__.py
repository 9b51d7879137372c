"""`python -m meshcore_peer` is `meshcore-peer`."""

import sys

from meshcore_peer.cli import main

sys.exit(main())
