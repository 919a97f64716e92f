"""A tiny training set on disk (real mp4 clips + manifest), shared by the training tests."""

import pytest


@pytest.fixture(scope="session")
def tiny_manifest(tmp_path_factory):
    from data_prep.tiny_qa import make_tiny_qa

    return make_tiny_qa(tmp_path_factory.mktemp("tiny_qa"), num=4, seconds=2.0, size=56, seed=0)
