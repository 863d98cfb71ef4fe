import pytest

from gatehouse.registry import Registry


@pytest.fixture
def data_dir(tmp_path):
    return tmp_path / "data"


@pytest.fixture
def registry(data_dir):
    with Registry.initialise(data_dir) as registry:
        yield registry
