"""Forward one client request through the pool, failing over before the first byte.

The request path, top to bottom:

    acquire an account (waiting FIFO if all are exhausted)
    → its kind's `Upstream` builds, signs and sends the request, and judges the answer
        retryable before any byte reached the client → note it on the account, next account
        final error → pass it through
        success → non-streaming: hand the body over
                  streaming: hold `message_start` back until the first content event (or a
                  short timer) so an in-band error can still fail over, then relay each
                  complete event as it arrives; after that, errors end the stream with a
                  well-formed `error` event, never a silent switch of account
    → release the account, record usage

What the client sees is written by a `Sink` (Anthropic or OpenAI dialect); the relay
itself never formats a response. What it sends and how an answer reads is the upstream's
(`dario.daemon.upstream.base.Upstream`), one per account kind; the relay only routes.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson
import trio

from dario.daemon.commands import command
from dario.daemon.errors import DarioError
from dario.daemon.exchange import Answer, Incoming, Outcome, Sink, Usage
from dario.daemon.redact import redact_body, redact_sse
from dario.daemon.routing.models import model_id_ok
from dario.daemon.routing.pool import AccountState, Lease, ModelNotOffered, NoAccounts, Pool, PoolExhausted
from dario.daemon.routing.ratelimits import Snapshot
from dario.daemon.upstream.base import Call, Reply, Upstream, Verdict, VerdictKind
from dario.daemon.upstream.errors import parse_error
from dario.daemon.upstream.httpclient import (
    ConnectError,
    PoolTimeout,
    ReadTimeout,
    UpstreamError,
)
from dario.daemon.upstream.local import read_capped
from dario.daemon.upstream.sse import EventTooLarge, iter_events

log = logging.getLogger("dario.relay")

CONTENT_EVENTS = frozenset({b"content_block_start", b"content_block_delta"})
FORWARD_RESPONSE_HEADERS = (b"request-id", b"retry-after", b"retry-after-ms", b"x-should-retry")
_RL_PREFIX = b"anthropic-ratelimit-"
MAX_ERROR_BODY = 1024 * 1024
# A whole (non-streaming) answer is held in memory before it is passed on. Real answers are at
# most a few MB (max_tokens output plus JSON framing); anything past this is a broken upstream.
MAX_BODY = 64 * 1024 * 1024
# Events after which an Anthropic stream is over: message_stop ends it, an error event aborts it
# (https://docs.anthropic.com/en/api/messages-streaming). Anything else last means it was cut off.
TERMINAL_EVENTS = frozenset({b"message_stop", b"error"})
# An in-band `error` event carries no HTTP status; these are the statuses the same error type
# has as an HTTP answer (https://docs.anthropic.com/en/api/errors). Other types (e.g.
# invalid_request_error) are the request's own fault and are relayed as they are.
STREAM_ERROR_STATUS = {"overloaded_error": 529, "rate_limit_error": 429, "api_error": 500, "timeout_error": 504}


class _HungUp(Exception):
    """The client went away while waiting for an account."""


class _Retry(Exception):
    """This attempt failed in a way another account may not; nothing reached the client.

    `rate_limited`: the upstream refused with a plain 429, so it did not process the request;
    the same account may take it again once its reset has passed (the pool keeps it out
    until then). Anything else is never sent to the same account twice.
    """

    def __init__(self, answer: Answer | None, err: DarioError | None, *, rate_limited: bool = False) -> None:
        self.answer = answer
        self.err = err
        self.rate_limited = rate_limited


class Relay:
    def __init__(
        self,
        pool: Pool,
        upstreams: Mapping[str, Upstream],
        *,
        queue_timeout: float,
        failover_deadline: float,
        hold_message_start: float,
        read_timeout: float,
        record: Callable[[Incoming, Outcome], None] | None = None,
    ) -> None:
        self.pool = pool
        self.upstreams = upstreams  # by account kind
        self.queue_timeout = queue_timeout
        self.failover_deadline = failover_deadline
        self.hold_message_start = hold_message_start
        self.read_timeout = read_timeout
        self.record = record

    async def forward(self, inc: Incoming, sink: Sink) -> Outcome:
        out = Outcome()
        try:
            await self._forward(inc, sink, out)
        finally:
            if self.record is not None:
                try:
                    self.record(inc, out)
                except Exception:  # analytics must never break the proxy
                    log.exception("recording usage failed")
        return out

    async def _forward(self, inc: Incoming, sink: Sink, out: Outcome) -> None:
        excluded: list[str] = []
        last: _Retry | None = None
        now = trio.current_time()
        failover_deadline = now + self.failover_deadline
        queue_deadline = now + self.queue_timeout
        while True:
            try:
                lease, waited = await self._acquire(inc, excluded, queue_deadline)
            except _HungUp:
                out.status, out.error_type = 499, "client_closed_request"
                return
            except ModelNotOffered as exc:
                await self._give_up(sink, out, last, _model_not_offered_error(exc))
                return
            except NoAccounts:
                await self._give_up(sink, out, last, self._no_accounts_error(inc.model))
                return
            except PoolExhausted as exc:
                await self._give_up(sink, out, last, self._queue_deadline_error(exc))
                return
            if last is not None:
                # Counted and logged only now: a failover is claimed once another attempt really starts.
                out.failovers += 1
                log.info("failover: %s on %s; retrying on %s", _describe(last), out.account, lease.account.alias)
            out.queue_wait_ms += waited * 1000.0
            out.account = lease.account.alias
            answered = False  # the attempt ran to its end: `out.usage` is what it took
            out.account_kind = lease.account.kind
            try:
                await self._attempt(lease, inc, sink, out)
                answered = True
                if inc.cache_keys is not None and out.status == 200 and out.error_type is None:
                    self.pool.remember_cache(lease.account.alias, inc.cache_keys)
                return
            except _Retry as retry:
                last = retry
                if not retry.rate_limited:
                    excluded.append(lease.account.alias)
            finally:
                self.pool.release(lease, out.usage if answered else None)
            if trio.current_time() >= failover_deadline:
                await self._give_up(sink, out, last, None)
                return

    async def _acquire(self, inc: Incoming, excluded: list[str], deadline: float) -> tuple[Lease, float]:
        if not self.pool.queue_depth:
            lease = self.pool.choose(inc.estimate, excluded, inc.cache_keys, inc.model)
            if lease is not None and (not self.pool.shared or await self.pool.confirm(lease)):
                return lease, 0.0
        if inc.watch_hangup is None:
            return await self.pool.acquire(inc.estimate, excluded, deadline, inc.cache_keys, inc.model)
        # Waiting in the queue: a client that hangs up must leave it at once.
        result: tuple[Lease, float] | None = None
        error: Exception | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(inc.watch_hangup, nursery.cancel_scope)
            try:
                result = await self.pool.acquire(inc.estimate, excluded, deadline, inc.cache_keys, inc.model)
            except (NoAccounts, PoolExhausted) as exc:
                error = exc
            nursery.cancel_scope.cancel()
        if error is not None:
            raise error
        if result is None:
            raise _HungUp()
        return result

    def _queue_deadline_error(self, exc: PoolExhausted) -> DarioError:
        """Say why nothing could serve: rate limits (429) or overloads and outages (529)."""
        headers = []
        if exc.retry_after is not None:
            headers.append((b"retry-after", str(math.ceil(exc.retry_after)).encode()))
        waited = f"waited {self.queue_timeout:g} s. {exc.detail}"
        if exc.rate_limited:
            return DarioError(429, "rate_limit_error", f"every dario account is rate limited; {waited}",
                              headers=headers)
        # 529 overloaded_error is what the Anthropic API itself answers when it is overloaded;
        # the OpenAI dialect maps it to 503.
        return DarioError(529, "overloaded_error",
                          f"every dario account is cooling down after upstream overloads or errors; {waited}",
                          headers=headers)

    def _no_accounts_error(self, model: str | None = None) -> DarioError:
        if not self.pool.accounts:
            return DarioError(
                503, "api_error",
                f"dario has no accounts yet. Add one with: {command('dario-ctl')} login <name>  "
                "(it asks for an Anthropic API key)",
            )
        # A locked keyring passes: Retry-After lets SDKs that honour it (anthropic, openai) try again.
        waiting = any(v["status"] == "waiting_for_keyring" for v in self.pool.views())
        return DarioError(503, "api_error", self.pool.describe_unservable(model),
                          headers=[(b"retry-after", b"5")] if waiting else [])

    async def _give_up(self, sink: Sink, out: Outcome, last: _Retry | None, fallback: DarioError | None) -> None:
        """No more accounts to try: the client gets the last upstream failure, or dario's own error."""
        if last is not None:
            log.info("%s on %s; no other account to try, passing it to the client", _describe(last), out.account)
        if last is not None and last.answer is not None:
            out.status = last.answer.status
            out.error_type = _declared_type(last.answer.body)
            await sink.answer(last.answer)
            return
        err = (last.err if last is not None else None) or fallback
        assert err is not None
        out.status, out.error_type = err.status, err.type
        await sink.error(err)

    # -- one attempt on one account ------------------------------------------------------
    async def _attempt(self, lease: Lease, inc: Incoming, sink: Sink, out: Outcome) -> None:
        acc = lease.account
        assert acc.secret is not None
        up = self._upstream_of(acc, lease)
        request = up.prepare(acc.base_url, acc.secret, Call("POST", inc.path, inc.query, inc.headers, inc.body))
        t0 = time.perf_counter()
        try:
            response = await up.send(request, read_timeout=self.read_timeout)
        except UpstreamError as exc:
            self.pool.observe_transient(acc, _transport_reason(exc), lease.started)
            raise _Retry(None, _transport_error(exc, acc.alias)) from None
        try:
            snap = up.limits(response.headers)
            status = response.status
            self.pool.observe_headers(acc, snap, lease.started, status)
            if status >= 400:
                # Where upstream error text enters dario: from here on it holds no key.
                body = redact_body(await read_capped(response, MAX_ERROR_BODY), up.secret_values(acc.secret))
                out.upstream_ms += (time.perf_counter() - t0) * 1000.0
                answer = Answer(status, self._client_headers(response, acc.alias, inc, None), body, acc.alias)
                verdict = up.classify(status, response.headers, body)
                self._retry_unless_final(acc, verdict, snap, answer, lease, f"upstream {status}")
                self.pool.observe_success(acc, None, lease.started)  # a 4xx is the request's fault
                out.status, out.error_type = status, verdict.error.declared_type if verdict.error else None
                self._set_overhead(answer.headers, inc, out)
                await sink.answer(answer)
                return
            if inc.stream and up.is_stream(response.headers):
                await self._stream(response, up, acc, lease, inc, sink, out, t0)
                return
            try:
                body = up.answer_body(await _read_capped(response, MAX_BODY))
            except UpstreamError as exc:
                self.pool.observe_transient(acc, _transport_reason(exc), lease.started)
                raise _Retry(None, _transport_error(exc, acc.alias)) from None
            except _BodyTooLarge:
                reason = f"upstream answer larger than {MAX_BODY // (1024 * 1024)} MiB"
                self.pool.observe_transient(acc, reason, lease.started)
                raise _Retry(None, DarioError(
                    502, "api_error", f"the upstream of account {acc.alias} sent an {reason}; dario refused it",
                )) from None
            out.upstream_ms += (time.perf_counter() - t0) * 1000.0
            self.pool.observe_success(acc, out.upstream_ms, lease.started)
            out.status = status
            # count_tokens answers carry no usage; everything else is parsed once, here.
            parsed = _tap_json_usage(body, out.usage) if inc.endpoint != "count_tokens" else None
            answer = Answer(status, self._client_headers(response, acc.alias, inc, out), body, acc.alias, parsed)
            await sink.answer(answer)
        finally:
            await response.aclose()

    def _upstream_of(self, acc: AccountState, lease: Lease) -> Upstream:
        up = self.upstreams.get(acc.kind)
        if up is None:  # a kind this build cannot serve (a newer registry file): never this account
            self.pool.observe_transient(acc, f"no upstream for account kind {acc.kind!r}"[:200], lease.started)
            raise _Retry(None, DarioError(
                502, "api_error", f"this dariod cannot serve account {acc.alias} of kind {acc.kind!r}",
            ))
        return up

    def _retry_unless_final(self, acc: AccountState, verdict: Verdict, snap: Snapshot, answer: Answer,
                            lease: Lease, what: str) -> None:
        """Note a failed answer on its account and raise _Retry, unless it is the request's own fault."""
        info = verdict.error
        message = info.message if info is not None else "no message"
        kind = verdict.kind
        if kind is VerdictKind.RATE_LIMITED or kind is VerdictKind.SPEND_LIMITED:
            spend = kind is VerdictKind.SPEND_LIMITED
            self.pool.observe_rate_limited(acc, snap, spend_limit=spend, message=message)
            if not spend and acc.block_until is not None and not any(k == b"retry-after" for k, _ in answer.headers):
                # Kinds that send no rate-limit headers (Bedrock, Vertex): if this answer reaches the
                # client, it still says when the account is back, as the pool judged it.
                wait = max(1, math.ceil(acc.block_until - self.pool.clock()))
                answer.headers.append((b"retry-after", str(wait).encode()))
            raise _Retry(answer, None, rate_limited=not spend)
        if kind is VerdictKind.AUTH:
            self.pool.observe_auth_failure(acc, answer.status, message)
            raise _Retry(answer, None)
        if kind is VerdictKind.OVERLOADED:
            self.pool.observe_transient(acc, f"{what}: {message}"[:200], lease.started)
            raise _Retry(answer, None)

    # -- streaming ---------------------------------------------------------------------
    async def _stream(self, response: Reply, up: Upstream, acc: AccountState, lease: Lease, inc: Incoming,
                      sink: Sink, out: Outcome, t0: float) -> None:
        splitter = up.stream_decoder()
        assert acc.secret is not None
        secrets = up.secret_values(acc.secret)  # every secret string in the account's credential
        held: list[bytes] = []
        committed = False
        ended = False
        terminal = False  # message_stop (or an error event) seen: the stream is whole
        # Phase 1: hold everything back until content shows up (or the timer passes), so an
        # in-band error before any content can still go to another account.
        hold_until = trio.current_time() + self.hold_message_start
        while not committed:
            await trio.lowlevel.checkpoint()  # as in phase 2: a drip before content must not hog the loop
            try:
                item = await response.next_chunk(hold_until)
            except UpstreamError as exc:
                self.pool.observe_transient(acc, _transport_reason(exc), lease.started)
                raise _Retry(None, _transport_error(exc, acc.alias)) from None
            if item == b"":
                break  # the timer: commit with what we have
            if item is None:
                ended = True
                if not terminal:
                    # Ended before a whole message: nothing reached the client, so retry.
                    self.pool.observe_transient(acc, "upstream stream ended early", lease.started)
                    raise _Retry(None, DarioError(502, "api_error", "upstream stream ended early"))
                break
            try:
                block = splitter.feed(item)
            except EventTooLarge as exc:
                self._broken_before_commit(acc, lease, str(exc))
            if not block:
                continue
            if block.find(b"error") >= 0:  # any spelling of an error event ("event:error" too)
                block = redact_sse(block, secrets)
            for name, data in iter_events(block):
                event = _event_json(data)
                if event is None:
                    self._broken_before_commit(acc, lease, f"a {_event_label(name)} event whose data is not JSON")
                if name in TERMINAL_EVENTS:
                    terminal = True
                if committed:
                    # After content, even in the same read: the upstream did the work, so an error
                    # here goes to the client (as it would a moment later), never to another account.
                    if name == b"error":
                        out.error_type = _declared_type(data)
                elif name == b"error":
                    self._stream_error_before_content(up, acc, data, response, inc, lease)
                elif name in CONTENT_EVENTS:
                    committed = True
                _tap_event_usage(name, event, out.usage)
            held.append(block)
        # Commit: from here on, the client owns this stream.
        out.upstream_ms += (time.perf_counter() - t0) * 1000.0
        out.status = response.status
        await sink.stream_start(response.status, self._client_headers(response, acc.alias, inc, out))
        try:
            prefix = b"".join(held)
            if prefix:
                await sink.stream_data(prefix)
            out.ttft_ms = (time.perf_counter() - inc.t_start) * 1000.0
            # Phase 2: relay each complete event as it arrives.
            while not ended:
                # Yield between upstream chunks: h11 can hand over many buffered chunks without
                # any I/O, and a dripping upstream must not starve other requests.
                await trio.lowlevel.checkpoint()
                try:
                    item = await response.next_chunk()
                except UpstreamError as exc:
                    await self._abort_stream(
                        sink, out, acc, lease, _transport_reason(exc),
                        f"the upstream connection of account {acc.alias} failed mid-stream "
                        f"({type(exc).__name__}); the response is incomplete",
                    )
                    return
                if item is None:
                    break
                try:
                    block = splitter.feed(item)
                except EventTooLarge as exc:
                    await self._abort_stream(
                        sink, out, acc, lease, str(exc),
                        f"the upstream of account {acc.alias} sent an event larger than dario accepts "
                        f"({exc}); the response is incomplete",
                    )
                    return
                if not block:
                    continue
                if block.find(b"error") >= 0:
                    block = redact_sse(block, secrets)
                good, bad, ends = _scan_events(block, out)
                terminal = terminal or ends
                if good:
                    await sink.stream_data(good)
                if bad is not None:
                    await self._abort_stream(
                        sink, out, acc, lease, f"malformed {bad} event",
                        f"the upstream of account {acc.alias} sent a {bad} event whose data is not JSON; "
                        "the response is incomplete",
                    )
                    return
            if not terminal:
                # A stream that ends cleanly without message_stop was cut off (a proxy timeout, a
                # crashed upstream): never let it pass as a complete answer.
                await self._abort_stream(
                    sink, out, acc, lease, "upstream stream ended before message_stop",
                    f"the upstream of account {acc.alias} ended the stream before message_stop; "
                    "the response is incomplete",
                )
                return
        except trio.Cancelled:
            # Shutdown's grace period ran out (or the client left): end the stream well-formed
            # rather than cut mid-event. Shielded, briefly.
            with trio.CancelScope(shield=True) as shield:
                shield.deadline = trio.current_time() + 0.5
                out.error_type = "api_error"
                await sink.stream_abort("api_error", "dariod stopped this response before it ended; it is incomplete")
            raise
        self.pool.observe_success(acc, out.upstream_ms, lease.started)
        await sink.stream_end()

    def _broken_before_commit(self, acc: AccountState, lease: Lease, what: str) -> None:
        """Garbage from the upstream before the client got anything: this account failed; try another."""
        self.pool.observe_transient(acc, f"upstream stream broken: {what}"[:200], lease.started)
        raise _Retry(None, DarioError(
            502, "api_error", f"the upstream of account {acc.alias} sent a broken stream: {what}",
        ))

    async def _abort_stream(self, sink: Sink, out: Outcome, acc: AccountState, lease: Lease, reason: str,
                            message: str) -> None:
        """The client owns the stream and it cannot be completed: end it with an error, count it as one."""
        self.pool.observe_transient(acc, reason[:200], lease.started)
        out.error_type = "api_error"
        await sink.stream_abort("api_error", message)

    def _stream_error_before_content(self, up: Upstream, acc: AccountState, data: bytes, response: Reply,
                                     inc: Incoming, lease: Lease) -> None:
        """An in-band error before any content: fail over if another account might do better."""
        info = parse_error(500, data)
        etype = info.declared_type or "api_error"
        status = STREAM_ERROR_STATUS.get(etype)
        if status is None:
            return  # e.g. invalid_request_error: the client's problem; relay it as it is
        # What the client gets if no other account serves: the same error as a whole answer.
        body = orjson.dumps({"type": "error", "error": {"type": etype, "message": info.message}})
        headers = [(k, v) for k, v in self._client_headers(response, acc.alias, inc, None) if k != b"content-type"]
        headers.append((b"content-type", b"application/json"))
        answer = Answer(status, headers, body, acc.alias)
        # A rate limit in-band says nothing of the windows: no headers came with it.
        verdict = up.classify(status, [], data)
        self._retry_unless_final(acc, verdict, Snapshot({}, None), answer, lease, f"in-stream {etype}")

    # -- headers -----------------------------------------------------------------------
    def _client_headers(self, response: Reply, alias: str, inc: Incoming,
                        out: Outcome | None) -> list[tuple[bytes, bytes]]:
        # A client of a pool talks to the pool: with several accounts, the rate-limit headers it
        # gets describe the pool's combined windows, not the one key that happened to serve.
        pooled = len(self.pool.accounts) > 1
        headers: list[tuple[bytes, bytes]] = []
        for name, value in response.headers:
            if name.startswith(_RL_PREFIX):
                if not pooled:
                    headers.append((name, value))
            elif name in FORWARD_RESPONSE_HEADERS or name == b"content-type":
                headers.append((name, value))
        if pooled:
            headers.extend(self.pool.pool_headers())
        headers.append((b"x-dario-account", alias.encode()))
        if inc.model and model_id_ok(inc.model):  # a header value may not carry control characters
            headers.append((b"x-dario-model", inc.model.encode()))
        if out is not None:
            self._set_overhead(headers, inc, out)
        return headers

    def _set_overhead(self, headers: list[tuple[bytes, bytes]], inc: Incoming, out: Outcome) -> None:
        elapsed = (time.perf_counter() - inc.t_start) * 1000.0
        overhead = max(0.0, elapsed - out.upstream_ms - out.queue_wait_ms)
        headers.append((b"x-dario-overhead-ms", f"{overhead:.2f}".encode()))


# -- small helpers ----------------------------------------------------------------------



def _tap_event_usage(name: bytes, event: dict[str, Any] | None, usage: Usage) -> None:
    """Usage from an already parsed event (cumulative: the last value wins)."""
    if event is None:
        return
    if name == b"message_start":
        message = event.get("message")
        usage.update(message.get("usage") if isinstance(message, dict) else None)
    elif name == b"message_delta":
        usage.update(event.get("usage"))


def _event_json(data: bytes) -> dict[str, Any] | None:
    """The event's data, parsed once: every Anthropic event carries a JSON object (None when it
    does not). An event with no data is never dispatched (SSE), so it counts as an empty object."""
    if not data:
        return {}
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, dict) else None


def _event_label(name: bytes) -> str:
    label = name[:40].decode("ascii", "replace")
    return label if label.isprintable() else "malformed"


def _scan_events(block: bytes, out: Outcome) -> tuple[bytes, str | None, bool]:
    """Check a block of complete events before it goes to the client.

    Returns (bytes to relay, the name of the first malformed event or None, whether a terminal
    event was seen). Usage is tapped and an in-band error is noted on `out` on the way.
    """
    events = iter_events(block)
    ends = False
    for i, (name, data) in enumerate(events):
        event = _event_json(data)
        if event is None:
            # Relay the good events before it, re-framed (rare path), then stop.
            good = b"".join(_frame(n, d) for n, d in events[:i])
            return good, _event_label(name), ends
        if name == b"message_start" or name == b"message_delta":
            _tap_event_usage(name, event, out.usage)
        elif name == b"error":
            out.error_type = _declared_type(data)
        if name in TERMINAL_EVENTS:
            ends = True
    return block, None, ends


def _frame(name: bytes, data: bytes) -> bytes:
    return b"event: " + name + b"\ndata: " + data.replace(b"\n", b"\ndata: ") + b"\n\n"


class _BodyTooLarge(Exception):
    pass


async def _read_capped(response: Reply, cap: int) -> bytes:
    """The whole body, refusing one larger than `cap` (checked against Content-Length first)."""
    declared = response.header(b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > cap:
        raise _BodyTooLarge()
    # One growing buffer rather than a list of pieces: a large one lives in its own mapping that
    # goes back to the OS when freed, where many 64 KiB pieces would stay in the heap.
    buf = bytearray()
    while (chunk := await response.next_chunk()) is not None:
        if len(buf) + len(chunk) > cap:
            raise _BodyTooLarge()
        buf += chunk
    return bytes(buf)


def _tap_json_usage(body: bytes, usage: Usage) -> Any:
    """Read usage from a whole JSON answer; return the parsed answer (None if it is not JSON)."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if isinstance(parsed, dict):
        usage.update(parsed.get("usage"))
    return parsed


def _declared_type(body: bytes) -> str | None:
    """The error type an upstream error body (or in-band error event) names, as it names it."""
    return parse_error(500, body).declared_type


def _transport_reason(exc: UpstreamError) -> str:
    return f"upstream {type(exc).__name__}: {exc}"[:200]


def _transport_error(exc: UpstreamError, alias: str) -> DarioError:
    if isinstance(exc, (ReadTimeout, PoolTimeout)):
        return DarioError(504, "timeout_error", f"the upstream of account {alias} timed out: {exc}")
    if isinstance(exc, ConnectError):
        return DarioError(502, "api_error", f"could not reach the upstream of account {alias}: {exc}")
    return DarioError(502, "api_error", f"the upstream of account {alias} failed: {exc}")


def _describe(retry: _Retry) -> str:
    if retry.answer is not None:
        return f"upstream {retry.answer.status}"
    if retry.err is not None:
        return retry.err.message
    return "failure"


def _model_not_offered_error(exc: ModelNotOffered) -> DarioError:
    """No account's kind or region offers the model: the Messages API's own 404 for an unknown model."""
    return DarioError(
        404, "not_found_error",
        f"model {exc.model[:200]!r} is not offered by any dario account (checked: {', '.join(exc.checked)}); "
        "models.json maps models to Bedrock and Vertex AI ids",
        openai_code="model_not_found", param="model",
    )
