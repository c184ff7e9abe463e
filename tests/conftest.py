import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def s3(tmp_path):
    """A real S3-compatible server (moto's, its own process on 127.0.0.1): tests/s3server.py."""
    from s3server import S3Server

    server = S3Server(tmp_path / "moto_server.log")
    try:
        yield server
    finally:
        server.stop()
