"""`python -m server` is `longshap serve`."""
import sys

from longshap.server.app import main

sys.exit(main())
