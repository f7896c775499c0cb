"""pytest imports test files by basename (rootdir-relative, no packages): two files with one name break
collection of the whole suite, which only shows when every folder is collected together, as in CI."""

from collections import Counter
from pathlib import Path


def test_test_file_names_are_unique():
    names = Counter(p.name for p in Path(__file__).parent.rglob("test_*.py"))
    assert [name for name, n in names.items() if n > 1] == []
