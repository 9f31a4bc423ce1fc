import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "server"))

import pytest  # noqa: E402

from serving import DOCUMENTS, stub, tiny_server  # noqa: E402, F401  (fixtures)


@pytest.fixture
def doc_files(tmp_path) -> list[str]:
    """The serving documents, one text file each."""
    paths = []
    for doc in DOCUMENTS:
        path = tmp_path / f"{doc['title']}.txt"
        path.write_text(doc["text"], encoding="utf-8")
        paths.append(str(path))
    return paths
