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


@pytest.fixture(autouse=True)
def _end_raygap_processes():
    """A test that fails while a ``raygap`` process it started runs (tests/_proc.py) leaves
    nothing running into the next tests: each one still alive is ended with what it started."""
    yield
    from _proc import Raygap

    while Raygap.started:
        run = Raygap.started.pop()
        if run.p.poll() is None or run.tree():
            run.kill_tree()
