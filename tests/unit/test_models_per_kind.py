"""Model ids per account kind: the table, models.json, the adapters, the pool's skipping, /v1/models, prices."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import orjson
import pytest
import trio
import trio.testing

from dario.daemon.exchange import Estimate, Incoming, Outcome
from dario.daemon.recording.analytics import _COLUMNS, AnalyticsStore, UsageRecord
from dario.daemon.recording.prices import PriceTable
from dario.daemon.routing.catalog import ModelCatalog
from dario.daemon.routing.models import ModelTable
from dario.daemon.routing.pool import ModelNotOffered, Pool
from dario.daemon.routing.relay import Relay
from dario.daemon.upstream import bedrock, vertex
from dario.daemon.upstream.base import Call
from dario.daemon.upstream.httpclient import HttpClient
from dario.daemon.upstream.modelids import ModelIds, parse_entries
from tests.unit.test_relay import HOLD, RecordingSink, ScriptedUpstream, ok_json

SONNET_45 = "claude-sonnet-4-5-20250929"
VERTEX_BASE = "https://us-east5-aiplatform.googleapis.com/v1/projects/p/locations/us-east5"
BEDROCK_EU = "https://bedrock-runtime.eu-west-1.amazonaws.com"


def bedrock_secret(region: str = "us-east-1", prefix: str | None = "us") -> str:
    return bedrock.account_secret(region, {"type": "api_key", "api_key": "br-key"}, prefix)


# -- the table ------------------------------------------------------------------------------


def test_builtin_ids_per_kind_and_profile() -> None:
    ids = ModelIds()
    assert ids.bedrock_id("claude-sonnet-4-5", None) == "anthropic.claude-sonnet-4-5-20250929-v1:0"
    assert ids.bedrock_id(SONNET_45, "eu") == "eu.anthropic.claude-sonnet-4-5-20250929-v1:0"
    assert ids.bedrock_id("claude-opus-4-6", "global") == "global.anthropic.claude-opus-4-6-v1"
    assert ids.vertex_id("claude-sonnet-4-5") == "claude-sonnet-4-5@20250929"
    assert ids.vertex_id("claude-3-5-sonnet-20241022") == "claude-3-5-sonnet-v2@20241022"
    assert ids.vertex_id("claude-sonnet-4-6") == "claude-sonnet-4-6"
    assert ids.bedrock_id("claude-no-such-model", "us") is None and ids.vertex_id("gpt-4o") is None


def test_native_ids_pass_through_for_their_own_kind_only() -> None:
    ids = ModelIds()
    native_bedrock = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
    native_vertex = "claude-sonnet-4-5@20250929"
    assert ids.bedrock_id(native_bedrock, "eu") == native_bedrock  # as sent: the client chose the profile
    assert ids.vertex_id(native_vertex) == native_vertex
    assert ids.offers(native_bedrock, "bedrock", "us-east-1", None)
    assert not ids.offers(native_bedrock, "vertex", "us-east5")
    assert not ids.offers(native_bedrock, "anthropic")
    assert ids.offers(native_vertex, "vertex", "europe-west1")
    assert not ids.offers(native_vertex, "bedrock", "us-east-1", "us")
    assert not ids.offers(native_vertex, "anthropic-compatible")
    assert ids.vertex_id(native_bedrock) is None and ids.bedrock_id(native_vertex, None) is None


def test_which_kind_region_and_profile_offers_a_model() -> None:
    ids = ModelIds()
    assert ids.offers("claude-anything-new", "anthropic")  # the Anthropic upstream judges for itself
    assert ids.offers(SONNET_45, "bedrock", "us-east-1", "us")
    assert not ids.offers(SONNET_45, "bedrock", "us-east-1", None)  # inference profiles only
    assert not ids.offers(SONNET_45, "bedrock", "ap-southeast-2", "apac")  # no apac profile
    assert ids.offers("claude-opus-4-1", "bedrock", "us-west-2", "us")
    assert not ids.offers("claude-opus-4-1", "bedrock", "eu-west-1", "eu")
    assert ids.offers("claude-3-haiku-20240307", "bedrock", "eu-west-1", None)  # in-region on demand
    assert ids.offers(SONNET_45, "vertex", "us-east5") and not ids.offers("claude-no-such", "vertex", "us-east5")


def test_models_json_extends_overrides_and_skips_bad_entries(tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "models.json"
    path.write_text(json.dumps({
        "aliases": {"fast": "claude-haiku-4-5"},
        "models": {
            "claude-sonnet-9": {"names": ["claude-sonnet-9-0"], "display_name": "Claude Sonnet 9",
                                "bedrock": {"id": "anthropic.claude-sonnet-9-v1:0", "profiles": ["eu"],
                                            "profile_only": True},
                                "vertex": {"id": "claude-sonnet-9@20270101", "regions": ["europe-west1"]}},
            "claude-opus-4-1-20250805": {"vertex": None, "bedrock": {"id": "anthropic.claude-opus-4-1-20250805-v1:0"}},
            "claude-bad-1": {"bedrock": {"id": "eu.anthropic.claude-bad-1"}},  # a prefixed base id
            "claude-bad-2": {"vertex": {"id": "x", "profiles": ["us"]}},  # profiles are Bedrock's
            "claude-bad-3": {"azure": "x"},
            "claude-bad-4": "anthropic.claude-bad-4",
        },
    }))
    with caplog.at_level(logging.WARNING, logger="dario.models"):
        table = ModelTable.load(path)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 4 and all("entry ignored" in w for w in warnings)
    assert [w for w in warnings if "claude-bad-3" in w and "azure" in w]
    assert table.resolve("fast") == "claude-haiku-4-5"  # the aliases still apply
    ids = table.ids
    assert ids.bedrock_id("claude-sonnet-9-0", "eu") == "eu.anthropic.claude-sonnet-9-v1:0"
    assert ids.offers("claude-sonnet-9", "bedrock", "eu-west-1", "eu")
    assert not ids.offers("claude-sonnet-9", "bedrock", "us-east-1", "us")
    assert not ids.offers("claude-sonnet-9", "bedrock", "eu-west-1", None)
    assert ids.offers("claude-sonnet-9", "vertex", "europe-west1")
    assert not ids.offers("claude-sonnet-9", "vertex", "us-east5")
    # The override replaced Opus 4.1's Bedrock offer (no restriction now) and took Vertex away.
    assert ids.offers("claude-opus-4-1", "bedrock", "eu-west-1", "eu")
    assert ids.vertex_id("claude-opus-4-1") is None and not ids.offers("claude-opus-4-1", "vertex", "us-east5")
    assert ids.bedrock_id("claude-bad-1", None) is None
    assert ids.vertex_id("claude-sonnet-4-5") == "claude-sonnet-4-5@20250929"  # built-ins kept


def test_a_models_section_that_is_not_an_object_is_one_warning() -> None:
    good, warnings = parse_entries(["claude-x"])
    assert good == {} and len(warnings) == 1


# -- the adapters --------------------------------------------------------------------------


def test_the_adapters_take_their_ids_from_the_injected_table() -> None:
    ids = ModelIds().extended(parse_entries({
        "claude-sonnet-9": {"bedrock": "anthropic.claude-sonnet-9-v1:0", "vertex": "claude-sonnet-9@20270101"},
    })[0])
    body = orjson.dumps({"model": "claude-sonnet-9", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})
    call = Call("POST", "/v1/messages", b"", [], body)
    up = bedrock.upstreams(HttpClient(trust_env=False), ids)["bedrock"]
    req = up.prepare("https://bedrock-runtime.eu-west-1.amazonaws.com", bedrock_secret("eu-west-1", "eu"), call)
    assert req.url.endswith("/model/eu.anthropic.claude-sonnet-9-v1:0/invoke")
    vup = vertex.upstreams(HttpClient(trust_env=False), ids)["vertex"]
    urls: list[str] = []

    async def prepare_vertex() -> None:  # its token cache reads trio's clock
        urls.append(vup.prepare(VERTEX_BASE, "adc", call).url)

    trio.run(prepare_vertex)
    assert urls == [VERTEX_BASE + "/publishers/anthropic/models/claude-sonnet-9@20270101:rawPredict"]
    # Without the table's entry, the built-in adapters refuse the model (an answer `send` gives locally).
    refused = bedrock.BedrockUpstream(HttpClient(trust_env=False)).prepare(
        "https://bedrock-runtime.eu-west-1.amazonaws.com", bedrock_secret("eu-west-1", "eu"), call)
    assert refused.refused is not None and "claude-sonnet-9" in refused.refused[2]
    native = Call("POST", "/v1/messages", b"", [], orjson.dumps({"model": "jp.anthropic.claude-x-v1:0", "max_tokens": 5,
                                                                "messages": []}))
    assert up.prepare("https://bedrock-runtime.ap-northeast-1.amazonaws.com", bedrock_secret("ap-northeast-1", "jp"),
                      native).url.endswith("/model/jp.anthropic.claude-x-v1:0/invoke")


# -- the pool ------------------------------------------------------------------------------


def mixed_pool() -> Pool:
    pool = Pool()
    pool.upsert("anth", "anthropic", "https://api.anthropic.com", 0.0, "sk-a")
    pool.upsert("br-us", "bedrock", "https://bedrock-runtime.us-east-1.amazonaws.com", 0.0, bedrock_secret())
    pool.upsert("br-eu", "bedrock", "https://bedrock-runtime.eu-west-1.amazonaws.com", 0.0, "{}",
                details={"region": "eu-west-1", "inference_profile": "eu"})  # the registry's fields
    pool.upsert("vx", "vertex", VERTEX_BASE, 0.0, "adc")
    return pool


def chosen(pool: Pool, model: str, n: int = 40) -> set[str]:
    seen: set[str] = set()
    for _ in range(n):
        lease = pool.choose(Estimate(), model=model)
        assert lease is not None
        seen.add(lease.account.alias)
        pool.release(lease)
    return seen


def test_an_account_lacking_the_model_is_never_chosen() -> None:
    pool = mixed_pool()
    assert chosen(pool, SONNET_45) == {"anth", "br-us", "br-eu", "vx"}
    assert chosen(pool, "claude-opus-4-1") == {"anth", "br-us", "vx"}  # Bedrock: the us profile only
    assert chosen(pool, "claude-future-model-1") == {"anth"}
    assert chosen(pool, "eu.anthropic.claude-sonnet-4-5-20250929-v1:0") == {"br-us", "br-eu"}
    assert chosen(pool, "claude-sonnet-4-5@20250929") == {"vx"}
    pool.prefer("br-eu")  # preference never overrides the model
    assert chosen(pool, "claude-opus-4-1") == {"anth", "br-us", "vx"}
    assert chosen(pool, SONNET_45) == {"br-eu"}
    assert pool.lacking("claude-opus-4-1") == {"br-eu"}


def test_a_model_no_account_offers_fails_at_once_naming_the_kinds() -> None:
    pool = Pool()
    pool.upsert("br-eu", "bedrock", BEDROCK_EU, 0.0, bedrock_secret("eu-west-1", "eu"))
    pool.upsert("vx", "vertex", VERTEX_BASE, 0.0, "adc")
    raised: list[ModelNotOffered] = []

    async def main() -> None:
        start = trio.current_time()
        with pytest.raises(ModelNotOffered) as info:
            await pool.acquire(Estimate(), (), trio.current_time() + 3600.0, model="claude-future-1")
        assert trio.current_time() == start  # no queue wait
        raised.append(info.value)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    (exc,) = raised
    assert exc.model == "claude-future-1"
    assert exc.checked == ["bedrock (region eu-west-1, profile eu)", "vertex (region us-east5)"]
    assert pool.queue_depth == 0


def test_the_relay_answers_not_found_and_skips_accounts_lacking_the_model() -> None:
    pool = Pool()
    pool.upsert("a", "anthropic", "https://a.invalid", 0.0, "sk-a")
    pool.upsert("b", "bedrock", "https://b.invalid", 0.0, bedrock_secret("eu-west-1", "eu"))
    pool.prefer("b")
    up = ScriptedUpstream(a=[ok_json()])
    relay = Relay(pool, {"anthropic": up, "bedrock": up}, queue_timeout=5.0, failover_deadline=30.0,
                  hold_message_start=HOLD, read_timeout=60.0)
    outcomes: list[Outcome] = []

    def forward(model: str) -> RecordingSink:
        sink = RecordingSink()
        inc = Incoming(dialect="anthropic", endpoint="messages", path="/v1/messages", query=b"", headers=[],
                       body=b"{}", stream=False, model=model, estimate=Estimate(), client="test",
                       t_start=time.perf_counter())

        async def main() -> None:
            out = await relay.forward(inc, sink)
            outcomes.append(out)

        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
        return sink

    sink = forward("claude-opus-4-1")  # the preferred Bedrock account (eu) lacks it: anthropic serves
    assert up.sent == ["a"] and sink.only("answer").account == "a"
    assert outcomes[-1].account_kind == "anthropic" and outcomes[-1].failovers == 0
    sink = forward("claude-sonnet-4-5@20250929")  # a Vertex id, and no Vertex account
    err = sink.only("error")
    assert (err.status, err.type, err.openai_code) == (404, "not_found_error", "model_not_found")
    assert "claude-sonnet-4-5@20250929" in err.message and "anthropic" in err.message and "bedrock" in err.message
    assert up.sent == ["a"]


# -- /v1/models ----------------------------------------------------------------------------


def test_the_catalog_lists_what_the_pool_can_serve() -> None:
    pool = Pool()
    catalog = ModelCatalog(ModelTable(), None, pool)
    empty = [m["id"] for m in catalog.page(limit=None, after_id=None, before_id=None)["data"]]
    assert "claude-sonnet-5-5" in empty  # no accounts: the built-in Anthropic list, as before
    pool.upsert("br", "bedrock", BEDROCK_EU, 0.0, bedrock_secret("eu-west-1", "eu"))
    page = catalog.page(limit=None, after_id=None, before_id=None)
    ids = [m["id"] for m in page["data"] if "alias_of" not in m]
    assert SONNET_45 in ids and "claude-opus-4-1-20250805" not in ids and "claude-sonnet-5-5" not in ids
    item = next(m for m in page["data"] if m["id"] == SONNET_45)
    assert (item["type"], item["object"], item["display_name"]) == ("model", "model", "Claude Sonnet 4.5")
    assert item["created_at"] == "2025-09-29T00:00:00Z" and item["created"] > 0  # both SDKs' shapes
    assert catalog.get("claude-sonnet-5-5") is None  # nothing in this pool serves it
    sonnet_alias = next(m for m in page["data"] if m["id"] == "sonnet")
    assert sonnet_alias["alias_of"] in ids  # the aliases follow what the pool serves
    pool.upsert("anth", "anthropic", "https://api.anthropic.com", 0.0, "sk-a")
    pool.upsert("vx", "vertex", VERTEX_BASE, 0.0, "adc")
    ids = [m["id"] for m in catalog.page(limit=None, after_id=None, before_id=None)["data"]]
    assert "claude-sonnet-5-5" in ids and "claude-opus-4-1-20250805" in ids  # Anthropic's list, plus Vertex's
    assert len(ids) == len(set(ids))  # deduplicated by Anthropic id
    pool.set_enabled("anth", False)
    pool.set_enabled("vx", False)
    ids = [m["id"] for m in catalog.page(limit=None, after_id=None, before_id=None)["data"]]
    assert "claude-sonnet-5-5" not in ids and "claude-opus-4-1-20250805" not in ids


# -- prices --------------------------------------------------------------------------------


def test_per_kind_prices_override_and_fall_back(tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"bedrock": {"claude-sonnet-4-5": {"input": 3.3, "output": 16.5}},
                                "vertex": {"claude-haiku-4-5": {"output": 6}}}))
    prices = PriceTable.load(path)
    assert prices.rates(SONNET_45)["input"] == 3.0  # Anthropic's own, by default
    bedrock_rates = prices.rates(SONNET_45, "bedrock")
    assert bedrock_rates is not None and (bedrock_rates["input"], bedrock_rates["output"]) == (3.3, 16.5)
    assert bedrock_rates["cache_read"] == pytest.approx(0.33)  # cache rates follow the new input rate
    haiku = prices.rates("claude-haiku-4-5-20251001", "vertex")
    assert haiku is not None and (haiku["input"], haiku["output"]) == (1.0, 6.0)  # the rest is Anthropic's
    assert prices.rates("claude-opus-4-5", "bedrock") == prices.rates("claude-opus-4-5")  # not overridden
    assert prices.cost(SONNET_45, 1_000_000, 0, kind="bedrock") == pytest.approx(3.3)
    assert prices.cost(SONNET_45, 1_000_000, 0, kind="anthropic") == pytest.approx(3.0)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"bedrock": {"claude-new-model": {"input": 1}}}))
    with pytest.raises(ValueError, match="input' and 'output"):
        PriceTable.load(bad)


def test_analytics_prices_a_row_by_the_serving_accounts_kind(tmp_path: Path) -> None:
    prices = PriceTable(kinds={"vertex": {"claude-sonnet-4": {"input": 10.0, "output": 10.0, "cache_write_5m": 0.0,
                                                               "cache_write_1h": 0.0, "cache_read": 0.0}}})
    store = AnalyticsStore(tmp_path / "usage.sqlite3", prices=prices)
    assert "account_kind" not in _COLUMNS  # not a column: the SQL schema is unchanged

    def row(kind: str | None) -> float:
        record = UsageRecord(ts=0.0, client="c", account="x", model=SONNET_45, dialect="anthropic",
                             endpoint="messages", streaming=False, status=200, error_type=None,
                             input_tokens=1_000_000, account_kind=kind)
        return float(store._row_values(record)[-1])

    assert row("vertex") == pytest.approx(10.0)
    assert row("anthropic") == pytest.approx(3.0) and row(None) == pytest.approx(3.0)
