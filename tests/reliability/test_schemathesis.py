"""dario against its own OpenAPI description: schemathesis fuzzes the running daemon from `/openapi.json`.

One dariod with one account on the fake upstream; schemathesis loads the document from the daemon and
runs its examples, coverage and fuzzing phases (valid and invalid requests, EXAMPLES per operation),
all in one engine run that the tests below read. What must hold:

- no 5xx of dario's own making: a 5xx passes only when it carries `x-dario-account` (an upstream's);
- status codes, content types, response headers and bodies are the documented ones;
- every 4xx has its dialect's error shape, with the error type its status implies and a request id:
  OpenAI's on /v1/chat/completions (and on a /v1/models/{id} 404 unless the client spoke Anthropic),
  Anthropic's everywhere else;
- requests valid by the document are not refused by dario itself, and invalid ones are not accepted by
  dario itself. The upstream's judgement is its own: the fake checks less than the document says (and
  some rules span fields), so an answer that came from the upstream is left to the checks above.

Bugs it found are fixed; the tests named after them keep them fixed.
"""

from __future__ import annotations

import collections
import http.server
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest
import schemathesis
from schemathesis import engine
from schemathesis.checks import CheckContext
from schemathesis.config import SchemathesisConfig
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.engine import Status, events
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from dario.daemon import __version__
from dario.daemon.edge.openapi import openapi_document
from tests.fakeupstream import FakeUpstream
from tests.support import Dariod

EXAMPLES = int(os.environ.get("DARIO_FUZZ_EXAMPLES_PER_OPERATION", "25"))
RANDOM = os.environ.get("DARIO_FUZZ_RANDOM", "") != ""
KEY = "sk-ant-fuzz-schemathesis-0000"
HI = [{"role": "user", "content": "hi"}]
MESSAGE: dict[str, Any] = {"model": "claude-sonnet-4-5", "max_tokens": 8, "messages": HI}
CHAT: dict[str, Any] = {"model": "claude-sonnet-4-5", "messages": HI}


# -- dario's own checks, added to schemathesis's ---------------------------------------------------

# The error type each status implies (https://docs.anthropic.com/en/api/errors and
# https://platform.openai.com/docs/guides/error-codes; errors.py maps dario's own the same way).
ANTHROPIC_TYPE = {400: {"invalid_request_error"}, 401: {"authentication_error"}, 402: {"billing_error"},
                  403: {"permission_error"}, 404: {"not_found_error"}, 405: {"invalid_request_error"},
                  413: {"request_too_large"}, 429: {"rate_limit_error"}, 431: {"invalid_request_error"}}
OPENAI_TYPE = {400: {"invalid_request_error"}, 401: {"authentication_error"}, 403: {"permission_error"},
               404: {"invalid_request_error"}, 405: {"invalid_request_error"}, 413: {"invalid_request_error"},
               429: {"rate_limit_error", "insufficient_quota"}, 431: {"invalid_request_error"}}


def _from_upstream(response: schemathesis.Response) -> bool:
    return "x-dario-account" in response.headers


def _sent(response: schemathesis.Response, name: str) -> bool:
    return name in response.request.headers


def _openai_dialect(path: str, response: schemathesis.Response) -> bool:
    """Which error shape `response` must have; `path` is the operation's path template."""
    if path.startswith("/v1/chat/"):
        return True
    if path == "/v1/models/{model_id}" and response.status_code == 404:
        # An Anthropic client (anthropic-version or x-api-key) gets Anthropic's shape; anyone else OpenAI's.
        return not (_sent(response, "anthropic-version") or _sent(response, "x-api-key"))
    return False


def _error_shape_problem(path: str, response: schemathesis.Response) -> str | None:
    status = response.status_code
    try:
        body: Any = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return f"a {status} whose body is not JSON: {response.content[:200]!r}"
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or not isinstance(error.get("message"), str) or not error["message"]:
        return f"a {status} without error.message: {body!r:.300}"
    if _openai_dialect(path, response):
        want, id_header = OPENAI_TYPE.get(status), "x-request-id"
        if not ("param" in error and "code" in error):
            return f"OpenAI error without param/code: {body!r:.300}"
    else:
        want, id_header = ANTHROPIC_TYPE.get(status), "request-id"
        if body.get("type") != "error":
            return f"Anthropic error without type 'error' (OpenAI shape on an Anthropic path?): {body!r:.300}"
        if not _from_upstream(response) and not str(body.get("request_id", "")).startswith("req_"):
            return f"dario's own Anthropic error without request_id: {body!r:.300}"
    if want is not None and error.get("type") not in want:
        return f"a {status} with error.type {error.get('type')!r}, expected one of {sorted(want)}"
    if id_header not in response.headers:
        return f"a {status} without a {id_header} header"
    return None


@schemathesis.check
def dario_no_own_server_error(ctx: CheckContext, response: schemathesis.Response, case: schemathesis.Case) -> None:
    if response.status_code >= 500 and not _from_upstream(response):
        raise AssertionError(
            f"dario answered {response.status_code} itself (no x-dario-account): {response.content[:300]!r}"
        )


@schemathesis.check
def dario_error_shape(ctx: CheckContext, response: schemathesis.Response, case: schemathesis.Case) -> None:
    if 400 <= response.status_code < 500:
        problem = _error_shape_problem(case.operation.path, response)
        if problem:
            raise AssertionError(problem)


# Rules that span fields, which a JSON Schema cannot state: a request valid by the document may still
# break one, and dario's 400 naming it is right. (param of the OpenAI error, start of its message)
CROSS_FIELD_RULES = [
    ("tool_choice", "`tool_choice` names function"),
    ("function_call", "`function_call` names function"),
]


def _breaks_cross_field_rule(response: schemathesis.Response) -> bool:
    if response.status_code != 400:
        return False
    try:
        error = orjson.loads(response.content)["error"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return False
    return any(error.get("param") == param and str(error.get("message", "")).startswith(start)
               for param, start in CROSS_FIELD_RULES)


@schemathesis.check
def dario_accepts_valid_requests(ctx: CheckContext, response: schemathesis.Response,
                                 case: schemathesis.Case) -> bool | None:
    """schemathesis's positive_data_acceptance, for what dario decides itself."""
    if _from_upstream(response) or _breaks_cross_field_rule(response):
        return None
    return positive_data_acceptance(ctx, response, case)


@schemathesis.check
def dario_rejects_invalid_requests(ctx: CheckContext, response: schemathesis.Response,
                                   case: schemathesis.Case) -> bool | None:
    """schemathesis's negative_data_rejection, for what dario decides itself."""
    if _from_upstream(response):
        return None
    return negative_data_rejection(ctx, response, case)


def _config() -> SchemathesisConfig:
    generation: dict[str, Any] = {"max-examples": EXAMPLES, "mode": "all", "database": "none"}
    if not RANDOM:
        generation["deterministic"] = True
    data: dict[str, Any] = {
        "generation": generation,
        "continue-on-failure": True,
        "max-failures": 200,
        "request-timeout": 30.0,
        "phases": {"stateful": {"enabled": False}},
        "output": {"sanitization": {"enabled": False}},  # the reproducing curl commands, as sent
        "checks": {
            # Replaced by the dario_* checks above (they skip what the upstream decided).
            "not_a_server_error": {"enabled": False},
            "positive_data_acceptance": {"enabled": False},
            "negative_data_rejection": {"enabled": False},
        },
    }
    if not RANDOM:
        data["seed"] = 20260801
    return SchemathesisConfig.from_dict(data)


# -- the run -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    operation: str
    check: str
    status: str  # of the response that failed the check: "405", "500 upstream", …
    title: str
    message: str
    reproduce: str

    def __str__(self) -> str:
        return (f"{self.operation} → {self.status} [{self.check}] {self.title}: {self.message.strip()}\n"
                f"    {self.reproduce}")


@dataclass
class Run:
    findings: list[Finding]
    cases: int
    seconds: float
    errors: list[str]
    dariod_stderr: str
    # operation → "200", "400 upstream", … → responses
    statuses: dict[str, collections.Counter[str]]

    def summary(self) -> str:
        responses = sum(c.total() for c in self.statuses.values())
        lines = [f"{self.cases} test cases, {responses} responses in {self.seconds:.1f} s"]
        for op, counts in sorted(self.statuses.items()):
            lines.append(f"  {op}: " + ", ".join(f"{k} ×{n}" for k, n in sorted(counts.items())))
        return "\n".join(lines)


def _status(response: schemathesis.Response | None) -> str:
    if response is None:
        return "no response"
    return f"{response.status_code}{' upstream' if _from_upstream(response) else ''}"


def _logged_errors(stderr: str) -> list[str]:
    """Each ERROR record dariod logged, whole (its traceback included)."""
    records: list[list[str]] = []
    for line in stderr.splitlines():
        if line[:4].isdigit():  # a log line starts a record
            records.append([line])
        elif records:
            records[-1].append(line)
    return ["\n".join(r) for r in records if " ERROR " in r[0]]


def _is_header_crash(record: str) -> bool:
    # Known dario bug: a model id with a control character, echoed in the x-dario-model response header
    # (in a stream, the error comes wrapped in exception groups).
    raised = [m for m in re.findall(r"^[\s|+]*([\w.]+(?:Error|Exception)): ", record, re.MULTILINE)
              if not m.endswith("ExceptionGroup")]
    return bool(raised) and set(raised) == {"h11._util.LocalProtocolError"} and "Illegal header value" in record


@pytest.fixture(scope="module")
def dario() -> Iterator[Dariod]:
    fake = FakeUpstream().start()
    d = Dariod(args=["--queue-timeout", "0.5"])
    try:
        # Windows so large the fake never rate-limits on its own (fuzzed max_tokens can be huge).
        fake.set_limits(None, requests=10**8, tokens=10**12, input_tokens=10**12, output_tokens=10**12)
        d.start()
        d.login("fuzz", KEY, fake.url)
        yield d
    finally:
        d.cleanup()
        fake.stop()


@pytest.fixture(scope="module")
def run(dario: Dariod) -> Run:
    schema = schemathesis.openapi.from_url(f"{dario.url}/openapi.json", config=_config())
    findings: dict[tuple[str, str, str, str], Finding] = {}  # the first of each kind
    errors: list[str] = []
    statuses: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    cases = 0
    t0 = time.monotonic()
    for event in engine.from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            cases += len(event.recorder.cases)
            label = event.label or ""
            for interaction in event.recorder.interactions.values():
                statuses[label][_status(interaction.response)] += 1
            for case_id, nodes in event.recorder.checks.items():
                answered = event.recorder.interactions.get(case_id)
                status = _status(answered.response if answered is not None else None)
                for node in nodes:
                    if node.status != Status.FAILURE or node.failure_info is None:
                        continue
                    failure = node.failure_info.failure
                    findings.setdefault((label, node.name, failure.title, failure.message), Finding(
                        label, node.name, status, failure.title, failure.message, node.failure_info.code_sample,
                    ))
        elif isinstance(event, events.NonFatalError | events.FatalError):
            errors.append(repr(event))
    seconds = time.monotonic() - t0
    assert dario.proc is not None and dario.proc.poll() is None, "dariod died under schemathesis"
    return Run(sorted(findings.values(), key=str), cases, seconds, errors, dario.stderr(), dict(statuses))


def test_streams_conform(dario: Dariod) -> None:
    """Both dialects' event streams, event by event (the fuzzer reaches them only by chance)."""
    schema = schemathesis.openapi.from_url(f"{dario.url}/openapi.json")
    for path, body in (("/v1/messages", MESSAGE), ("/v1/chat/completions", CHAT)):
        r = schemathesis.Response.from_any(httpx.post(f"{dario.url}{path}", json={**body, "stream": True},
                                                      timeout=30.0))
        assert r.status_code == 200 and r.headers["content-type"][0].startswith("text/event-stream")
        schema[path]["POST"].validate_response(r)
        broken = r.content.replace(b'"type":"message_start"', b'"typo":"message_start"').replace(
            b'"object":"chat.completion.chunk"', b'"object":"chat.completion"')
        with pytest.raises((Failure, FailureGroup)):  # and the schema does look inside the events
            schema[path]["POST"].validate_response(schemathesis.Response(
                status_code=200, headers=r.headers, content=broken, request=r.request, elapsed=0.0, verify=True))


# -- bugs this suite found, now fixed: each test keeps its fix ---------------------------------------


def _model_header_crash(f: Finding, run: Run) -> bool:
    # hypercorn's own answer to a crashed app is an empty 500 without a content type; excused only while
    # every crash dariod logged is that header's.
    crashes = [r for r in _logged_errors(run.dariod_stderr) if "Error in ASGI Framework" in r]
    return f.status == "500" and bool(crashes) and all(_is_header_crash(r) for r in crashes)


def _missing_allow(f: Finding, run: Run) -> bool:
    return f.check == "unsupported_method" and "Allow" in f.message


def _limit_parsed_leniently(f: Finding, run: Run) -> bool:
    return f.operation == "GET /v1/models" and f.check == "dario_rejects_invalid_requests" and "`limit`" in f.message


def _upstream_error_relabelled_as_json(f: Finding, run: Run) -> bool:
    # Met here only through the fake upstream's own crash on an unhashable tool_use_id (an empty 500);
    # test_upstream_error_without_json_body_keeps_its_shape reproduces it without that.
    return (f.check == "response_schema_conformance" and "JSON deserialization error" in f.title
            and f.status.startswith("5") and f.status.endswith(" upstream"))


# Bugs this suite found (405 without Allow, a lenient `limit`, a non-JSON upstream error relabelled as
# JSON, a model id with a control character crashing the response header) are fixed; the tests below
# keep them fixed. A finding matching one of these predicates again is a regression, not an excuse.
KNOWN_BUGS: list[Any] = []


def test_contract_holds(run: Run) -> None:
    unexpected = [f for f in run.findings if not any(bug(f, run) for bug in KNOWN_BUGS)]
    known = collections.Counter(f"  {f.operation} → {f.status} [{f.check}]" for f in run.findings
                                if f not in unexpected)
    print(run.summary(), "known dario bugs met:", *(f"{k} ×{n}" for k, n in sorted(known.items())), sep="\n")
    assert not run.errors, "schemathesis could not test everything:\n" + "\n".join(run.errors)
    assert not unexpected, f"{len(unexpected)} contract failures:\n" + "\n\n".join(map(str, unexpected))
    assert run.cases >= 100, f"only {run.cases} test cases"
    # Every operation was tested (schemathesis leaves out the one serving the document it loaded; the
    # tests below and tests/unit/test_openapi.py cover it), and reached its success path, not only refusals.
    documented = {f"{m.upper()} {p}" for p, item in openapi_document(__version__)["paths"].items() for m in item}
    assert set(run.statuses) == documented - {"GET /openapi.json"}, run.summary()
    unserved = [op for op, counts in run.statuses.items() if not any(k.startswith("2") for k in counts)]
    assert not unserved, f"no 2xx from {unserved}:\n{run.summary()}"
    logged = _logged_errors(run.dariod_stderr)
    assert not logged, "dariod logged errors:\n" + "\n".join(logged)[-4000:]


def test_405_names_the_allowed_methods(run: Run) -> None:
    missing = [f for f in run.findings if _missing_allow(f, run)]
    assert not missing, "\n\n".join(map(str, missing))


@pytest.mark.parametrize("limit", ["0", "00", "1_0", "%D9%A1"])
def test_models_limit_outside_1_to_1000_is_refused(dario: Dariod, limit: str) -> None:
    r = schemathesis.Response.from_any(httpx.get(f"{dario.url}/v1/models?limit={limit}", timeout=30.0))
    assert r.status_code == 400, (limit, r.status_code, r.content[:200])
    assert _error_shape_problem("/v1/models", r) is None


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens", "/v1/chat/completions"])
def test_model_with_a_control_character_is_no_server_error(dario: Dariod, path: str) -> None:
    body: dict[str, Any] = {"model": "claude-x\ny", "messages": HI}
    if path == "/v1/messages":
        body["max_tokens"] = 8
    r = schemathesis.Response.from_any(httpx.post(f"{dario.url}{path}", json=body, timeout=30.0))
    assert r.status_code < 500 or _from_upstream(r), (r.status_code, r.content[:200])
    if r.status_code >= 400:
        assert _error_shape_problem(path, r) is None


class _EmptyErrorUpstream(http.server.BaseHTTPRequestHandler):
    """Lists models; answers every POST 500 with an empty body and no content-type (a crashed upstream)."""

    def do_GET(self) -> None:
        body = b'{"data":[],"has_more":false,"first_id":null,"last_id":null}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.send_response(500)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_upstream_error_without_json_body_keeps_its_shape() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _EmptyErrorUpstream)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    d = Dariod(args=["--queue-timeout", "0.5"])
    try:
        d.start()
        d.login("crashy", KEY, f"http://127.0.0.1:{server.server_address[1]}")
        r = httpx.post(f"{d.url}/v1/messages", json={"model": "claude-sonnet-4-5", "max_tokens": 8,
                                                     "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 500 and r.headers.get("x-dario-account") == "crashy"
        if r.headers.get("content-type", "").startswith("application/json"):
            body = orjson.loads(r.content)  # fails today: the body is empty
            assert body["type"] == "error" and body["error"]["type"] == "api_error"
    finally:
        d.cleanup()
        server.shutdown()
        server.server_close()




def test_refusals_the_fuzzer_cannot_reach_are_documented() -> None:
    """401 (a key is set), 403 (a foreign Origin), 413, 431, 503 (no account) and 429 (dario's own, and
    the upstream's) on both dialects: each response conforms to the document and has its dialect's shape."""
    fake = FakeUpstream().start()
    gated = Dariod(args=["--queue-timeout", "0.5"], env={"DARIO_API_KEY": KEY})
    try:
        gated.start()
        key = {"x-api-key": KEY}
        too_big = b"x" * (32 * 1024 * 1024 + 1)
        big_head = {**key, "x-padding": "x" * (64 * 1024)}
        schema = schemathesis.openapi.from_url(f"{gated.url}/openapi.json", headers=key)
        with httpx.Client(base_url=gated.url, timeout=30.0) as client:
            assert client.get("/openapi.json").status_code == 401
            assert client.get("/openapi.json", headers={"authorization": f"Bearer {KEY}"}).status_code == 200
            assert client.get("/health").status_code == 200

            def check(method: str, path: str, want: int, template: str | None = None, **kwargs: Any) -> None:
                r = schemathesis.Response.from_any(client.request(method, path, **kwargs))
                assert r.status_code == want, (method, path, r.status_code, r.content[:300])
                template = template or path
                schema[template][method].validate_response(r)  # documented status, content type and body
                problem = _error_shape_problem(template, r)
                assert problem is None, (method, path, problem)

            evil = {**key, "origin": "http://evil.example"}
            for path, body in (("/v1/messages", MESSAGE), ("/v1/chat/completions", CHAT),
                               ("/v1/messages/count_tokens", {"model": "claude-sonnet-4-5", "messages": []})):
                check("POST", path, 401, json=body)
                check("POST", path, 403, json=body, headers=evil)
                check("POST", path, 413, content=too_big, headers=key)
                check("POST", path, 431, json=body, headers=big_head)
                check("POST", path, 503, json=body, headers=key)
            for path in ("/v1/models", "/accounts", "/analytics", "/metrics", "/openapi.json"):
                check("GET", path, 401)
                check("GET", path, 403, headers=evil)
                check("GET", path, 431, headers=big_head)
            check("GET", "/health", 403, headers={"origin": "http://evil.example"})
            check("GET", "/v1/models/claude-x", 431, "/v1/models/{model_id}", headers=big_head)
            check("GET", "/health", 431, headers={"x-padding": "x" * (64 * 1024)})

            # One account at a time; its upstream answers 429 with a long retry-after: the client gets
            # that 429 (relayed, or mapped to OpenAI's shape), then dario's own while the account cools.
            for i, (path, payload) in enumerate((("/v1/messages", MESSAGE), ("/v1/chat/completions", CHAT))):
                if i:
                    assert gated.ctl("accounts", "disable", f"a{i - 1}").returncode == 0
                gated.login(f"a{i}", KEY, fake.url)
                fake.script({"status": 429, "retry_after": 30})
                check("POST", path, 429, json=payload, headers=key)
                check("POST", path, 429, json=payload, headers=key)
    finally:
        gated.cleanup()
        fake.stop()
