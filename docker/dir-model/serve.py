"""A SageMaker model server that loads /opt/ml/model/model.json (a linear model).

Started as ``serve.py serve``. ``GET /ping`` is 200 once the model is loaded;
``POST /invocations`` takes ``{"instances": [[x, ...], ...]}`` and answers
``{"predictions": [...], "model": <model.json's "name">}``. Listens on 0.0.0.0 and
``$SAGEMAKER_BIND_TO_PORT`` (8080 when absent). Standard library only.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

MODEL_DIR = Path(os.environ.get("SM_MODEL_DIR", "/opt/ml/model"))


def load_model() -> dict[str, Any]:
    model = json.loads((MODEL_DIR / "model.json").read_text(encoding="utf-8"))
    if not isinstance(model.get("weights"), list):
        raise ValueError(f"{MODEL_DIR / 'model.json'}: 'weights' must be a list of numbers")
    return model


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the router's connection pools expect
    model: ClassVar[dict[str, Any]] = {}

    def _answer(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/ping":
            self._answer(200, b"")
        else:
            self._answer(404, b"not found\n", "text/plain")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        if self.path != "/invocations":
            self._answer(404, b"not found\n", "text/plain")
            return
        try:
            rows = json.loads(body)["instances"]
            weights = self.model["weights"]
            bias = float(self.model.get("bias", 0.0))
            predictions = [
                sum(w * float(x) for w, x in zip(weights, row, strict=False)) + bias for row in rows
            ]
        except (ValueError, KeyError, TypeError) as exc:
            self._answer(400, f"bad input: {exc}\n".encode(), "text/plain")
            return
        answer = {"predictions": predictions, "model": self.model.get("name")}
        self._answer(200, json.dumps(answer, separators=(",", ":")).encode())

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: one line per request would drown the router's container log."""


def main(argv: list[str]) -> int:
    if argv[1:2] == ["serve"]:
        argv = argv[:1] + argv[2:]
    Handler.model = load_model()
    port = int(os.environ.get("SAGEMAKER_BIND_TO_PORT", "8080"))
    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"dir-model: serving {Handler.model.get('name')!r} on port {port}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
