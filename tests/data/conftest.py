import shutil

import pytest

from helpers.data.demo_data import make_demo_dataset


@pytest.fixture(scope="module")
def demo_src(tmp_path_factory):
    """The demo dataset, made once per module (a test module may define its own ``demo``)."""
    return make_demo_dataset(tmp_path_factory.mktemp("demo") / "data", seed=0)


@pytest.fixture()
def demo(demo_src, tmp_path):
    """A private copy each test may break."""
    return shutil.copytree(demo_src, tmp_path / "data")


@pytest.fixture(scope="session")
def course(tmp_path_factory):
    """A small course-layout dataset the annotation layouts are exported from (read only)."""
    return make_demo_dataset(tmp_path_factory.mktemp("course") / "demo", n_train=3, n_test=1, size=160)
