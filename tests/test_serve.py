"""``cocomix serve`` through the official ``openai`` client and plain HTTP, against the shipped
models loaded in the test: completions, chat, streaming, steering, log-probabilities, stop
strings, per-token concepts, error statuses and concurrent clients."""

import json
import random
import threading

import numpy as np
import pytest

from conftest import WEIGHTS, cocomix, get, open_stream, post, start_server, stop_server

openai = pytest.importorskip("openai", reason="the openai client is not installed")

PROMPT = "The whale"


@pytest.fixture(scope="module")
def server():
    url, proc = start_server("--model", WEIGHTS / "cocomix", "--concepts",
                             WEIGHTS / "concepts.json")
    yield url
    stop_server(proc)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="local", max_retries=0, timeout=120)


def local(shipped, prompt=PROMPT, **kwargs):
    from cocomix_mlx.generate import generate

    return generate(*shipped, prompt, **kwargs)


def test_completion_equals_in_process_generation(client, shipped):
    assert [m.id for m in client.models.list().data] == ["cocomix"]
    r = client.completions.create(model="cocomix", prompt=PROMPT, max_tokens=20, temperature=0)
    assert r.choices[0].text == local(shipped, max_tokens=20)
    assert r.choices[0].finish_reason == "length"
    n_prompt = len(shipped[1].encode(PROMPT))
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (n_prompt, 20)
    sampled = client.completions.create(model="cocomix", prompt=PROMPT, max_tokens=15,
                                        temperature=0.9, top_p=0.95, seed=7)
    assert sampled.choices[0].text == local(shipped, max_tokens=15, temp=0.9, top_p=0.95, seed=7)


def test_streaming_equals_non_streaming(client, server):
    kwargs = dict(model="cocomix", prompt=PROMPT, max_tokens=25, temperature=0.7, seed=3)
    whole = client.completions.create(**kwargs).choices[0].text
    chunks = list(client.completions.create(**kwargs, stream=True,
                                            stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole
    assert chunks[-2].choices[0].finish_reason == "length" and chunks[-1].usage.completion_tokens == 25
    # the wire format: server-sent events ending in [DONE]
    with open_stream(server + "/v1/completions", {**kwargs, "stream": True}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line.decode().strip() for line in r if line.strip()]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    chat = dict(model="cocomix", messages=[{"role": "user", "content": "Call me Ishmael."}],
                max_tokens=12, temperature=0)
    text = client.chat.completions.create(**chat).choices[0].message.content
    deltas = list(client.chat.completions.create(**chat, stream=True))
    assert deltas[0].choices[0].delta.role == "assistant"
    assert "".join(d.choices[0].delta.content or "" for d in deltas) == text


def test_steering_changes_the_text_as_generate_steer_does(client, shipped):
    plain = client.completions.create(model="cocomix", prompt=PROMPT, max_tokens=30,
                                      temperature=0).choices[0].text
    for steer, span in (({"497": 8}, "all"), ({"Wh/under": 8, "1785": -4}, "generated")):
        r = client.completions.create(model="cocomix", prompt=PROMPT, max_tokens=30,
                                      temperature=0, extra_body={"steer": steer, "span": span})
        from cocomix_mlx.sae_analysis import concept_names

        names = concept_names(WEIGHTS / "concepts.json")
        assert r.choices[0].text == local(shipped, max_tokens=30, steer=steer, span=span,
                                          names=names)
        assert r.choices[0].text != plain


def test_logprobs_are_the_models_own(client, shipped):
    """Each token's log-probability and alternatives equal a log-softmax, in float64, of the
    model's logits from one full forward over prompt + completion."""
    import mlx.core as mx

    r = client.completions.create(model="cocomix", prompt=PROMPT, max_tokens=10, temperature=0,
                                  logprobs=3)
    model, tokenizer = shipped
    lp = r.choices[0].logprobs
    ids = tokenizer.encode(PROMPT)
    generated = tokenizer.encode(PROMPT + r.choices[0].text)[len(ids):]
    assert [tokenizer.decode([t]) for t in generated] == lp.tokens
    logits = np.array(model(mx.array([ids + generated])).astype(mx.float32), np.float64)[0]
    logits = logits[len(ids) - 1:-1]
    ref = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    np.testing.assert_allclose(lp.token_logprobs, ref[np.arange(len(generated)), generated],
                               atol=0.03)
    for row, top in zip(ref, lp.top_logprobs):
        best = np.argsort(-row)[:3]
        assert list(top) == [tokenizer.decode([int(i)]) for i in best]
        np.testing.assert_allclose(list(top.values()), row[best], atol=0.03)
    assert lp.text_offset == list(np.cumsum([0] + [len(t) for t in lp.tokens[:-1]]))


def test_stop_strings_cut_the_text_streamed_or_not(client, shipped):
    full = local(shipped, max_tokens=40)
    stop = full[12:15]
    cut = full[:full.find(stop)]
    kwargs = dict(model="cocomix", prompt=PROMPT, max_tokens=40, temperature=0,
                  stop=["zzz-never", stop])
    r = client.completions.create(**kwargs)
    assert (r.choices[0].text, r.choices[0].finish_reason) == (cut, "stop")
    pieces = [c.choices[0].text for c in client.completions.create(**kwargs, stream=True)]
    assert "".join(pieces) == cut


def test_stop_string_release_invariants():
    """Streaming releases text that never holds a stop string and adds up to the text cut at
    the first one, for random texts split into random pieces (a brute-force reference)."""
    from cocomix_mlx.studio import first_stop, held_back

    rng = random.Random(0)
    for _ in range(500):
        text = "".join(rng.choice("ab c") for _ in range(rng.randint(1, 30)))
        stops = ["".join(rng.choice("ab c") for _ in range(rng.randint(1, 4)))
                 for _ in range(rng.randint(1, 3))]
        expect = text[:min([i for i in (text.find(s) for s in stops) if i >= 0],
                           default=len(text))]
        seen, released, out = "", 0, ""
        while seen != text:
            seen += text[len(seen):len(seen) + rng.randint(1, 3)]
            cut = first_stop(seen, stops)
            end = cut if cut >= 0 else len(seen) - held_back(seen, stops)
            out += seen[released:end]
            released = max(released, end)
            assert not any(s in out for s in stops)
            if cut >= 0:
                break
        if first_stop(seen, stops) < 0:
            out += seen[released:]
        assert out == expect


def test_chat_uses_the_template_or_a_transcript(tmp_path, shipped):
    import shutil

    from cocomix_mlx.studio import chat_prompt

    model = tmp_path / "chat"
    shutil.copytree(WEIGHTS / "cocomix", model)
    config = json.loads((model / "tokenizer_config.json").read_text())
    config["chat_template"] = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n"
                               "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}")
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Tell me of whales."}]
    url, proc = start_server("--model", model)
    try:
        c = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        r = c.chat.completions.create(model="chat", messages=messages, max_tokens=8,
                                      temperature=0)
    finally:
        stop_server(proc)
    ids = shipped[1].encode("<system>Be brief.\n<user>Tell me of whales.\n<assistant>")
    assert r.usage.prompt_tokens == len(ids)
    assert r.choices[0].message.content == local(shipped, ids, max_tokens=8)
    assert shipped[1].decode(chat_prompt(shipped[1], messages)) == \
        "System: Be brief.\n\nUser: Tell me of whales.\n\nAssistant:"


def test_concepts_endpoint_equals_the_cli(server):
    text = "The whale swam in the sea."
    _, r = post(server + "/v1/concepts", {"text": text, "top": 4})
    cli = cocomix("concepts", text, "--model", WEIGHTS / "cocomix", "--concepts",
                  WEIGHTS / "concepts.json", "--top", 4, "--json")
    assert cli.returncode == 0, cli.stderr
    assert r["kind"] == "cocomix" and r["data"] == json.loads(cli.stdout)
    found = get(server + "/v1/dictionary?q=whale")["data"]
    assert found and all("whale" in json.dumps(item).lower() for item in found)


def test_sae_server_reads_and_steers_latents(tmp_path):
    """An SAE directory holding its dictionary: the server labels and steers by its names
    without --concepts."""
    import shutil

    sae = tmp_path / "sae"
    shutil.copytree(WEIGHTS / "sae", sae)
    shutil.copy(WEIGHTS / "concepts.json", sae / "concepts.json")
    label = next(x["label"] for x in json.loads((sae / "concepts.json").read_text())["latents"]
                 if x["index"] == 1785)
    url, proc = start_server("--model", WEIGHTS / "teacher", "--sae", sae)
    try:
        text = "Call me Ishmael."
        _, r = post(url + "/v1/concepts", {"text": text, "top": 3})
        c = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        args = dict(model="teacher", prompt=PROMPT, max_tokens=20, temperature=0)
        plain = c.completions.create(**args).choices[0].text
        steered = c.completions.create(**args, extra_body={"steer": {"1785": 6}}).choices[0].text
        named = c.completions.create(**args, extra_body={"steer": {f"{label}#1785": 6}})
    finally:
        stop_server(proc)
    cli = cocomix("concepts", text, "--model", WEIGHTS / "teacher", "--sae", WEIGHTS / "sae",
                  "--concepts", WEIGHTS / "concepts.json", "--top", 3, "--json")
    assert r["kind"] == "sae" and r["data"] == json.loads(cli.stdout)
    assert all(c["activation"] > 0 for row in r["data"] for c in row["concepts"])
    assert steered != plain and named.choices[0].text == steered


@pytest.mark.parametrize("path,body,status,words", [
    ("/v1/completions", {"prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "temperature": 5}, 400, "temperature"),
    ("/v1/completions", {"prompt": "x", "n": 2}, 400, "n"),
    ("/v1/completions", {"max_tokens": 3}, 400, "prompt"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 500}, 400, "context"),
    ("/v1/completions", {"prompt": [5, 10 ** 9]}, 400, "token ids"),
    ("/v1/completions", {"prompt": "", "max_tokens": 3}, 400, "empty"),
    ("/v1/completions", {"prompt": "x", "steer": {"7": 50}}, 400, "[-10, 10]"),
    ("/v1/completions", {"prompt": "x", "steer": {"no such": 2}}, 404, "unknown concept"),
    ("/v1/completions", {"prompt": "x", "steer": {"99999": 2}}, 404, "out of range"),
    ("/v1/completions", {"prompt": "x", "model": "gpt-4"}, 404, "not served"),
    ("/v1/completions", {"prompt": "x", "logit_bias": {"999999": 5}}, 400, "logit_bias"),
    ("/v1/completions", {"prompt": "x", "top_k": 100000}, 400, "top-k"),
    ("/v1/completions", {"prompt": "x", "seed": -5}, 400, "seed"),
    ("/v1/completions", {"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ("/v1/completions", {"prompt": "x", "echo": True, "logprobs": 1}, 400, "echo"),
    ("/v1/completions", {"prompt": ["a", "b"]}, 400, "one prompt"),
    ("/v1/completions", {"prompt": "whale " * 300}, 413, "context"),
    ("/v1/chat/completions", {"messages": []}, 400, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi " * 300}]}, 413, "context"),
    ("/v1/concepts", {"text": "whale " * 300}, 413, "context"),
    ("/v1/concepts", {"text": ""}, 400, "empty"),
    ("/v1/nothing", {}, 404, "not found"),
])
def test_bad_requests_get_json_errors_with_the_right_status(server, path, body, status, words):
    code, reply = post(server + path, body)
    assert code == status, reply
    message = reply["error"]["message"]
    assert words.lower() in message.lower() and "Traceback" not in message


def test_malformed_json_and_streamed_errors(server, client):
    code, reply = post(server + "/v1/completions", raw=b"{not json")
    assert code == 400 and "error" in reply
    with pytest.raises(openai.NotFoundError, match="unknown concept"):
        client.completions.create(model="cocomix", prompt="x", stream=True,
                                  extra_body={"steer": {"nope": 1}})


def test_concurrent_clients_get_what_sequential_ones_get(client):
    requests = [dict(prompt=p, max_tokens=24, temperature=0.8, seed=s, stream=st)
                for p, s, st in (("The whale", 1, False), ("Call me", 2, True),
                                 ("The sea was", 3, False), ("Ahab said", 4, True),
                                 ("The whale", 5, True), ("Queequeg", 6, False))]

    def run(req):
        out = client.completions.create(model="cocomix", **req)
        return "".join(c.choices[0].text for c in out) if req["stream"] else out.choices[0].text

    sequential = [run(req) for req in requests]
    together = [None] * len(requests)

    def worker(i):
        together[i] = run(requests[i])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert together == sequential


def test_a_client_that_goes_away_frees_the_server(server, client):
    with open_stream(server + "/v1/completions",
                     {"prompt": PROMPT, "max_tokens": 120, "stream": True}) as r:
        r.readline()
    r = client.completions.create(model="cocomix", prompt=PROMPT, max_tokens=5, temperature=0)
    assert r.usage.completion_tokens == 5


def test_serve_refuses_a_busy_port():
    import socket

    with socket.create_server(("127.0.0.1", 0)) as sock:
        port = sock.getsockname()[1]
        r = cocomix("serve", "--model", WEIGHTS / "cocomix", "--port", port)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "another --port" in r.stderr
    r = cocomix("serve", "--model", WEIGHTS / "cocomix", "--port", 70000)
    assert r.returncode == 2 and "not a port" in r.stderr


def test_the_readme_client_snippet_runs(server, capsys):
    import re

    from conftest import ROOT_README

    snippet = re.search(r"<!-- client -->\s*```python\n(.*?)```", ROOT_README.read_text(),
                        flags=re.S).group(1)
    exec(snippet.replace("http://127.0.0.1:8080/v1", server + "/v1"), {})
    plain, steered = capsys.readouterr().out.splitlines()
    assert plain != steered


def test_a_client_that_leaves_before_its_answer_stops_its_generation(server):
    """A non-streaming request whose client disconnects stops generating (the worker's
    counters in ``/v1/studio``: one more cancelled job, far fewer tokens than it asked for)."""
    import socket
    import time

    before = get(server + "/v1/studio")["served"]
    body = json.dumps({"prompt": "The", "max_tokens": 126, "temperature": 0}).encode()
    host, port = server.split("//")[1].split(":")
    with socket.create_connection((host, int(port))) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                  b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        deadline = time.time() + 30
        while get(server + "/v1/studio")["served"]["jobs"] == before["jobs"]:  # it has started
            assert time.time() < deadline
            time.sleep(0.01)
    code, _ = post(server + "/v1/completions", {"prompt": "The", "max_tokens": 2})
    after = get(server + "/v1/studio")["served"]
    assert code == 200 and after["jobs"] == before["jobs"] + 2
    assert after["cancelled"] == before["cancelled"] + 1
    assert after["items"] - before["items"] < 126 // 2
