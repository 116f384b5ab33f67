"""The studio's worker behind ``cocomix serve``: jobs that fail, and how finished and abandoned
requests are counted."""

import threading

import pytest

from conftest import open_stream, post

PROMPT = "The whale"


def test_a_failed_job_does_not_poison_the_next(shipped):
    """An error raised inside one of mlx-lm's compiled samplers leaves a placeholder in MLX's
    random state that fails every later unseeded sample; the studio's worker starts the state
    afresh after a failed job."""
    import queue

    import mlx.core as mx
    from mlx_lm.sample_utils import make_sampler

    from cocomix_mlx.studio import Request, Studio

    studio = Studio(*shipped, "cocomix")
    results = queue.Queue()

    def run(make):
        done = threading.Event()
        studio.submit(make, lambda kind, item: (results.put((kind, item)),
                                                kind != "item" and done.set()), threading.Event())
        done.wait(60)
        out = []
        while not results.empty():
            out.append(results.get())
        return out

    def failing():
        make_sampler(temp=1.0, top_k=10 ** 6)(mx.zeros((1, 64)))
        yield

    assert run(failing)[-1][0] == "error"
    ids = shipped[1].encode(PROMPT)
    events = run(lambda: studio.complete(Request(ids, max_tokens=4, temperature=1.0)))
    assert events[-1] == ("done", None) and events[-2][1].completion_tokens == 4


def test_a_request_that_read_its_last_token_is_not_counted_as_cancelled(shipped):
    """A request ends as soon as it has read its final token; the worker may look at the job
    only after that. Such a job finished and counts as served, not cancelled (streaming or
    not). A worker that pauses after each token it hands over makes the order certain."""
    import socket
    import time

    uvicorn = pytest.importorskip("uvicorn", reason="the serve extra is not installed")
    from cocomix_mlx.server import create_app
    from cocomix_mlx.studio import Studio

    studio = Studio(*shipped, "cocomix")
    submit = studio.submit

    def slow_submit(make, emit, cancelled):
        def slow(kind, item):
            emit(kind, item)
            if kind == "item":
                time.sleep(0.2)
        submit(make, slow, cancelled)

    studio.submit = slow_submit
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    server = uvicorn.Server(uvicorn.Config(create_app(studio), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        url = "http://127.0.0.1:%d/v1/completions" % sock.getsockname()[1]
        code, out = post(url, {"prompt": "The", "max_tokens": 2, "temperature": 0})
        assert code == 200 and out["usage"]["completion_tokens"] == 2
        with open_stream(url, {"prompt": "The", "max_tokens": 2, "stream": True}) as r:
            assert r.read().decode().rstrip().endswith("data: [DONE]")
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
    idle = threading.Event()  # the worker is sequential: once this job runs, both are counted
    submit(lambda: iter(()), lambda kind, item: kind == "done" and idle.set(), threading.Event())
    assert idle.wait(30)
    assert studio.stats["jobs"] == 3 and studio.stats["items"] == 4
    assert studio.stats["cancelled"] == 0
