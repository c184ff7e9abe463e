"""The S3 server the object-storage tests use answers the S3 REST protocol as pyarrow's S3 client
(raygap's) speaks it: an object written through pyarrow is listed by boto3, and read back."""
import os

import pyarrow.fs


def test_pyarrow_writes_what_boto3_lists(s3, monkeypatch):
    s3.bucket("probe")
    for k, v in s3.env.items():
        monkeypatch.setenv(k, v)
    fs, path = pyarrow.fs.FileSystem.from_uri("s3://probe/a/b")
    with fs.open_output_stream(f"{path}/x.bin") as f:
        f.write(b"raygap")
    assert s3.keys("probe") == ["a/b/x.bin"]
    assert s3.client().get_object(Bucket="probe", Key="a/b/x.bin")["Body"].read() == b"raygap"
    assert "AWS_ENDPOINT_URL_S3" in os.environ
