"""What the S3 tests share (tests/sweep/test_s3.py, test_storage_errors.py): creating a bucket on the local moto
server they start."""

from __future__ import annotations

import urllib.request


def create_bucket(endpoint: str, bucket: str) -> None:
    """An unsigned PUT (moto does not check signatures unless told to), with a timeout long enough for moto's
    first S3 request (it imports its S3 backend then, seconds on a loaded machine; pyarrow gives up after 3 s)."""
    request = urllib.request.Request(f"http://{endpoint}/{bucket}", method="PUT")
    urllib.request.urlopen(request, timeout=120).close()
