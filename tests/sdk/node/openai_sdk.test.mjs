// The official `openai` npm SDK against a live chatgate gateway (`/v1`). Node 20, node:test.
//
// Environment (same as ../python/test_openai_sdk.py):
//   CHATGATE_URL          gateway base URL, e.g. http://127.0.0.1:8080 (unset: every test skips)
//   CHATGATE_ADMIN_TOKEN  admin bearer token, used to credit the test user
//   CHATGATE_MOCK_ANSWER  the exact text the upstream answers to every request (optional: without
//                         it the streamed answer is compared with the non-streamed one instead)
//   CHATGATE_SDK_UPSTREAM_ONLY=1
//                         development aid: CHATGATE_URL is an OpenAI-compatible upstream (such as
//                         the repo's mock_upstream); only the tests that need no account run.
//
// The gateway should serve `gpt-4o-mini` at a non-zero price with free_messages_per_day = 0
// (with free messages, up to MAX_FREE_TO_SPEND are spent first; beyond that the zero-balance and
// balance checks skip).

import { describe, test, before } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import OpenAI from 'openai';

const BASE = (process.env.CHATGATE_URL ?? '').replace(/\/+$/, '');
const ADMIN_TOKEN = process.env.CHATGATE_ADMIN_TOKEN ?? '';
const MOCK_ANSWER = process.env.CHATGATE_MOCK_ANSWER;
const UPSTREAM_ONLY = !['', '0', undefined].includes(process.env.CHATGATE_SDK_UPSTREAM_ONLY);

const MODEL = 'gpt-4o-mini';
const CREDIT_MICROS = 100_000_000;
const MAX_FREE_TO_SPEND = 10;
const TIMEOUT_MS = 15_000;
const MESSAGES = [
  { role: 'system', content: 'You are a test.' },
  { role: 'user', content: 'Say hello. 你好' },
];

const noGateway = BASE ? false : 'CHATGATE_URL is not set: no gateway to test';
const needsGateway =
  noGateway || (UPSTREAM_ONLY ? 'CHATGATE_SDK_UPSTREAM_ONLY: account/key tests need the gateway' : false);

const hex = (n) => randomBytes(n).toString('hex');
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// --- plain HTTP helpers for the gateway's own API (accounts, keys, admin) ---------------------

async function api(method, path, { token, body, expect = [200, 201, 204] } = {}) {
  const headers = { accept: 'application/json' };
  if (body !== undefined) headers['content-type'] = 'application/json';
  if (token) headers.authorization = `Bearer ${token}`;
  let res, text;
  for (let attempt = 0; ; attempt++) {
    try {
      res = await fetch(BASE + path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: AbortSignal.timeout(TIMEOUT_MS),
      });
    } catch (e) {
      throw new Error(`${method} ${BASE + path}: cannot reach the gateway: ${e.cause?.message ?? e.message}`);
    }
    text = await res.text();
    if (res.status === 429 && attempt < 5) {
      // per-IP limits: honour Retry-After, briefly
      await sleep(Math.min(Number(res.headers.get('retry-after') || 0.5), 3) * 1000);
      continue;
    }
    break;
  }
  assert.ok(
    expect.includes(res.status),
    `${method} ${path} -> HTTP ${res.status} (expected ${expect}): ${text.slice(0, 500)}`,
  );
  if (!text.trim()) return null;
  try {
    return JSON.parse(text);
  } catch {
    assert.fail(`${method} ${path} -> HTTP ${res.status}, body is not JSON: ${text.slice(0, 500)}`);
  }
}

async function register() {
  const username = `sdkjs${hex(6)}`;
  const password = `pw-${hex(12)}`;
  const out = await api('POST', '/api/auth/register', { body: { username, password } });
  assert.ok(out?.token && out.user_id != null, `POST /api/auth/register should return {user_id, token}, got ${JSON.stringify(out)}`);
  return { userId: out.user_id, token: out.token, username };
}

async function credit(userId, amountMicros) {
  assert.ok(ADMIN_TOKEN, 'CHATGATE_ADMIN_TOKEN is not set: cannot credit the test user');
  await api('POST', `/admin/users/${userId}/credit`, {
    token: ADMIN_TOKEN,
    body: { amount_micros: amountMicros, note: 'openai node sdk test', idempotency_key: `sdkjs-${hex(8)}` },
  });
}

async function createKey(token, name) {
  const out = await api('POST', '/api/keys', { token, body: { name } });
  for (const field of ['id', 'name', 'key', 'prefix', 'created_at']) {
    assert.ok(out && field in out, `POST /api/keys: missing ${field} in ${JSON.stringify(out)}`);
  }
  assert.equal(out.name, name);
  assert.ok(typeof out.key === 'string' && out.key.startsWith('sk-'), `key should start with sk-: ${out.key}`);
  return out;
}

async function listKeys(token) {
  let out = await api('GET', '/api/keys', { token });
  if (out && !Array.isArray(out)) out = out.keys ?? out.data; // {keys:[…]} or a bare list
  assert.ok(Array.isArray(out), `GET /api/keys should list the keys, got ${JSON.stringify(out)}`);
  return out;
}

async function me(token) {
  const out = await api('GET', '/api/me', { token });
  assert.ok(out && 'balance_micros' in out, `GET /api/me returned ${JSON.stringify(out)}`);
  return out;
}

const sdk = (apiKey, maxRetries = 3) =>
  new OpenAI({ baseURL: `${BASE}/v1`, apiKey, timeout: TIMEOUT_MS, maxRetries });

const ask = (client, extra = {}) => client.chat.completions.create({ model: MODEL, messages: MESSAGES, ...extra });

async function modelIds(client) {
  const ids = [];
  for await (const m of client.models.list()) ids.push(m.id);
  return ids;
}

async function streamText(client, extra = {}) {
  const chunks = [];
  for await (const chunk of await ask(client, { stream: true, ...extra })) chunks.push(chunk);
  const text = chunks.flatMap((c) => c.choices ?? []).map((c) => c.delta?.content ?? '').join('');
  return { chunks, text };
}

/** Expects `promise` to reject with an SDK error of class `cls`; returns the error. */
async function rejectsWith(promise, cls, what) {
  try {
    const value = await promise;
    assert.fail(`${what}: expected ${cls.name}, but the call succeeded: ${JSON.stringify(value).slice(0, 300)}`);
  } catch (e) {
    if (e instanceof assert.AssertionError) throw e;
    assert.ok(e instanceof cls, `${what}: expected ${cls.name}, got ${e?.constructor?.name}: ${e?.message}`);
    return e;
  }
}

function assertOpenAIErrorShape(e) {
  assert.ok(
    e.error && typeof e.error === 'object' && 'message' in e.error,
    `error body is not OpenAI's {"error":{message,type,code}}: ${JSON.stringify(e.error)}`,
  );
}

/** Use up the user's free daily messages so the next request is paid. False if too many. */
async function spendFreeMessages(client, token) {
  const left = (await me(token)).free_messages_left_today ?? 0;
  if (left > MAX_FREE_TO_SPEND) return false;
  for (let i = 0; i < left; i++) await ask(client);
  const now = (await me(token)).free_messages_left_today ?? 0;
  assert.equal(now, 0, `free_messages_left_today is still ${now} after spending them`);
  return true;
}

// --- tests -----------------------------------------------------------------------------------

describe('openai npm SDK against chatgate /v1', { skip: noGateway }, () => {
  let account; // { token, userId, key, keyId, balanceAtStart, freeAtStart }
  let client;
  let plainAnswer;

  before(async () => {
    if (UPSTREAM_ONLY) {
      account = { key: 'sk-upstream-only-dummy' };
    } else {
      const user = await register();
      await credit(user.userId, CREDIT_MICROS);
      const created = await createKey(user.token, 'sdk-node');
      const start = await me(user.token);
      account = {
        ...user,
        key: created.key,
        keyId: created.id,
        balanceAtStart: start.balance_micros,
        freeAtStart: start.free_messages_left_today ?? 0,
      };
    }
    client = sdk(account.key);
  });

  const expected = () => (MOCK_ANSWER !== undefined ? MOCK_ANSWER : plainAnswer);

  test('models.list() includes gpt-4o-mini', async () => {
    const ids = await modelIds(client);
    assert.ok(ids.includes(MODEL), `/v1/models does not list ${MODEL}: ${ids}`);
  });

  test('non-streamed completion', async () => {
    const resp = await ask(client);
    assert.ok(resp.choices?.length, JSON.stringify(resp));
    const msg = resp.choices[0].message;
    assert.equal(msg.role, 'assistant');
    if (MOCK_ANSWER !== undefined) assert.equal(msg.content, MOCK_ANSWER);
    else assert.ok(msg.content);
    plainAnswer = msg.content;
    assert.ok(resp.usage, 'non-streamed response has no usage');
    assert.ok(resp.usage.total_tokens > 0, JSON.stringify(resp.usage));
    assert.ok(resp.usage.completion_tokens > 0, JSON.stringify(resp.usage));
  });

  test('streamed completion without stream_options has no usage', async () => {
    const { chunks, text } = await streamText(client);
    assert.ok(chunks.length > 0);
    for (const c of chunks) {
      assert.ok(c.usage == null, `usage sent although the client did not ask: ${JSON.stringify(c)}`);
    }
    assert.equal(text, expected());
  });

  test('streamed completion with include_usage ends with one usage chunk', async () => {
    const { chunks, text } = await streamText(client, { stream_options: { include_usage: true } });
    assert.equal(text, expected());
    const withUsage = chunks.map((c, i) => (c.usage != null ? i : -1)).filter((i) => i >= 0);
    assert.deepEqual(withUsage, [chunks.length - 1], `expected exactly one usage chunk, the last; usage at ${withUsage} of ${chunks.length}`);
    const last = chunks.at(-1);
    assert.deepEqual(last.choices, [], `the usage chunk must have empty choices: ${JSON.stringify(last)}`);
    assert.ok(last.usage.completion_tokens > 0, JSON.stringify(last.usage));
    assert.ok(last.usage.total_tokens >= last.usage.completion_tokens, JSON.stringify(last.usage));
  });

  test('a bad key is AuthenticationError (401)', { skip: needsGateway }, async () => {
    let e = await rejectsWith(modelIds(sdk(`sk-${hex(24)}`)), OpenAI.AuthenticationError, 'models.list with a bad key');
    assert.equal(e.status, 401);
    e = await rejectsWith(ask(sdk(`sk-${hex(24)}`)), OpenAI.AuthenticationError, 'completion with a bad key');
    assert.equal(e.status, 401);
    assertOpenAIErrorShape(e);
  });

  test('an unknown model is NotFoundError (404)', { skip: needsGateway }, async () => {
    const e = await rejectsWith(
      client.chat.completions.create({ model: 'no-such-model', messages: MESSAGES }),
      OpenAI.NotFoundError,
      'completion with model no-such-model',
    );
    assert.equal(e.status, 404);
    assertOpenAIErrorShape(e);
  });

  test('a user with no money and no free messages is refused (402 or 429)', { skip: needsGateway }, async (t) => {
    const user = await register(); // deliberately not credited
    const key = (await createKey(user.token, 'sdk-node-broke')).key;
    assert.equal((await me(user.token)).balance_micros, 0, 'a new user should start with no money');
    if (!(await spendFreeMessages(sdk(key), user.token))) {
      t.skip(`the gateway grants more than ${MAX_FREE_TO_SPEND} free messages a day; run it with free_messages_per_day = 0`);
      return;
    }
    const broke = sdk(key, 0);
    let e;
    for (let attempt = 0; attempt < 4; attempt++) {
      e = await rejectsWith(ask(broke), OpenAI.APIError, 'completion with zero balance');
      // A 429 must be the quota refusal, not the rate limiter: retry those.
      if (e.status === 429 && ['rate_limited', 'rate_limit_exceeded'].includes(String(e.code))) {
        await sleep(Math.min(Number(e.headers?.get?.('retry-after') || 1), 3) * 1000);
        continue;
      }
      break;
    }
    assert.ok([402, 429].includes(e.status), `expected 402 or 429, got ${e.status}: ${JSON.stringify(e.error)}`);
    if (e.status === 429) {
      assert.ok(e instanceof OpenAI.RateLimitError);
      assert.ok(
        !['rate_limited', 'rate_limit_exceeded'].includes(String(e.code)),
        `still rate limited after retries, not a quota refusal: ${JSON.stringify(e.error)}`,
      );
    }
    assertOpenAIErrorShape(e);
    assert.equal((await me(user.token)).balance_micros, 0, 'a refused request changed the balance');
  });

  test('a deleted key is AuthenticationError on the next request', { skip: needsGateway }, async () => {
    const { token } = account;
    const created = await createKey(token, 'sdk-node-doomed');
    const doomed = sdk(created.key);
    assert.ok((await modelIds(doomed)).includes(MODEL), 'the new key should work before deletion');

    const raw = JSON.stringify(await api('GET', '/api/keys', { token }));
    assert.ok(!raw.includes(created.key), 'GET /api/keys must not show the full key again');
    let listed = (await listKeys(token)).map((k) => String(k.id));
    assert.ok(listed.includes(String(created.id)), `new key ${created.id} not in GET /api/keys: ${listed}`);

    await api('DELETE', `/api/keys/${created.id}`, { token });
    listed = (await listKeys(token)).map((k) => String(k.id));
    assert.ok(!listed.includes(String(created.id)), `deleted key ${created.id} still listed: ${listed}`);

    const e = await rejectsWith(modelIds(doomed), OpenAI.AuthenticationError, 'models.list with a deleted key');
    assert.equal(e.status, 401);
    await rejectsWith(ask(doomed), OpenAI.AuthenticationError, 'completion with a deleted key');
    assert.ok((await modelIds(sdk(account.key))).includes(MODEL), 'the other key must keep working');
  });

  test('the balance decreased after the completions', { skip: needsGateway }, async (t) => {
    const { token } = account;
    if (account.freeAtStart === 0) {
      const now = (await me(token)).balance_micros;
      assert.ok(
        now < account.balanceAtStart,
        `balance did not decrease over the completions above: ${account.balanceAtStart} -> ${now} micros (is the model's price zero?)`,
      );
    }
    if (!(await spendFreeMessages(client, token))) {
      t.skip(`more than ${MAX_FREE_TO_SPEND} free messages left; run the gateway with free_messages_per_day = 0`);
      return;
    }
    const before = (await me(token)).balance_micros;
    assert.ok((await ask(client)).choices[0].message.content);
    assert.ok((await streamText(client)).text);
    const deadline = Date.now() + 5000;
    let after;
    for (;;) {
      // settlement may trail the response by a moment
      after = (await me(token)).balance_micros;
      if (after < before || Date.now() > deadline) break;
      await sleep(200);
    }
    assert.ok(after < before, `balance did not decrease: ${before} -> ${after} micros`);
    assert.ok(after > 0);
  });
});
