#!/usr/bin/env python3
"""Writes src/store/s3/testdata/sigv4_botocore.json: S3 requests signed by botocore's SigV4
signer (the reference implementation AWS ships in its Python SDK), for sigv4_test.cc to compare
granary's signer against, canonical request and Authorization header alike.

Run with the project's venv (boto3 is pinned in requirements-dev.txt):
    .venv/bin/python scripts/sigv4_vectors.py [OUT]
Deterministic: the same botocore version writes the same file; python/tests/test_sigv4_vectors.py
checks that the committed file is what the installed botocore writes.
"""

import json
import random
import sys
from pathlib import Path
from urllib.parse import quote

from botocore import __version__ as botocore_version
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

OUT = Path(__file__).resolve().parent.parent / "src/store/s3/testdata/sigv4_botocore.json"

KEYS = ["a.txt", "dir/sub/file.bin", "with space.txt", "plus+and=equals&amp", "ünïcödé/ключ",
        "tilde~under_score-dash.dot", "percent%20literal", "semi;colon,comma", "star*paren()",
        "dataset/shard-000001", "ckpt/step-000100/rank-00000/data-000", "quote'and\"dq"]
QUERIES = [[], [("uploads", "")], [("partNumber", "3"), ("uploadId", "2~abc/DEF+g=h")],
           [("list-type", "2"), ("prefix", "runs/exp 1/"), ("max-keys", "1000")],
           [("list-type", "2"), ("continuation-token", "1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM="),
            ("start-after", "a b/c")],
           [("delete", "")], [("versionId", "3/L4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY+MTRCxf3vjVBH40Nr8X8gdRQBpUMLUo")]]


def sign(creds, method, host, path, query, headers, body, amz_date, region):
    url = f"http://{host}{path}"
    if query:
        url += "?" + "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in query)
    req = AWSRequest(method=method, url=url, headers=dict(headers), data=body)
    auth = S3SigV4Auth(creds, "s3", region)
    req.context["timestamp"] = amz_date
    auth._modify_request_before_signing(req)
    canonical = auth.canonical_request(req)
    signature = auth.signature(auth.string_to_sign(req, canonical), req)
    auth._inject_signature_to_request(req, signature)
    return req, canonical


def vectors() -> dict:
    rng = random.Random(20261126)
    cases = []
    for i in range(48):
        token = "" if i % 3 else "IQoJb3JpZ2luX2VjEXAMPLE//TOKEN+with/slashes=="
        creds = Credentials("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                            token or None)
        method = rng.choice(["GET", "HEAD", "PUT", "POST", "DELETE"])
        key = rng.choice(KEYS)
        path = "/" + quote("bucket-1/" + key, safe="/~")
        query = rng.choice(QUERIES)
        host = rng.choice(["127.0.0.1:7480", "s3.us-west-2.amazonaws.com", "bucket.oss.example"])
        body = b"" if method in ("GET", "HEAD", "DELETE") else bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
        headers = [("host", host)]
        if method == "GET" and rng.random() < 0.5:
            headers.append(("Range", f"bytes={rng.randrange(1000)}-{1000 + rng.randrange(1 << 20)}"))
        if method == "PUT" and rng.random() < 0.5:
            headers.append(("If-None-Match", "*"))
        if rng.random() < 0.3:
            headers.append(("X-Amz-Meta-Note", "  two   spaces\tand tab  "))
        if rng.random() < 0.3:
            headers.append(("Content-Type", "application/octet-stream"))
        amz_date = f"2026{rng.randrange(1, 13):02d}{rng.randrange(1, 29):02d}T{rng.randrange(24):02d}{rng.randrange(60):02d}{rng.randrange(60):02d}Z"
        region = rng.choice(["us-east-1", "eu-central-1", "default"])
        req, canonical = sign(creds, method, host, path, query, headers, body, amz_date, region)
        sent = [(k, v) for k, v in req.headers.items()
                if k.lower() not in ("authorization", "x-amz-date", "x-amz-security-token")]
        cases.append({
            "method": method, "path": path, "query": query, "headers": sent,
            "payload_sha256": req.headers["X-Amz-Content-SHA256"],
            "access_key_id": creds.access_key, "secret_access_key": creds.secret_key,
            "session_token": token, "region": region, "amz_date": amz_date,
            "canonical_request": canonical, "authorization": req.headers["Authorization"],
        })
    return {"botocore": botocore_version, "cases": cases}


def render(doc: dict) -> str:
    return json.dumps(doc, indent=1, ensure_ascii=False) + "\n"


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else OUT
    doc = vectors()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(doc))
    print(f"{len(doc['cases'])} cases from botocore {botocore_version} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
