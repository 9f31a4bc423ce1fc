import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "server"))

from serving import stub, tiny_server  # noqa: E402, F401  (fixtures)
