"""The official `openai` Python SDK against a live chatgate gateway (`/v1`).

Environment:
  CHATGATE_URL           gateway base URL, e.g. http://127.0.0.1:8080 (unset: every test skips)
  CHATGATE_ADMIN_TOKEN   admin bearer token, used to credit the test user
  CHATGATE_MOCK_ANSWER   the exact text the upstream answers to every request (optional: without
                         it the streamed answer is compared with the non-streamed one instead)
  CHATGATE_SDK_UPSTREAM_ONLY=1
                         development aid: CHATGATE_URL is an OpenAI-compatible upstream (such as
                         the repo's mock_upstream), not the gateway; only the tests that need no
                         account run, with a dummy key.

What the gateway must be configured with for every test to run: a channel serving
`gpt-4o-mini`, a non-zero price for it (the balance test needs a cost), and
`free_messages_per_day = 0` (with free messages the tests first spend up to
MAX_FREE_TO_SPEND of them, and skip the zero-balance / balance checks beyond that). Per-IP
limits above the defaults keep the suites fast; 429s are retried either way.
"""

from __future__ import annotations

import json
import os
import secrets
import time
import urllib.error
import urllib.request

import openai
import pytest
from openai import OpenAI

BASE = os.environ.get("CHATGATE_URL", "").rstrip("/")
ADMIN_TOKEN = os.environ.get("CHATGATE_ADMIN_TOKEN", "")
MOCK_ANSWER = os.environ.get("CHATGATE_MOCK_ANSWER")
UPSTREAM_ONLY = os.environ.get("CHATGATE_SDK_UPSTREAM_ONLY", "") not in ("", "0")

MODEL = "gpt-4o-mini"
CREDIT_MICROS = 100_000_000
MAX_FREE_TO_SPEND = 10
TIMEOUT = 15.0
MESSAGES = [
    {"role": "system", "content": "You are a test."},
    {"role": "user", "content": "Say hello. 你好"},
]

pytestmark = pytest.mark.skipif(not BASE, reason="CHATGATE_URL is not set: no gateway to test")

needs_gateway = pytest.mark.skipif(
    UPSTREAM_ONLY, reason="CHATGATE_SDK_UPSTREAM_ONLY: account/key tests need the gateway"
)


# ---------------------------------------------------------------------------------------------
# Plain HTTP helpers for the gateway's own API (accounts, keys, admin)
# ---------------------------------------------------------------------------------------------


class HttpError(AssertionError):
    pass


def api(method: str, path: str, *, token: str | None = None, body=None, expect=(200, 201, 204)):
    """One JSON request to the gateway; retries 429 (per-IP limits) a few times."""
    url = BASE + path
    data = None if body is None else json.dumps(body).encode()
    headers = {"Accept": "application/json"}
    if data is not None:
        headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    for attempt in range(6):
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
                status, raw, retry_after = resp.status, resp.read(), None
        except urllib.error.HTTPError as e:
            status, raw, retry_after = e.code, e.read(), e.headers.get("Retry-After")
        except urllib.error.URLError as e:
            raise HttpError(f"{method} {url}: cannot reach the gateway: {e.reason}") from None
        if status == 429 and attempt < 5:
            time.sleep(min(float(retry_after or 0.5), 3.0))
            continue
        break
    text = raw.decode("utf-8", "replace")
    if status not in expect:
        raise HttpError(f"{method} {path} -> HTTP {status} (expected {expect}): {text[:500]}")
    if not text.strip():
        return None
    try:
        return json.loads(text)
    except ValueError:
        raise HttpError(f"{method} {path} -> HTTP {status}, body is not JSON: {text[:500]}") from None


def register() -> dict:
    username = "sdkpy" + secrets.token_hex(6)
    password = "pw-" + secrets.token_urlsafe(12)
    out = api("POST", "/api/auth/register", body={"username": username, "password": password})
    assert isinstance(out, dict) and out.get("token") and out.get("user_id") is not None, (
        f"POST /api/auth/register should return {{user_id, token}}, got {out!r}"
    )
    return {"user_id": out["user_id"], "token": out["token"], "username": username}


def credit(user_id, amount_micros: int) -> None:
    assert ADMIN_TOKEN, "CHATGATE_ADMIN_TOKEN is not set: cannot credit the test user"
    api(
        "POST",
        f"/admin/users/{user_id}/credit",
        token=ADMIN_TOKEN,
        body={
            "amount_micros": amount_micros,
            "note": "openai python sdk test",
            "idempotency_key": "sdkpy-" + secrets.token_hex(8),
        },
    )


def create_key(token: str, name: str) -> dict:
    out = api("POST", "/api/keys", token=token, body={"name": name})
    assert isinstance(out, dict), f"POST /api/keys returned {out!r}"
    for field in ("id", "name", "key", "prefix", "created_at"):
        assert field in out, f"POST /api/keys: missing {field!r} in {out!r}"
    assert out["name"] == name, out
    assert isinstance(out["key"], str) and out["key"].startswith("sk-"), out
    return out


def list_keys(token: str) -> list:
    out = api("GET", "/api/keys", token=token)
    if isinstance(out, dict):  # accept {"keys": [...]} / {"data": [...]} as well as a bare list
        out = out.get("keys", out.get("data"))
    assert isinstance(out, list), f"GET /api/keys should list the keys, got {out!r}"
    return out


def me(token: str) -> dict:
    out = api("GET", "/api/me", token=token)
    assert isinstance(out, dict) and "balance_micros" in out, f"GET /api/me returned {out!r}"
    return out


def sdk(api_key: str, max_retries: int = 3) -> OpenAI:
    return OpenAI(base_url=BASE + "/v1", api_key=api_key, timeout=TIMEOUT, max_retries=max_retries)


def ask(client: OpenAI, **kw):
    return client.chat.completions.create(model=MODEL, messages=MESSAGES, **kw)


def spend_free_messages(client: OpenAI, token: str) -> bool:
    """Use up the user's free daily messages so the next request is paid. False if too many."""
    left = me(token).get("free_messages_left_today") or 0
    if left > MAX_FREE_TO_SPEND:
        return False
    for _ in range(left):
        ask(client)
    left = me(token).get("free_messages_left_today") or 0
    assert left == 0, f"free_messages_left_today is still {left} after spending them"
    return True


# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def account():
    """A fresh, credited user with one API key."""
    if UPSTREAM_ONLY:
        return {"key": "sk-upstream-only-dummy", "token": None}
    user = register()
    credit(user["user_id"], CREDIT_MICROS)
    created = create_key(user["token"], "sdk-python")
    start = me(user["token"])
    return {
        **user,
        "key": created["key"],
        "key_id": created["id"],
        "balance_at_start": start["balance_micros"],
        "free_at_start": start.get("free_messages_left_today") or 0,
    }


@pytest.fixture(scope="module")
def client(account) -> OpenAI:
    return sdk(account["key"])


@pytest.fixture(scope="module")
def plain_answer(client) -> str:
    """The non-streamed answer, fetched once (the streamed ones are compared with it)."""
    if MOCK_ANSWER is not None:
        return MOCK_ANSWER
    return ask(client).choices[0].message.content


def expected_answer(plain_answer: str) -> str:
    return MOCK_ANSWER if MOCK_ANSWER is not None else plain_answer


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------


def test_models_list_includes_model(client):
    ids = [m.id for m in client.models.list()]
    assert MODEL in ids, f"/v1/models does not list {MODEL}: {ids}"


def test_non_streamed_completion(client):
    resp = ask(client)
    assert resp.choices, resp
    msg = resp.choices[0].message
    assert msg.role == "assistant"
    if MOCK_ANSWER is not None:
        assert msg.content == MOCK_ANSWER
    else:
        assert msg.content
    assert resp.usage is not None, "non-streamed response has no usage"
    assert resp.usage.total_tokens > 0, resp.usage
    assert resp.usage.completion_tokens > 0, resp.usage


def test_streamed_completion_without_usage(client, plain_answer):
    text, chunks = [], 0
    for chunk in ask(client, stream=True):
        chunks += 1
        assert chunk.usage is None, f"usage sent although the client did not ask: {chunk}"
        for choice in chunk.choices:
            text.append(choice.delta.content or "")
    assert chunks > 0
    assert "".join(text) == expected_answer(plain_answer)


def test_streamed_completion_with_usage(client, plain_answer):
    chunks = list(ask(client, stream=True, stream_options={"include_usage": True}))
    assert chunks
    text = "".join(c.delta.content or "" for ch in chunks for c in ch.choices)
    assert text == expected_answer(plain_answer)
    with_usage = [i for i, ch in enumerate(chunks) if ch.usage is not None]
    assert with_usage == [len(chunks) - 1], (
        f"expected exactly one usage chunk, the last; usage at {with_usage} of {len(chunks)}"
    )
    final = chunks[-1]
    assert final.choices == [], f"the usage chunk must have empty choices: {final}"
    assert final.usage.completion_tokens > 0, final.usage
    assert final.usage.total_tokens >= final.usage.completion_tokens, final.usage


@needs_gateway
def test_bad_key_is_authentication_error():
    with pytest.raises(openai.AuthenticationError) as err:
        sdk("sk-" + secrets.token_hex(24)).models.list()
    assert err.value.status_code == 401
    with pytest.raises(openai.AuthenticationError) as err:
        ask(sdk("sk-" + secrets.token_hex(24)))
    assert err.value.status_code == 401
    assert isinstance(err.value.body, dict) and "message" in err.value.body, (
        f"error body is not OpenAI's {{'error': {{message, type, code}}}}: {err.value.body!r}"
    )


@needs_gateway
def test_unknown_model_is_not_found(client):
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert err.value.status_code == 404
    assert isinstance(err.value.body, dict) and "message" in err.value.body, err.value.body


@needs_gateway
def test_zero_balance_user_is_refused():
    user = register()  # deliberately not credited
    key = create_key(user["token"], "sdk-python-broke")["key"]
    assert me(user["token"])["balance_micros"] == 0, "a new user should start with no money"
    if not spend_free_messages(sdk(key), user["token"]):
        pytest.skip(f"the gateway grants more than {MAX_FREE_TO_SPEND} free messages a day; "
                    "run it with free_messages_per_day = 0 to test the refusal")
    broke = sdk(key, max_retries=0)
    for attempt in range(4):
        try:
            resp = ask(broke)
        except openai.APIStatusError as exc:
            e = exc
        else:
            pytest.fail(f"a user with zero balance and no free messages got an answer: {resp}")
        # A 429 must be the quota refusal, not the per-IP/per-user rate limiter: retry those.
        if e.status_code == 429 and str(e.code) in ("rate_limited", "rate_limit_exceeded"):
            time.sleep(min(float(e.response.headers.get("Retry-After") or 1), 3.0))
            continue
        break
    assert e.status_code in (402, 429), f"expected 402 or 429, got {e.status_code}: {e.body!r}"
    if e.status_code == 429:
        assert isinstance(e, openai.RateLimitError)
        assert str(e.code) not in ("rate_limited", "rate_limit_exceeded"), (
            f"still rate limited after retries, not a quota refusal: {e.body!r}"
        )
    assert isinstance(e.body, dict) and "message" in e.body, e.body
    assert me(user["token"])["balance_micros"] == 0, "a refused request changed the balance"


@needs_gateway
def test_deleted_key_is_rejected(account):
    token = account["token"]
    created = create_key(token, "sdk-python-doomed")
    key, key_id = created["key"], created["id"]
    doomed = sdk(key)
    assert MODEL in [m.id for m in doomed.models.list()]  # works before deletion

    raw = json.dumps(api("GET", "/api/keys", token=token))
    assert key not in raw, "GET /api/keys must not show the full key again"
    listed = [str(k.get("id")) for k in list_keys(token)]
    assert str(key_id) in listed, f"new key {key_id} not in GET /api/keys: {listed}"

    api("DELETE", f"/api/keys/{key_id}", token=token)
    listed = [str(k.get("id")) for k in list_keys(token)]
    assert str(key_id) not in listed, f"deleted key {key_id} still listed: {listed}"

    with pytest.raises(openai.AuthenticationError) as err:
        doomed.models.list()
    assert err.value.status_code == 401
    with pytest.raises(openai.AuthenticationError):
        ask(doomed)
    # The module's other key is unaffected.
    assert MODEL in [m.id for m in sdk(account["key"]).models.list()]


@needs_gateway
def test_balance_decreased(account, client):
    token = account["token"]
    now = me(token)
    if account["free_at_start"] == 0:
        # Every completion above was paid for.
        assert now["balance_micros"] < account["balance_at_start"], (
            f"balance did not decrease over the completions above: {account['balance_at_start']}"
            f" -> {now['balance_micros']} micros (is the model's price zero?)"
        )
    if not spend_free_messages(client, token):
        pytest.skip(f"more than {MAX_FREE_TO_SPEND} free messages left; "
                    "run the gateway with free_messages_per_day = 0")
    before = me(token)["balance_micros"]
    assert ask(client).choices[0].message.content
    text = "".join(c.delta.content or "" for ch in ask(client, stream=True) for c in ch.choices)
    assert text
    deadline = time.monotonic() + 5
    while True:  # settlement may trail the response by a moment
        after = me(token)["balance_micros"]
        if after < before or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert after < before, f"balance did not decrease: {before} -> {after} micros"
    assert after > 0
