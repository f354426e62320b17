// The browser test of natter's web page (run by server/tests/browser.rs; set up by
// scripts/browser-env.sh). It starts the real natterd ($NATTERD: the built binary) on free
// loopback ports with a temporary data dir, creates two friends over the HTTP API, and drives
// two headless Debian-chromium pages (separate browser contexts, so separate storage) through
// the page natterd serves at `/`:
//
//   1. both log in through the form and see each other online;
//   2. alice opens the DM by clicking bob, they chat; both pages show the same messages, in seq
//      order, each once; bob's chat list showed the unread count first; an empty and an
//      over-long message are refused under the input box before anything is sent;
//   3. natterd is killed (-9): both pages show an error in the status bar, not a blank page;
//      alice writes a message meanwhile (kept in her outbox); natterd starts again on the same
//      ports and data dir, with `--ws-origin` naming only the side-port's origin; both pages
//      reconnect and sync; alice's kept message arrives once;
//   4. alice sends 60 more; bob reloads (the token is in localStorage), sees the newest 50 and
//      pages back with "Load older" to the first message: every seq once, gapless;
//   5. bob's page closes: alice sees bob go offline.
//
// Screenshots of both pages at each step go to $ARTIFACTS (default target/browser-artifacts).
// Every wait is on a condition with a deadline; the whole run has a 150 s budget.
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

import { chromium } from 'playwright-core';

const NATTERD = process.env.NATTERD;
const ARTIFACTS = process.env.ARTIFACTS ?? join(process.cwd(), 'target/browser-artifacts');
const WAIT = 30_000;
const PASSWORD = 'correct horse battery';
// The launch flags DEPENDENCIES.md names: no sandbox (root in a container), no GPU, no
// shared-memory assumptions, and nothing that reaches for outside hosts.
const CHROMIUM_ARGS = [
  '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];

if (!NATTERD) {
  console.error('two-friends.mjs: set NATTERD to the natterd binary');
  process.exit(2);
}
mkdirSync(ARTIFACTS, { recursive: true });
const work = mkdtempSync(join(tmpdir(), 'natter-browser-'));
let natterd = null;
let browser = null;
/** The pages open, with whose they are, for the failure report. */
const pages = [];
/** Script errors and Content-Security-Policy violations seen on any page: the test fails on any. */
const pageFaults = [];

function log(...args) {
  console.log(`[browser-test ${new Date().toISOString().slice(11, 23)}]`, ...args);
}

/** Starts natterd with `ports` (`{http, tcp, ws}`, 0 = free) on the test's data dir; resolves to its endpoints. */
function startNatterd(ports, extra = []) {
  const args = [
    '--data-dir', join(work, 'data'), '--cores', '2',
    '--http-port', String(ports.http), '--tcp-port', String(ports.tcp), '--ws-port', String(ports.ws),
    '--tls-port', 'off', '--quic-port', 'off', '--argon2-memory-kib', '8', '--argon2-iterations', '1',
    '--auth-rate-limit', '100000', '--user-write-rate-limit', '100000', '--presence-grace', '0s',
    ...extra,
  ];
  const child = spawn(NATTERD, args, { stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, NATTER_LOG: process.env.NATTER_LOG ?? 'warn' } });
  natterd = child;
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('natterd did not print NATTERD_READY within 60 s')), 60_000);
    child.on('exit', (code, signal) => reject(new Error(`natterd exited early (${code ?? signal})`)));
    createInterface({ input: child.stdout }).on('line', (line) => {
      if (!line.startsWith('NATTERD_READY ')) return;
      clearTimeout(timer);
      resolve(JSON.parse(line.slice('NATTERD_READY '.length)));
    });
  });
}

function killNatterd() {
  if (!natterd || natterd.exitCode !== null || natterd.signalCode !== null) return Promise.resolve();
  const child = natterd;
  return new Promise((resolve) => {
    child.once('exit', () => resolve());
    child.kill('SIGKILL');
  });
}

async function http(base, method, path, body, token) {
  const headers = { 'Content-Type': 'application/json' };
  if (token) headers.Authorization = `Bearer ${token}`;
  const res = await fetch(base + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.text();
  if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

function fail(message) {
  throw new Error(message);
}

function assertEqual(actual, expected, what) {
  const a = JSON.stringify(actual);
  const e = JSON.stringify(expected);
  if (a !== e) fail(`${what}:\n  expected ${e}\n  got      ${a}`);
}

async function shoot(page, name) {
  await page.screenshot({ path: join(ARTIFACTS, `${name}.png`), fullPage: true });
}

/** The open conversation as the page shows it: [{seq, sender, text}] in display order (sent, not pending). */
function conversation(page) {
  return page.$$eval('#messages li.message[data-seq]', (items) =>
    items.map((li) => ({
      seq: Number(li.dataset.seq),
      sender: li.dataset.sender,
      text: li.querySelector('.text')?.textContent ?? '',
    })),
  );
}

/** Waits until the open conversation has a message with `text`. */
async function waitForText(page, text) {
  await page.waitForFunction(
    (t) => [...document.querySelectorAll('#messages li.message[data-seq] .text')].some((e) => e.textContent === t),
    text,
    { timeout: WAIT },
  );
}

async function waitForPresence(page, username, online) {
  await page.waitForFunction(
    ([u, o]) => document.querySelector(`#friends li[data-username="${u}"]`)?.dataset.online === o,
    [username, String(online)],
    { timeout: WAIT },
  );
}

async function waitForStatus(page, state, pattern) {
  await page.waitForFunction(
    ([s, p]) => {
      const el = document.getElementById('status');
      return el?.dataset.state === s && new RegExp(p).test(el.textContent ?? '');
    },
    [state, pattern],
    { timeout: WAIT },
  );
}

async function login(page, base, username) {
  await page.goto(base + '/');
  await page.waitForSelector('#login-form', { state: 'visible', timeout: WAIT });
  await page.fill('#username', username);
  await page.fill('#password', PASSWORD);
  await page.click('#login-btn');
  await waitForStatus(page, 'ok', `Connected as ${username}`);
}

async function send(page, text) {
  await page.fill('#text', text);
  await page.press('#text', 'Enter');
}

/** Every message is shown once, in strictly increasing seq, with no gap from the first shown. */
function checkOrder(list, what) {
  for (let i = 1; i < list.length; i++) {
    if (list[i].seq !== list[i - 1].seq + 1) fail(`${what}: seq ${list[i - 1].seq} is followed by ${list[i].seq}`);
  }
  const texts = list.map((m) => m.text);
  if (new Set(texts).size !== texts.length) fail(`${what}: a message is shown twice: ${JSON.stringify(texts)}`);
}

async function main() {
  const endpoints = await startNatterd({ http: 0, tcp: 0, ws: 0 });
  const base = `http://${endpoints.http}`;
  log('natterd up', JSON.stringify(endpoints));

  // Two friends, made over the HTTP API.
  for (const name of ['alice', 'bob']) await http(base, 'POST', '/v1/signup', { username: name, password: PASSWORD });
  const setup = await http(base, 'POST', '/v1/login', { username: 'alice', password: PASSWORD, device_name: 'setup' });
  const bobSetup = await http(base, 'POST', '/v1/login', { username: 'bob', password: PASSWORD, device_name: 'setup' });
  await http(base, 'POST', '/v1/friends/requests', { username: 'bob' }, setup.token);
  await http(base, 'POST', `/v1/friends/requests/${setup.user_id}/accept`, undefined, bobSetup.token);

  browser = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true, args: CHROMIUM_ARGS });
  const contexts = [await browser.newContext(), await browser.newContext()];
  const [a, b] = await Promise.all(contexts.map((c) => c.newPage()));
  pages.push([a, 'alice'], [b, 'bob']);
  for (const [page, name] of pages) {
    page.on('pageerror', (e) => {
      log(`${name}'s page threw: ${e.message}`);
      pageFaults.push(`${name}'s page threw: ${e.message}`);
    });
    page.on('console', (m) => {
      if (!['error', 'warning'].includes(m.type())) return;
      log(`${name}'s console: ${m.text()}`);
      // natterd serves the page with a Content-Security-Policy: anything it blocks is a bug.
      if (/Content Security Policy/i.test(m.text())) pageFaults.push(`${name}: ${m.text()}`);
    });
  }

  // 1. Log in through the form; each sees the other online.
  await login(a, base, 'alice');
  await login(b, base, 'bob');
  await waitForPresence(a, 'bob', true);
  await waitForPresence(b, 'alice', true);
  log('1. both logged in and see each other online');

  // 2. alice opens the DM by clicking bob; they chat.
  await a.click('#friends li[data-username="bob"]');
  await a.waitForSelector('#conversation', { state: 'visible', timeout: WAIT });
  await send(a, 'hi bob!');
  await waitForText(a, 'hi bob!');
  // bob's chat list learns of the new DM from the push and counts it unread.
  await b.waitForFunction(() => document.querySelector('#chats li[data-name="alice"] .unread')?.textContent === '1', null, { timeout: WAIT });
  await shoot(b, '2-bob-unread');
  await b.click('#chats li[data-name="alice"]');
  await waitForText(b, 'hi bob!');
  const script = [
    [b, 'hello alice'], [a, 'how are you?'], [b, 'fine, thanks'], [a, 'see you in the browser test'],
  ];
  for (const [page, text] of script) {
    await send(page, text);
    await waitForText(a, text);
    await waitForText(b, text);
  }
  const chatA = await conversation(a);
  const chatB = await conversation(b);
  assertEqual(chatA, chatB, 'both pages show the same conversation');
  assertEqual(chatA.map((m) => [m.seq, m.sender, m.text]), [
    [1, 'alice', 'hi bob!'], [2, 'bob', 'hello alice'], [3, 'alice', 'how are you?'],
    [4, 'bob', 'fine, thanks'], [5, 'alice', 'see you in the browser test'],
  ], 'the conversation in seq order');
  await b.waitForFunction(() => document.querySelector('#chats li[data-name="alice"] .unread')?.textContent === '0', null, { timeout: WAIT });
  await shoot(a, '2-alice-chat');
  await shoot(b, '2-bob-chat');
  log('2. chatted: both pages show seq 1..5 in order');

  // Bad input is refused under the input box before anything is sent.
  for (const [text, why] of [['   ', 'empty'], ['x'.repeat(100_001), 'at most 100000']]) {
    await send(a, text);
    await a.waitForFunction(
      (w) => { const e = document.getElementById('compose-error'); return !!e && !e.hidden && e.textContent.includes(w); },
      why,
      { timeout: WAIT },
    );
    if ((await a.$$('#messages li.message.pending')).length !== 0) fail(`a refused text (${why}) was queued`);
  }
  await shoot(a, '2-alice-refused-too-long');
  assertEqual((await conversation(a)).length, 5, 'nothing more was stored after the refusals');
  log('2. empty and over-long messages refused before sending');

  // 3. natterd dies: a clear error on both pages; alice writes meanwhile; natterd comes back.
  await killNatterd();
  await waitForStatus(a, 'error', 'natterd');
  await waitForStatus(b, 'error', 'natterd');
  for (const page of [a, b]) {
    // Readable, not a blank bar: the text's colour differs from the bar's.
    const style = await page.$eval('#status', (e) => [getComputedStyle(e).color, getComputedStyle(e).backgroundColor, e.textContent]);
    if (style[0] === style[1] || !style[2]) fail(`the error in the status bar is not readable: ${JSON.stringify(style)}`);
  }
  await send(a, 'written while natterd was down');
  await a.waitForSelector('#messages li.message.pending', { timeout: WAIT });
  await a.waitForFunction(
    () => { const e = document.getElementById('compose-error'); return !!e && !e.hidden && e.textContent.includes('Not connected'); },
    null,
    { timeout: WAIT },
  );
  await shoot(a, '3-alice-natterd-down');
  await shoot(b, '3-bob-natterd-down');
  log('3. natterd killed: both pages show', JSON.stringify(await a.textContent('#status')));
  const [, httpPort] = endpoints.http.split(':');
  const [, tcpPort] = endpoints.tcp.split(':');
  const [, wsPort] = endpoints.ws.split(':');
  // This time with a WebSocket Origin allow-list naming only the side-port's origin: the
  // page's socket carries that origin, so it is let in.
  await startNatterd({ http: httpPort, tcp: tcpPort, ws: wsPort }, ['--ws-origin', `http://${endpoints.http}`]);
  await waitForStatus(a, 'ok', 'Connected as alice');
  await waitForStatus(b, 'ok', 'Connected as bob');
  await waitForText(b, 'written while natterd was down');
  await waitForText(a, 'written while natterd was down');
  await send(b, 'welcome back');
  // Bob's own copy gets its seq from his SendOk, which may land after alice's live push.
  await waitForText(b, 'welcome back');
  await waitForText(a, 'welcome back');
  const afterA = await conversation(a);
  const afterB = await conversation(b);
  assertEqual(afterA, afterB, 'both pages agree after the restart');
  assertEqual(afterA.map((m) => m.seq), [1, 2, 3, 4, 5, 6, 7], 'seqs after the restart, each once');
  checkOrder(afterA, 'after the restart');
  if ((await a.$$('#messages li.message.pending')).length !== 0) fail('alice still shows a pending message');
  await shoot(a, '3-alice-reconnected');
  await shoot(b, '3-bob-reconnected');
  log('3. natterd restarted: both reconnected and synced, seq 1..7 once each');

  // 4. History paging: 60 more messages, bob reloads and pages back to the start.
  const total = 7 + 60;
  for (let i = 1; i <= 60; i++) await send(a, `burst ${i}`);
  await waitForText(a, 'burst 60');
  await waitForText(b, 'burst 60');
  await b.reload();
  await waitForStatus(b, 'ok', 'Connected as bob');
  await b.click('#chats li[data-name="alice"]');
  await waitForText(b, 'burst 60');
  const fresh = await conversation(b);
  if (fresh.length !== 50 || fresh[fresh.length - 1].seq !== total) {
    fail(`after a reload bob should see the newest 50 (up to ${total}), saw ${fresh.length} up to ${fresh.at(-1)?.seq}`);
  }
  await b.waitForSelector('#older', { state: 'visible', timeout: WAIT });
  await shoot(b, '4-bob-after-reload');
  while (await b.isVisible('#older')) {
    const before = (await conversation(b)).length;
    await b.click('#older');
    await b.waitForFunction(
      (n) => document.querySelectorAll('#messages li.message[data-seq]').length > n || document.getElementById('older')?.hidden,
      before,
      { timeout: WAIT },
    );
  }
  const all = await conversation(b);
  assertEqual(all.map((m) => m.seq), Array.from({ length: total }, (_, i) => i + 1), 'bob paged back through the whole history');
  checkOrder(all, 'the whole history');
  assertEqual(all, await conversation(a), 'the paged history equals what alice saw live');
  await shoot(b, '4-bob-history');
  log(`4. bob reloaded, saw the newest 50 and paged back to seq 1 (${total} messages)`);

  // 5. bob's page closes: alice sees him go offline.
  await contexts[1].close();
  await waitForPresence(a, 'bob', false);
  await shoot(a, '5-alice-bob-offline');
  log('5. bob closed his page: alice sees him offline');
  if (pageFaults.length) fail(`the pages broke their policy or threw:\n  ${pageFaults.join('\n  ')}`);
  log('6. no script error and no Content-Security-Policy violation on either page');
}

const budget = setTimeout(() => {
  console.error('two-friends.mjs: over its 150 s budget');
  void killNatterd().finally(() => process.exit(1));
}, 150_000);

let code = 0;
try {
  await main();
  log(`passed; screenshots in ${ARTIFACTS}`);
} catch (e) {
  code = 1;
  console.error(`two-friends.mjs: FAILED: ${e.stack ?? e}`);
  // What each page showed when it failed, for the report and the artifacts.
  for (const [page, name] of pages) {
    if (page.isClosed()) continue;
    console.error(`  ${name}'s status bar: ${await page.textContent('#status').catch(() => '?')}`);
    await shoot(page, `failed-${name}`).catch(() => undefined);
  }
} finally {
  clearTimeout(budget);
  await browser?.close().catch(() => undefined);
  await killNatterd();
  rmSync(work, { recursive: true, force: true });
}
process.exit(code);
