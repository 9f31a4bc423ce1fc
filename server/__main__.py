"""`python -m server` is `longshap serve`."""
import sys

from server.app import main

sys.exit(main())
