"""The official `anthropic` and `openai` SDKs through dario to Bedrock and Vertex AI (the fakes).

One dariod for the module with three accounts of three kinds: `anth` (the fake Anthropic API),
`bed` (the fake Bedrock, SigV4 keys) and `vtx` (the fake Vertex, a service account). A test points
requests at one kind by preferring its account; an autouse fixture refreshes every account after
each test, so a cooldown one test caused never steers the next.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from dario.ctl.client import ControlClient
from tests.fakebedrock import FakeBedrock
from tests.fakevertex import FakeVertex
from tests.support import Dariod

pytestmark = pytest.mark.timeout(90)

AKID = "AKIDDARIOE2EKINDS001"
SECRET = "bedrock-e2e-secret-access-key-00001"
ANTHROPIC_KEY = "sk-ant-e2e-kinds-key"
MODEL = "claude-sonnet-4-5"
REPLY = {"bed": "Hello from Bedrock.", "vtx": "Hello from Vertex."}
TOOL = {"name": "get_weather", "description": "Weather for a place.",
        "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}
KINDS = ["bed", "vtx"]


@pytest.fixture(scope="module")
def bedrock() -> Iterator[FakeBedrock]:
    with FakeBedrock({AKID: SECRET}) as fake:
        yield fake


@pytest.fixture(scope="module")
def vertex() -> Iterator[FakeVertex]:
    with FakeVertex() as fake:
        yield fake


@pytest.fixture(scope="module")
def gateway(fake: Any, bedrock: FakeBedrock, vertex: FakeVertex, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Dariod]:
    # A short queue: a throttled pool answers 429 within a second instead of a minute.
    d = Dariod(args=["--queue-timeout", "1"]).start()
    try:
        d.login("anth", ANTHROPIC_KEY, fake.url)
        ok = d.ctl("login", "bed", "--kind", "bedrock", "--region", "us-east-1", "--base-url", bedrock.url,
                   input=f"{AKID} {SECRET}\n")
        assert ok.returncode == 0, ok.stderr
        sa = vertex.service_account(tmp_path_factory.mktemp("sa"))
        ok = d.ctl("login", "vtx", "--kind", "vertex", "--project", "proj", "--region", "us-east5",
                   "--credentials", str(sa), "--base-url", vertex.url, input="")
        assert ok.returncode == 0, ok.stderr
        yield d
    finally:
        d.cleanup()


class Pool:
    """The control API in-process (no dario-ctl start-up per call); undoes what a test changed."""

    def __init__(self, gateway: Dariod) -> None:
        self.ctl = ControlClient(gateway.socket)
        self.disabled: list[str] = []
        self.preferred = False

    def prefer(self, alias: str) -> None:
        self.ctl.prefer(alias)
        self.preferred = True

    def only(self, alias: str) -> None:
        for other in ("anth", "bed", "vtx"):
            if other != alias:
                self.ctl.disable(other)
                self.disabled.append(other)

    def status_of(self, alias: str) -> dict[str, Any]:
        return dict(next(a for a in self.ctl.accounts() if a["alias"] == alias))

    def restore(self) -> None:
        if self.preferred:
            self.ctl.prefer(None)
        for alias in self.disabled:
            self.ctl.enable(alias)
        for alias in KINDS:  # a throttle teaches an estimated limit; the next test starts without it
            self.ctl.set_limits(alias, {}, clear=True)
        if any(a["status"] != "ok" for a in self.ctl.accounts()):
            self.ctl.refresh()  # a fresh key check lifts cooldowns and needs_login


@pytest.fixture
def pool(gateway: Dariod, fake: Any, bedrock: FakeBedrock, vertex: FakeVertex) -> Iterator[Pool]:
    fake.clear()
    bedrock.clear()
    vertex.clear()
    p = Pool(gateway)
    yield p
    p.restore()


@pytest.fixture
def client(gateway: Dariod) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=gateway.url, api_key="client-side", max_retries=0, timeout=30) as c:
        yield c


@pytest.fixture
def oai(gateway: Dariod) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="client-side", max_retries=0, timeout=30) as c:
        yield c


def ask(text: str = "Hi", **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 256, "messages": [{"role": "user", "content": text}], **extra}


@pytest.mark.parametrize("alias", KINDS)
def test_text(pool: Pool, client: anthropic.Anthropic, alias: str) -> None:
    pool.prefer(alias)
    raw = client.messages.with_raw_response.create(**ask())
    assert raw.headers["x-dario-account"] == alias
    message = raw.parse()
    assert message.content[0].type == "text" and message.content[0].text == REPLY[alias]
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0


@pytest.mark.parametrize("alias", KINDS)
def test_stream_helper(pool: Pool, client: anthropic.Anthropic, alias: str) -> None:
    pool.prefer(alias)
    with client.messages.stream(**ask()) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == REPLY[alias] and final.stop_reason == "end_turn"
    assert final.usage.output_tokens > 0


@pytest.mark.parametrize("alias", KINDS)
@pytest.mark.parametrize("streaming", [False, True])
def test_tools(pool: Pool, client: anthropic.Anthropic, alias: str, streaming: bool) -> None:
    pool.prefer(alias)
    if streaming:
        with client.messages.stream(**ask("weather? [[tool]]", tools=[TOOL])) as stream:
            message = stream.get_final_message()
    else:
        message = client.messages.create(**ask("weather? [[tool]]", tools=[TOOL]))
    uses = [b for b in message.content if b.type == "tool_use"]
    assert uses and uses[0].name == "get_weather" and isinstance(uses[0].input, dict)
    assert message.stop_reason == "tool_use"


@pytest.mark.parametrize("alias", KINDS)
def test_thinking(pool: Pool, client: anthropic.Anthropic, alias: str) -> None:
    pool.prefer(alias)
    with client.messages.stream(**ask("think [[thinking]]", max_tokens=2048,
                                      thinking={"type": "enabled", "budget_tokens": 1024})) as stream:
        message = stream.get_final_message()
    assert message.content[0].type == "thinking" and message.content[0].signature
    assert message.content[-1].type == "text"


@pytest.mark.parametrize("alias", KINDS)
def test_count_tokens(pool: Pool, client: anthropic.Anthropic, alias: str) -> None:
    pool.prefer(alias)
    raw = client.messages.with_raw_response.count_tokens(model=MODEL, messages=[{"role": "user", "content": "Hi"}])
    assert raw.headers["x-dario-account"] == alias
    assert raw.parse().input_tokens > 0


def test_bedrock_validation_error_is_an_anthropic_400(pool: Pool, client: anthropic.Anthropic,
                                                       bedrock: FakeBedrock) -> None:
    pool.prefer("bed")
    bedrock.script({"error": "ValidationException", "status": 400, "message": "messages: too short"})
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(**ask())
    assert info.value.body == {"type": "error", "error": {"type": "invalid_request_error",
                                                          "message": "messages: too short"}}
    assert info.value.response.headers["x-dario-account"] == "bed"  # final: not retried elsewhere


def test_unknown_model_on_bedrock_is_refused_without_a_call(pool: Pool, client: anthropic.Anthropic,
                                                            bedrock: FakeBedrock) -> None:
    pool.only("bed")
    # The other accounts (which could serve any Anthropic id) are disabled: none can serve it now.
    with pytest.raises(anthropic.InternalServerError) as info:
        client.messages.create(**{**ask(), "model": "claude-imaginary-9"})
    assert info.value.status_code == 503
    assert "bed: does not offer claude-imaginary-9" in info.value.message
    assert bedrock.requests() == []


@pytest.mark.parametrize(("alias", "fault"), [
    ("bed", {"error": "ThrottlingException", "status": 429, "message": "Too many requests"}),
    ("bed", {"error": "ServiceUnavailableException", "status": 503, "message": "unavailable"}),
    ("vtx", {"google": "RESOURCE_EXHAUSTED", "code": 429}),
    ("vtx", {"google": "UNAVAILABLE", "code": 503}),
])
def test_throttling_and_outages_fail_over(pool: Pool, client: anthropic.Anthropic, bedrock: FakeBedrock,
                                          vertex: FakeVertex, alias: str, fault: dict[str, Any]) -> None:
    pool.prefer(alias)
    (bedrock if alias == "bed" else vertex).script(fault)
    raw = client.messages.with_raw_response.create(**ask())
    assert raw.headers["x-dario-account"] != alias
    assert raw.parse().content[0].type == "text"
    cooled = pool.status_of(alias)
    assert cooled["status"] in ("cooling", "exhausted") and cooled["until"] is not None


def test_throttled_alone_is_a_429_with_retry_after(pool: Pool, client: anthropic.Anthropic,
                                                   bedrock: FakeBedrock) -> None:
    pool.only("bed")
    bedrock.script({"error": "ThrottlingException", "status": 429, "message": "Rate exceeded"})
    with pytest.raises(anthropic.RateLimitError) as info:
        client.messages.create(**ask())
    assert info.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    assert int(info.value.response.headers["retry-after"]) > 0
    assert pool.status_of("bed")["status"] == "exhausted"


@pytest.mark.parametrize(("alias", "fault"), [
    ("bed", {"error": "AccessDeniedException", "status": 403, "message": "not authorized"}),
    ("vtx", {"google": "PERMISSION_DENIED", "code": 403}),
])
def test_access_denied_needs_login_and_fails_over(pool: Pool, client: anthropic.Anthropic,
                                                  bedrock: FakeBedrock, vertex: FakeVertex,
                                                  alias: str, fault: dict[str, Any]) -> None:
    pool.prefer(alias)
    (bedrock if alias == "bed" else vertex).script(fault)
    raw = client.messages.with_raw_response.create(**ask())
    assert raw.headers["x-dario-account"] != alias
    assert pool.status_of(alias)["status"] == "needs_login"


@pytest.mark.parametrize("serving", ["anth", "bed", "vtx"])
def test_three_kinds_fail_over_to_the_one_that_serves(pool: Pool, client: anthropic.Anthropic, fake: Any,
                                                     bedrock: FakeBedrock, vertex: FakeVertex, serving: str) -> None:
    faults = {"anth": lambda: fake.script({"status": 529, "error_type": "overloaded_error", "message": "Overloaded"}),
              "bed": lambda: bedrock.script({"error": "ServiceUnavailableException", "status": 503, "message": "down"}),
              "vtx": lambda: vertex.script({"google": "UNAVAILABLE", "code": 503})}
    first = {"anth": "bed", "bed": "vtx", "vtx": "anth"}[serving]
    pool.prefer(first)  # the preferred account fails first, whatever its kind
    for alias, fail in faults.items():
        if alias != serving:
            fail()
    raw = client.messages.with_raw_response.create(**ask())
    assert raw.headers["x-dario-account"] == serving
    assert raw.parse().content[0].type == "text"
    assert pool.status_of(first)["status"] == "cooling"


def test_streaming_failover_before_the_first_byte(pool: Pool, client: anthropic.Anthropic,
                                                  bedrock: FakeBedrock) -> None:
    pool.prefer("bed")
    bedrock.script({"exception": "throttlingException", "after": 0, "message": "slow down"})
    with client.messages.with_streaming_response.create(**ask(), stream=True) as response:
        served = response.headers["x-dario-account"]
        body = response.read()
    assert served != "bed" and b"message_stop" in body


def test_openai_dialect_per_kind(pool: Pool, oai: openai.OpenAI) -> None:
    for alias in KINDS:
        pool.prefer(alias)
        raw = oai.chat.completions.with_raw_response.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}])
        assert raw.headers["x-dario-account"] == alias
        assert raw.parse().choices[0].message.content == REPLY[alias]
        stream = oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == REPLY[alias]


def test_openai_dialect_gets_openai_shaped_errors(pool: Pool, oai: openai.OpenAI,
                                                  bedrock: FakeBedrock, vertex: FakeVertex) -> None:
    pool.prefer("bed")
    bedrock.script({"error": "ValidationException", "status": 400, "message": "bad input"})
    with pytest.raises(openai.BadRequestError) as info:
        oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}])
    assert info.value.body["message"] == "bad input"  # type: ignore[index]
    assert info.value.body["type"] == "invalid_request_error"  # type: ignore[index]
    pool.prefer("vtx")
    vertex.script({"google": "INVALID_ARGUMENT", "code": 400})
    with pytest.raises(openai.BadRequestError) as info:
        oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}])
    assert "type" in info.value.body  # type: ignore[operator]


def test_secrets_never_reach_the_client(pool: Pool, client: anthropic.Anthropic, bedrock: FakeBedrock,
                                        vertex: FakeVertex, tmp_path: Path) -> None:
    pool.prefer("vtx")
    vertex.script({"google": "INVALID_ARGUMENT", "code": 400, "echo_auth": True})
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(**ask())
    token = vertex.requests()[-1]["headers"]["authorization"].split(" ", 1)[1]
    assert token not in info.value.response.text and "[redacted]" in info.value.response.text


def test_model_list_never_sends_a_credential_document(pool: Pool, client: anthropic.Anthropic,
                                                      bedrock: FakeBedrock, vertex: FakeVertex) -> None:
    pool.only("bed")  # only a Bedrock account can serve: dario must not list models through it
    client.models.list()
    assert not [r for r in bedrock.requests() if "/v1/models" in r["path"]]
    assert not [r for r in vertex.requests() if "/v1/models" in r["path"]]
