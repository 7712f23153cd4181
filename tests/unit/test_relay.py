"""The relay in-process: a real Pool, a scripted Upstream, a recording Sink, trio's MockClock.

Each scripted answer is a status, headers and a body given as chunks; a float in the chunks is a
pause (on the mock clock) and an exception is raised where the connection would fail. Streams
are Anthropic SSE (https://docs.anthropic.com/en/api/messages-streaming).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
import trio
import trio.testing

from dario.daemon.errors import DarioError
from dario.daemon.exchange import Answer, Estimate, Incoming, Outcome
from dario.daemon.routing.pool import Pool
from dario.daemon.routing.ratelimits import Snapshot
from dario.daemon.routing.relay import Relay
from dario.daemon.upstream import anthropic, ratelimits
from dario.daemon.upstream.base import Call, Reply, Request, StreamDecoder, Verdict
from dario.daemon.upstream.httpclient import ConnectError, RemoteProtocolError
from dario.daemon.upstream.sse import EventSplitter

HOLD = 1.0
EPOCH = 1_700_000_000.0

Chunk = bytes | float | Exception


# -- the scripted upstream -------------------------------------------------------------------

@dataclass
class Scripted:
    status: int = 200
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    chunks: list[Chunk] = field(default_factory=list)
    head_delay: float = 0.0  # before the head arrives
    fail: Exception | None = None  # raised instead of a head (after head_delay)


class ScriptedReply:
    def __init__(self, script: Scripted) -> None:
        self.status = script.status
        self.headers = script.headers
        self._chunks = list(script.chunks)
        self.closed = False

    def header(self, name: bytes) -> bytes | None:
        return next((v for k, v in self.headers if k == name), None)

    async def next_chunk(self, hold_until: float | None = None) -> bytes | None:
        while self._chunks:
            item = self._chunks[0]
            if isinstance(item, float):
                now = trio.current_time()
                if hold_until is not None and now + item > hold_until:
                    await trio.sleep_until(hold_until)
                    self._chunks[0] = item - (hold_until - now)
                    return b""
                self._chunks.pop(0)
                await trio.sleep(item)
                continue
            self._chunks.pop(0)
            if isinstance(item, Exception):
                raise item
            await trio.lowlevel.checkpoint()
            return item
        return None

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        while (chunk := await self.next_chunk()) is not None:
            yield chunk

    async def aclose(self) -> None:
        self.closed = True


class ScriptedUpstream:
    """An Upstream whose answers come from a script per account; judged as Anthropic's are."""

    kind = "anthropic"

    def __init__(self, **scripts: list[Scripted]) -> None:
        self.scripts = scripts
        self.sent: list[str] = []  # aliases, in the order requests went out
        self.replies: list[ScriptedReply] = []

    def prepare(self, base_url: str, secret: str, call: Call) -> Request:
        return Request(call.method, base_url + call.path, [(b"x-api-key", secret.encode())], call.body)

    async def send(self, request: Request, *, read_timeout: float | None = None) -> Reply:
        alias = request.url.split("//")[1].split(".")[0]
        self.sent.append(alias)
        script = self.scripts[alias].pop(0)
        await trio.sleep(script.head_delay)
        if script.fail is not None:
            raise script.fail
        reply = ScriptedReply(script)
        self.replies.append(reply)
        return reply

    def classify(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> Verdict:
        return anthropic.classify(status, body)

    def limits(self, headers: list[tuple[bytes, bytes]]) -> Snapshot:
        return ratelimits.parse(headers)

    def secret_values(self, secret: str) -> tuple[str, ...]:
        return (secret,)

    def check_label(self, base_url: str, secret: str) -> str:
        return base_url

    def check_warning(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> str | None:
        return None

    def is_stream(self, headers: list[tuple[bytes, bytes]]) -> bool:
        return (b"content-type", b"text/event-stream") in headers

    def stream_decoder(self) -> StreamDecoder:
        return EventSplitter()

    def answer_body(self, body: bytes) -> bytes:
        return body

    async def check_key(self, base_url: str, secret: str) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        raise AssertionError("the relay never checks keys")


# -- the recording sink ----------------------------------------------------------------------

class RecordingSink:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.started_at: float | None = None

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def data(self) -> bytes:
        return b"".join(arg for name, arg in self.calls if name == "stream_data")

    def only(self, name: str) -> Any:
        found = [arg for n, arg in self.calls if n == name]
        assert len(found) == 1, self.calls
        return found[0]

    async def error(self, err: DarioError) -> None:
        self.calls.append(("error", err))

    async def answer(self, ans: Answer) -> None:
        self.calls.append(("answer", ans))

    async def stream_start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.started_at = trio.current_time()
        self.calls.append(("stream_start", (status, headers)))

    async def stream_data(self, block: bytes) -> None:
        self.calls.append(("stream_data", block))

    async def stream_abort(self, type: str, message: str) -> None:
        self.calls.append(("stream_abort", (type, message)))

    async def stream_end(self) -> None:
        self.calls.append(("stream_end", None))


# -- building blocks -------------------------------------------------------------------------

def event(name: str, data: dict[str, Any] | bytes) -> bytes:
    raw = data if isinstance(data, bytes) else orjson.dumps(data)
    return b"event: " + name.encode() + b"\ndata: " + raw + b"\n\n"


START = event("message_start", {"type": "message_start",
                                "message": {"usage": {"input_tokens": 11, "output_tokens": 1}}})
CONTENT = event("content_block_start", {"type": "content_block_start", "index": 0,
                                        "content_block": {"type": "text", "text": ""}})
DELTA = event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                      "delta": {"type": "text_delta", "text": "hi"}})
END = event("message_delta", {"type": "message_delta", "usage": {"output_tokens": 7}})
STOP = event("message_stop", {"type": "message_stop"})
SSE = [(b"content-type", b"text/event-stream")]
JSON = [(b"content-type", b"application/json")]


def in_band(etype: str) -> bytes:
    return event("error", {"type": "error", "error": {"type": etype, "message": f"{etype} in band"}})


def stream(*chunks: Chunk) -> Scripted:
    return Scripted(200, SSE, list(chunks))


def whole_stream() -> Scripted:
    return stream(START, CONTENT, DELTA, END, STOP)


def ok_json() -> Scripted:
    body = orjson.dumps({"type": "message", "content": [], "usage": {"input_tokens": 3, "output_tokens": 4}})
    return Scripted(200, JSON, [body])


def error(status: int, etype: str, message: str = "nope", details: dict[str, Any] | None = None,
          headers: list[tuple[bytes, bytes]] | None = None) -> Scripted:
    err: dict[str, Any] = {"type": etype, "message": message}
    if details is not None:
        err["details"] = details
    return Scripted(status, JSON + (headers or []), [orjson.dumps({"type": "error", "error": err})])


class FollowsMockClock:
    """The pool's wall clock: follows trio's mock clock inside a run (so cooldowns and resets pass
    as it jumps), and stays where the run left it outside one (for setup and assertions)."""

    def __init__(self) -> None:
        self.last = 0.0

    def __call__(self) -> float:
        try:
            self.last = trio.current_time()
        except RuntimeError:
            pass
        return EPOCH + self.last


def make_pool(*aliases: str) -> Pool:
    pool = Pool(clock=FollowsMockClock())
    for alias in aliases:
        pool.upsert(alias, "anthropic", f"https://{alias}.invalid", 0.0, "secret-" + alias)
    return pool


def incoming(stream: bool = True,
             watch_hangup: Callable[[trio.CancelScope], Awaitable[None]] | None = None) -> Incoming:
    return Incoming(dialect="anthropic", endpoint="messages", path="/v1/messages", query=b"", headers=[],
                    body=b"{}", stream=stream, model="claude-test", estimate=Estimate(), client="test",
                    t_start=time.perf_counter(), watch_hangup=watch_hangup)


def run(pool: Pool, upstream: ScriptedUpstream, inc: Incoming, *, queue_timeout: float = 5.0,
        failover_deadline: float = 30.0) -> tuple[Outcome, RecordingSink]:
    sink = RecordingSink()
    recorded: list[Outcome] = []
    relay = Relay(pool, {"anthropic": upstream}, queue_timeout=queue_timeout, failover_deadline=failover_deadline,
                  hold_message_start=HOLD, read_timeout=60.0, record=lambda _inc, out: recorded.append(out))
    result: list[Outcome] = []

    async def main() -> None:
        result.append(await relay.forward(inc, sink))

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert recorded == result  # the record callback sees every outcome, once
    assert all(reply.closed for reply in upstream.replies)  # every answer is closed, whatever happened
    return result[0], sink


# -- whole answers and failover before the first byte ----------------------------------------

def test_whole_answer_passes_body_usage_and_account() -> None:
    up = ScriptedUpstream(a=[ok_json()])
    out, sink = run(make_pool("a"), up, incoming(stream=False))
    ans = sink.only("answer")
    assert ans.status == 200 and (b"x-dario-account", b"a") in ans.headers
    assert (out.status, out.account, out.usage.input_tokens, out.usage.output_tokens) == (200, "a", 3, 4)


@pytest.mark.parametrize("status,etype", [(529, "overloaded_error"), (500, "api_error"), (502, "api_error"),
                                          (503, "api_error")])
def test_transient_error_fails_over_and_cools_the_account(status: int, etype: str) -> None:
    pool = make_pool("a", "b")
    pool.prefer("a")
    up = ScriptedUpstream(a=[error(status, etype)], b=[ok_json()])
    out, sink = run(pool, up, incoming(stream=False))
    assert up.sent == ["a", "b"]
    assert sink.only("answer").account == "b" and out.failovers == 1 and out.account == "b"
    assert pool.view(pool.accounts["a"])["status"] == "cooling"


def test_rate_limit_fails_over_and_marks_the_account_exhausted() -> None:
    pool = make_pool("a", "b")
    pool.prefer("a")
    up = ScriptedUpstream(a=[error(429, "rate_limit_error", headers=[(b"retry-after", b"30")])], b=[ok_json()])
    _out, sink = run(pool, up, incoming(stream=False))
    assert up.sent == ["a", "b"] and sink.only("answer").status == 200
    acc = pool.accounts["a"]
    assert acc.block_kind == "exhausted" and acc.block_until is not None
    assert acc.block_until - pool.clock() < 60  # the window's reset, not the spend-limit hour


def test_spend_limit_takes_the_account_out_for_the_hour_and_fails_over() -> None:
    pool = make_pool("a", "b")
    pool.prefer("a")
    spend = error(429, "rate_limit_error", "You have reached your specified workspace API usage limits",
                  details={"error_code": "enforced_spend_limit_reached"}, headers=[(b"retry-after", b"30")])
    up = ScriptedUpstream(a=[spend], b=[ok_json()])
    out, _sink = run(pool, up, incoming(stream=False))
    assert up.sent == ["a", "b"] and out.account == "b"
    acc = pool.accounts["a"]
    assert acc.block_until is not None and acc.block_until - pool.clock() > 3000


def test_a_429_that_only_mentions_spend_is_an_ordinary_rate_limit() -> None:
    pool = make_pool("a", "b")
    pool.prefer("a")
    up = ScriptedUpstream(a=[error(429, "rate_limit_error", "Your spend limit is fine; slow down",
                                   headers=[(b"retry-after", b"30")])], b=[ok_json()])
    run(pool, up, incoming(stream=False))
    acc = pool.accounts["a"]
    assert acc.block_until is not None and acc.block_until - pool.clock() < 60


def test_auth_failure_fails_over_and_the_account_needs_login() -> None:
    pool = make_pool("a", "b")
    pool.prefer("a")
    up = ScriptedUpstream(a=[error(401, "authentication_error", "invalid x-api-key")], b=[ok_json()])
    out, _ = run(pool, up, incoming(stream=False))
    assert up.sent == ["a", "b"] and out.account == "b"
    assert pool.view(pool.accounts["a"])["status"] == "needs_login"


def test_transport_error_fails_over() -> None:
    pool = make_pool("a", "b")
    pool.prefer("a")
    up = ScriptedUpstream(a=[Scripted(fail=ConnectError("connection refused"))], b=[whole_stream()])
    out, sink = run(pool, up, incoming())
    assert up.sent == ["a", "b"] and out.failovers == 1
    assert sink.names()[0] == "stream_start" and sink.names()[-1] == "stream_end"


def test_final_error_is_passed_through_without_failover() -> None:
    pool = make_pool("a", "b")
    pool.prefer("a")
    up = ScriptedUpstream(a=[error(400, "invalid_request_error", "max_tokens: field required")], b=[])
    out, sink = run(pool, up, incoming(stream=False))
    assert up.sent == ["a"] and sink.only("answer").status == 400
    assert (out.status, out.error_type, out.failovers) == (400, "invalid_request_error", 0)
    assert pool.view(pool.accounts["a"])["status"] == "ok"  # the request's fault, not the account's


def test_a_failed_account_is_not_tried_again_and_the_last_answer_reaches_the_client() -> None:
    pool = make_pool("a", "b")
    up = ScriptedUpstream(a=[error(529, "overloaded_error", "a is busy")],
                          b=[error(529, "overloaded_error", "b is busy")])
    out, sink = run(pool, up, incoming(stream=False))
    assert sorted(up.sent) == ["a", "b"]  # each once: a cooling account is still excluded for this request
    ans = sink.only("answer")
    assert ans.status == 529 and ans.account == up.sent[-1] and (out.status, out.failovers) == (529, 1)


def test_failover_deadline_stops_trying() -> None:
    pool = make_pool("a", "b")
    pool.prefer("a")
    slow = Scripted(head_delay=2.0, fail=ConnectError("connection timed out"))
    up = ScriptedUpstream(a=[slow], b=[ok_json()])
    out, sink = run(pool, up, incoming(stream=False), failover_deadline=1.0)
    assert up.sent == ["a"]
    err = sink.only("error")
    assert (err.status, out.status) == (502, 502) and "could not reach" in err.message


# -- streams: the message_start hold-back ----------------------------------------------------

def test_in_band_error_before_content_fails_over_and_nothing_of_it_reaches_the_client() -> None:
    pool = make_pool("a", "b")
    pool.prefer("a")
    up = ScriptedUpstream(a=[stream(START, in_band("overloaded_error"))], b=[whole_stream()])
    out, sink = run(pool, up, incoming())
    assert up.sent == ["a", "b"] and out.account == "b"
    assert sink.names().count("stream_start") == 1
    assert sink.data() == START + CONTENT + DELTA + END + STOP  # b's stream alone, a's message_start dropped
    assert pool.view(pool.accounts["a"])["status"] == "cooling"


def test_in_band_rate_limit_before_content_fails_over() -> None:
    pool = make_pool("a", "b")
    pool.prefer("a")
    up = ScriptedUpstream(a=[stream(START, in_band("rate_limit_error"))], b=[whole_stream()])
    _out, _ = run(pool, up, incoming())
    assert up.sent == ["a", "b"] and pool.accounts["a"].block_kind == "exhausted"


def test_message_start_is_held_until_content() -> None:
    up = ScriptedUpstream(a=[stream(START, 0.5, CONTENT, DELTA, END, STOP)])
    out, sink = run(make_pool("a"), up, incoming())
    assert sink.started_at is not None and sink.started_at >= 0.5  # not sent before content came
    assert sink.calls[1] == ("stream_data", START + CONTENT)  # message_start went out with the content
    assert sink.names()[-1] == "stream_end" and out.usage.output_tokens == 7 and out.usage.input_tokens == 11


def test_hold_back_is_committed_by_its_timer() -> None:
    up = ScriptedUpstream(a=[stream(START, 5.0, CONTENT, DELTA, END, STOP)])
    _out, sink = run(make_pool("a"), up, incoming())
    assert sink.started_at is not None and HOLD <= sink.started_at < 5.0
    assert sink.calls[1] == ("stream_data", START)
    assert sink.data() == START + CONTENT + DELTA + END + STOP and sink.names()[-1] == "stream_end"


def test_in_band_error_after_content_ends_the_stream_without_failover() -> None:
    pool = make_pool("a", "b")
    pool.prefer("a")
    up = ScriptedUpstream(a=[stream(START, CONTENT, 2.0, DELTA, in_band("overloaded_error"))], b=[whole_stream()])
    out, sink = run(pool, up, incoming())
    assert up.sent == ["a"] and out.failovers == 0
    assert sink.data().endswith(in_band("overloaded_error")) and out.error_type == "overloaded_error"
    assert "stream_abort" not in sink.names()  # the upstream's own error event ends it, well-formed


def test_truncated_stream_before_content_fails_over() -> None:
    pool = make_pool("a", "b")
    pool.prefer("a")
    up = ScriptedUpstream(a=[stream(START)], b=[whole_stream()])
    _out, sink = run(pool, up, incoming())
    assert up.sent == ["a", "b"] and sink.data() == START + CONTENT + DELTA + END + STOP


def test_truncated_stream_after_content_is_aborted() -> None:
    pool = make_pool("a", "b")
    up = ScriptedUpstream(a=[stream(START, CONTENT, DELTA)], b=[whole_stream()])
    pool.prefer("a")
    out, sink = run(pool, up, incoming())
    assert up.sent == ["a"]
    etype, message = sink.only("stream_abort")
    assert etype == "api_error" and "before message_stop" in message and "stream_end" not in sink.names()
    assert out.error_type == "api_error"


def test_connection_lost_mid_stream_is_aborted() -> None:
    pool = make_pool("a")
    up = ScriptedUpstream(a=[stream(START, CONTENT, RemoteProtocolError("peer closed connection"))])
    _, sink = run(pool, up, incoming())
    _, message = sink.only("stream_abort")
    assert "failed mid-stream" in message and "peer closed" not in sink.data().decode()


def test_malformed_event_before_content_fails_over() -> None:
    pool = make_pool("a", "b")
    pool.prefer("a")
    up = ScriptedUpstream(a=[stream(START, event("content_block_start", b"{not json"))], b=[whole_stream()])
    out, sink = run(pool, up, incoming())
    assert up.sent == ["a", "b"] and out.account == "b" and sink.names()[-1] == "stream_end"


def test_malformed_event_after_content_is_aborted_after_the_good_events() -> None:
    up = ScriptedUpstream(a=[stream(START, CONTENT, 2.0, DELTA + event("content_block_delta", b"[1, 2"))])
    _, sink = run(make_pool("a"), up, incoming())
    assert sink.data() == START + CONTENT + DELTA  # the good event before the bad one still went out
    _, message = sink.only("stream_abort")
    assert "not JSON" in message


# -- the queue -------------------------------------------------------------------------------

def test_queue_deadline_when_every_account_is_rate_limited_is_a_429() -> None:
    pool = make_pool("a")
    pool.observe_rate_limited(pool.accounts["a"], Snapshot({}, 300.0), spend_limit=False, message="x")
    up = ScriptedUpstream(a=[])
    out, sink = run(pool, up, incoming(stream=False), queue_timeout=2.0)
    err = sink.only("error")
    assert (err.status, err.type) == (429, "rate_limit_error") and up.sent == []
    assert dict(err.headers)[b"retry-after"].isdigit() and out.status == 429


def test_queue_deadline_waiting_on_something_other_than_a_rate_limit_is_a_529() -> None:
    pool = make_pool("a")
    pool.set_keyring_answer_expected(True)
    pool.accounts["a"].secret = None
    pool.mark_keyring_wait("a", "the keyring is locked")
    up = ScriptedUpstream(a=[])
    _, sink = run(pool, up, incoming(stream=False), queue_timeout=2.0)
    err = sink.only("error")
    assert (err.status, err.type) == (529, "overloaded_error")


def test_a_queued_request_is_served_when_the_window_resets() -> None:
    pool = make_pool("a")
    pool.observe_rate_limited(pool.accounts["a"], Snapshot({}, 1.5), spend_limit=False, message="x")
    up = ScriptedUpstream(a=[ok_json()])
    out, sink = run(pool, up, incoming(stream=False), queue_timeout=5.0)
    assert sink.only("answer").status == 200 and 1000 <= out.queue_wait_ms < 5000


def test_hang_up_while_queued_leaves_the_queue() -> None:
    pool = make_pool("a")
    pool.observe_rate_limited(pool.accounts["a"], Snapshot({}, 300.0), spend_limit=False, message="x")

    async def hangs_up_after_a_second(scope: trio.CancelScope) -> None:
        await trio.sleep(1.0)
        scope.cancel()

    up = ScriptedUpstream(a=[])
    out, sink = run(pool, up, incoming(stream=False, watch_hangup=hangs_up_after_a_second), queue_timeout=60.0)
    assert (out.status, out.error_type) == (499, "client_closed_request")
    assert sink.calls == [] and pool.queue_depth == 0 and up.sent == []


def test_no_accounts_says_how_to_add_one() -> None:
    up = ScriptedUpstream()
    _, sink = run(Pool(), up, incoming(stream=False))
    err = sink.only("error")
    assert err.status == 503 and "login" in err.message


def test_an_account_whose_kind_has_no_upstream_is_skipped() -> None:
    pool = make_pool("b")
    # A kind the model table does not restrict (Bedrock would be skipped before: see test_models_per_kind).
    pool.upsert("a", "future-kind", "https://a.invalid", 0.0, "secret-a")
    pool.prefer("a")
    up = ScriptedUpstream(b=[ok_json()])
    out, sink = run(pool, up, incoming(stream=False))
    assert up.sent == ["b"] and sink.only("answer").account == "b" and out.failovers == 1


def test_in_band_spend_limit_before_content_takes_the_account_out_and_fails_over() -> None:
    pool = make_pool("a", "b")
    pool.prefer("a")
    spend = event("error", {"type": "error", "error": {
        "type": "rate_limit_error", "message": "usage limits reached",
        "details": {"error_code": "enforced_spend_limit_reached"}}})
    up = ScriptedUpstream(a=[stream(START, spend)], b=[whole_stream()])
    out, _ = run(pool, up, incoming())
    assert up.sent == ["a", "b"] and out.account == "b"
    acc = pool.accounts["a"]
    assert acc.block_until is not None and acc.block_until - pool.clock() > 3000


# -- prompt-cache affinity -------------------------------------------------------------------

def _with_breakpoint(inc: Incoming) -> Incoming:
    from dario.daemon.routing.affinity import cache_keys
    inc.cache_keys = cache_keys("claude-test", {"system": [{"type": "text", "text": "s", "cache_control": {
        "type": "ephemeral"}}], "messages": [{"role": "user", "content": "hi"}]})
    return inc


@pytest.mark.parametrize("streamed", [False, True])
def test_a_served_request_makes_its_account_the_owner_of_its_prefixes(streamed: bool) -> None:
    pool = make_pool("a", "b")
    pool.prefer("b")
    answer = whole_stream() if streamed else ok_json()
    up = ScriptedUpstream(b=[answer])
    run(pool, up, _with_breakpoint(incoming(stream=streamed)))
    assert pool.conversations() == {"a": 0, "b": 1}
    pool.prefer(None)
    up = ScriptedUpstream(a=[ok_json()], b=[ok_json(), ok_json()])
    for _ in range(2):  # without affinity these would alternate (round robin)
        out, _sink = run(pool, up, _with_breakpoint(incoming(stream=False)))
        assert out.account == "b"


def test_a_failed_request_makes_no_owner_and_failover_ignores_the_owner() -> None:
    pool = make_pool("a", "b")
    pool.remember_cache("a", _with_breakpoint(incoming()).cache_keys)  # type: ignore[arg-type]
    up = ScriptedUpstream(a=[error(529, "overloaded_error")], b=[error(400, "invalid_request_error")])
    out, _sink = run(pool, up, _with_breakpoint(incoming(stream=False)))
    assert up.sent == ["a", "b"] and out.status == 400
    assert pool.conversations() == {"a": 1, "b": 0}


# -- kinds whose secret is a document (Bedrock, Vertex) --------------------------------------

class DocumentSecretUpstream(ScriptedUpstream):
    """A kind whose account secret is a JSON document holding several secret strings."""

    def secret_values(self, secret: str) -> tuple[str, ...]:
        return (secret, *orjson.loads(secret).values())


def test_every_secret_value_of_a_document_is_redacted_where_error_text_enters() -> None:
    pool = Pool(clock=FollowsMockClock())
    doc = orjson.dumps({"secret_access_key": "inner-secret-0001", "session_token": "inner-token-0002"}).decode()
    pool.upsert("a", "anthropic", "https://a.invalid", 0.0, doc)
    quoted = error(400, "invalid_request_error", "bad signature for inner-secret-0001 / inner-token-0002")
    leaky = in_band("overloaded_error").replace(b"in band", b"token inner-token-0002")
    up = DocumentSecretUpstream(a=[quoted, stream(START, CONTENT, leaky)])
    _, sink = run(pool, up, incoming(stream=False))
    body = sink.only("answer").body
    assert b"inner-secret-0001" not in body and b"inner-token-0002" not in body and b"[redacted]" in body
    _, sink = run(pool, up, incoming(stream=True))
    streamed = b"".join(arg for name, arg in sink.calls if name == "stream_data")
    assert b"inner-token-0002" not in streamed and b"[redacted]" in streamed


def test_a_rate_limit_without_retry_after_gets_one_from_the_pool() -> None:
    pool = make_pool("a")
    up = ScriptedUpstream(a=[error(429, "rate_limit_error", "Too many requests")])
    _, sink = run(pool, up, incoming(stream=False), queue_timeout=1.0)
    ans = sink.only("answer")
    assert ans.status == 429
    retry_after = dict(ans.headers)[b"retry-after"]
    # A 429 that names no reset holds the account until its local minute window resets.
    assert 1 <= int(retry_after) <= 60
