"""The SigV4 vectors sigv4_test.cc checks granary's signer against are botocore's own output:
regenerate them with the installed botocore and compare with the committed file."""

import sys
from pathlib import Path

import pytest

pytest.importorskip("botocore")

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import sigv4_vectors  # noqa: E402


def test_committed_vectors_are_what_botocore_signs():
    committed = (ROOT / "src/store/s3/testdata/sigv4_botocore.json").read_text()
    assert sigv4_vectors.render(sigv4_vectors.vectors()) == committed
