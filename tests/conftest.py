import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


def pytest_collection_modifyitems(items):
    """Every test that launches no ranks of its own is a unit test (the fast tier, ``-m unit``)."""
    import pytest

    for item in items:
        if item.get_closest_marker("distributed") is None:
            item.add_marker(pytest.mark.unit)
