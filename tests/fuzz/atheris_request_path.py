#!/usr/bin/env python3
"""Coverage-guided fuzzing of the request path with atheris (libFuzzer), for longer runs than CI's
hypothesis examples. Same target and invariants as ``test_request_path_in_process``: raw bytes
into a real ClientConnection on a fake transport, split into two reads at a fuzzed offset; every
answer must be well framed with an allowed status, and the split must not change any answer.

    pip install -e '.[dev]'   # atheris (Linux wheels)
    python tests/fuzz/atheris_request_path.py -max_total_time=60 [corpus_dir]

A failure stops with the input saved as ``crash-<sha1>``; turn it into a regression test in
tests/hardening (or an explicit example) before fixing it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # fuzz_support, and the tests' conftest

with atheris.instrument_imports(include=["mce_router"]):
    from fuzz_support import Target

TARGET = Target()


def test_one_input(data: bytes) -> None:
    provider = atheris.FuzzedDataProvider(data)
    cut = provider.ConsumeIntInRange(0, 4096)
    stream = provider.ConsumeBytes(provider.remaining_bytes())
    whole, _ = TARGET.run([stream])
    cut = min(cut, len(stream))
    pieces, _ = TARGET.run([stream[:cut], stream[cut:]] if 0 < cut < len(stream) else [stream])
    assert [r.status for r in pieces] == [r.status for r in whole], (stream, cut)
    assert [r.body for r in pieces] == [r.body for r in whole], (stream, cut)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
