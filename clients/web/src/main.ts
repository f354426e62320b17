// natter's web page: log in or sign up, friends with live presence, chats with unread counts, a
// conversation with history paging, live messages and sending, over WebSocket. Served by natterd
// from its HTTP side-port at `/` (server/src/http/web.rs embeds dist/, built from this file by
// scripts/build-web.sh). The side-port (same origin) does accounts, friends and chats; the
// WebSocket URL comes from `GET /v1/endpoints`. Every (re)connect follows docs/PROTOCOL.md's
// reconnect recipe (`Hello{sync_first}` + `Sync` from the cursors held), and messages are kept
// per chat keyed by `seq`, so a reconnect shows each message once and in order. When natterd or
// the socket is down the status bar says so in words, and the page retries with backoff.
import { ApiError, Unreachable, describe, request } from './http';
import * as wire from './wire';
import type { Incoming, WireMessage } from './wire';

/** What login leaves in localStorage: enough to reconnect after a reload. */
interface Session {
  token: string;
  userId: number;
  deviceId: number;
  username: string;
}

interface Friend {
  id: number;
  username: string;
  /** null until the first Presence (the snapshot after Welcome) arrives. */
  online: boolean | null;
  lastSeenMs: number;
}

interface Chat {
  id: bigint;
  kind: string;
  name: string;
  /** The chat's newest seq as far as the page knows (GET /v1/chats, SyncDone, messages). */
  lastSeq: bigint;
  /** The user's read marker (GET /v1/chats, POST /v1/chats/{id}/read). */
  readSeq: bigint;
  /** Messages held, by seq: a seq is shown at most once, whatever arrives twice. */
  messages: Map<bigint, WireMessage>;
  /** Every seq in (start, held] is held; the next Sync asks for what comes after. null: not synced yet. */
  held: bigint | null;
  /** Highest seq acknowledged to the server with Ack. */
  acked: bigint;
  /** Older messages exist before the oldest held (from HistoryPage; true until a page says no). */
  hasMore: boolean;
  historyPending: boolean;
}

interface Outgoing {
  chatId: bigint;
  clientMsgId: bigint;
  text: string;
  requestId: bigint;
}

const SESSION_KEY = 'natter.session';
/** Messages asked for per History request ("Load older"). */
const HISTORY_PAGE = 50;
/** Messages a chat shows after a fresh load: the cursor sent for a chat the page holds nothing of is `last_seq - 50`. */
const FRESH_WINDOW = 50n;
/** First and longest pause before a reconnect, in ms (doubling, with jitter). */
const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 8_000;
/** How often friends and chats are re-read over HTTP while connected (incoming friend requests have no push), in ms. */
const REFRESH_MS = 15_000;
/** A send not answered within this long is sent again with the same client_msg_id, in ms. */
const SEND_RETRY_MS = 5_000;

const $ = <T extends HTMLElement>(id: string): T => {
  const el = document.getElementById(id);
  if (!el) throw new Error(`the page lacks #${id}`);
  return el as T;
};

const state = {
  session: null as Session | null,
  friends: new Map<number, Friend>(),
  incoming: [] as Array<{ user_id: number; username: string }>,
  outgoing: [] as Array<{ user_id: number; username: string }>,
  /** Usernames of group members who are not friends, by user id. */
  names: new Map<number, string>(),
  chats: new Map<bigint, Chat>(),
  open: null as bigint | null,
  outbox: new Map<bigint, Outgoing>(),
};

// ---------------------------------------------------------------------------------------------
// The status bar: the one place that says whether the page is live.

function setStatus(kind: 'ok' | 'busy' | 'error', text: string): void {
  const el = $('status');
  el.className = `status ${kind}`;
  el.dataset.state = kind;
  el.textContent = text;
}

// ---------------------------------------------------------------------------------------------
// The WebSocket connection.

class Connection {
  private ws: WebSocket | null = null;
  private nextRequest = 1n;
  private maxFrame = wire.DEFAULT_MAX_FRAME;
  private heartbeatMs = 60_000;
  private lastHeard = 0;
  private lastSent = 0;
  private timer: number | undefined;
  private backoff = BACKOFF_MIN_MS;
  private syncRequest = 0n;
  private ackTimer: number | undefined;
  private stopped = false;
  private generation = 0;
  /** True between Welcome and the close of that socket. */
  live = false;
  /** The URL the page connects to (from /v1/endpoints), for messages. */
  url = '';

  requestId(): bigint {
    return this.nextRequest++;
  }

  start(): void {
    this.stopped = false;
    void this.connect();
  }

  stop(): void {
    this.stopped = true;
    this.generation++;
    clearTimeout(this.timer);
    this.live = false;
    this.ws?.close(1000);
    this.ws = null;
  }

  frameLimit(): number {
    return this.maxFrame;
  }

  /** Sends `bytes` if the socket is open; false otherwise (the caller keeps what must be retried). */
  write(bytes: Uint8Array): boolean {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(bytes);
    this.lastSent = Date.now();
    return true;
  }

  private async connect(): Promise<void> {
    const generation = ++this.generation;
    const session = state.session;
    if (!session || this.stopped) return;
    setStatus('busy', 'Connecting to natterd…');
    let url: string;
    try {
      const endpoints = await request('GET', '/v1/endpoints');
      url = websocketUrl(endpoints);
      // Everything the Sync's cursors need: every chat the user has now.
      await Promise.all([refreshFriends(), refreshChats()]);
    } catch (e) {
      if (generation !== this.generation) return;
      if (e instanceof ApiError && e.code === 'invalid_token') return endSession('Your session has ended: log in again.');
      return this.retry(`Cannot reach natterd: ${describe(e)}`);
    }
    if (generation !== this.generation) return;
    this.url = url;
    let ws: WebSocket;
    try {
      ws = new WebSocket(url);
    } catch (e) {
      return this.retry(`Cannot open the WebSocket ${url}: ${describe(e)}`);
    }
    ws.binaryType = 'arraybuffer';
    this.ws = ws;
    let opened = false;
    ws.onopen = () => {
      opened = true;
      this.maxFrame = wire.DEFAULT_MAX_FRAME;
      this.lastHeard = Date.now();
      this.write(wire.hello(this.requestId(), session.token, 'natter-web'));
    };
    ws.onmessage = (ev: MessageEvent) => {
      if (generation !== this.generation) return;
      this.lastHeard = Date.now();
      if (!(ev.data instanceof ArrayBuffer)) return this.broken('natterd sent a text message, not a frame');
      this.handle(wire.decode(ev.data, this.maxFrame));
    };
    ws.onclose = (ev: CloseEvent) => {
      if (generation !== this.generation) return;
      const was = this.live;
      this.live = false;
      this.ws = null;
      if (this.stopped) return;
      const why = opened
        ? `The connection to natterd was lost${ev.code ? ` (close code ${ev.code})` : ''}`
        : `Cannot connect to natterd's WebSocket at ${url}`;
      this.retry(was ? `${why}. Your messages are kept; reconnecting` : why);
    };
  }

  /** Closes a socket that misbehaved or went silent; onclose schedules the reconnect. */
  private broken(reason: string): void {
    console.warn(`natter: ${reason}`);
    this.ws?.close(4000, reason.slice(0, 100));
    if (this.ws) {
      // Browsers fire onclose after the closing handshake; do not wait for a dead peer.
      const ws = this.ws;
      this.ws = null;
      this.live = false;
      ws.onclose = null;
      this.generation++;
      this.retry(`The connection to natterd broke (${reason})`);
    }
  }

  private retry(why: string): void {
    if (this.stopped) return;
    clearTimeout(this.timer);
    const wait = Math.round(this.backoff * (0.5 + Math.random() / 2));
    this.backoff = Math.min(this.backoff * 2, BACKOFF_MAX_MS);
    setStatus('error', `${why}${/[.?!]$/.test(why) ? '' : '.'} Retrying in ${Math.max(1, Math.round(wait / 1000))} s…`);
    this.timer = window.setTimeout(() => void this.connect(), wait);
  }

  private tick(): void {
    clearTimeout(this.timer);
    if (!this.live) return;
    const now = Date.now();
    if (now - this.lastHeard > 2 * this.heartbeatMs + 5_000) return this.broken('natterd went silent');
    if (now - this.lastSent >= this.heartbeatMs / 2) this.write(wire.ping(this.requestId(), BigInt(now)));
    for (const out of state.outbox.values()) {
      if (out.requestId === 0n) this.sendOutgoing(out);
    }
    this.timer = window.setTimeout(() => this.tick(), Math.min(this.heartbeatMs / 4, SEND_RETRY_MS));
  }

  /** Sends (or re-sends, with the same client_msg_id) one queued message. */
  sendOutgoing(out: Outgoing): void {
    out.requestId = this.live ? this.requestId() : 0n;
    if (out.requestId !== 0n && !this.write(wire.send(out.requestId, out.chatId, out.clientMsgId, out.text))) {
      out.requestId = 0n;
    }
    if (out.requestId !== 0n) {
      const sent = out.requestId;
      // No answer in time: send it again (the server answers a retry with the original seq).
      window.setTimeout(() => {
        if (state.outbox.get(out.clientMsgId) === out && out.requestId === sent) out.requestId = 0n;
      }, SEND_RETRY_MS);
    }
  }

  /** Asks for everything after the cursors held (the reconnect recipe; also after a gap or Resync). */
  sync(): void {
    const cursors: Array<[bigint, bigint]> = [];
    for (const chat of state.chats.values()) {
      if (chat.held === null) {
        const start = chat.lastSeq > FRESH_WINDOW ? chat.lastSeq - FRESH_WINDOW : 0n;
        chat.held = start;
        chat.hasMore = start > 0n;
      }
      cursors.push([chat.id, chat.held]);
    }
    this.syncRequest = this.requestId();
    this.write(wire.sync(this.syncRequest, cursors));
  }

  history(chat: Chat): void {
    if (chat.historyPending || !this.live) return;
    const oldest = [...chat.messages.keys()].reduce((a, b) => (b < a ? b : a), (chat.held ?? 0n) + 1n);
    if (oldest <= 1n) {
      chat.hasMore = false;
      return render();
    }
    chat.historyPending = true;
    this.write(wire.history(this.requestId(), chat.id, oldest, HISTORY_PAGE));
  }

  private scheduleAck(): void {
    if (this.ackTimer !== undefined) return;
    this.ackTimer = window.setTimeout(() => {
      this.ackTimer = undefined;
      for (const chat of state.chats.values()) {
        if (chat.held !== null && chat.held > chat.acked && this.write(wire.ack(chat.id, chat.held))) {
          chat.acked = chat.held;
        }
      }
    }, 1_000);
  }

  private handle(frame: Incoming): void {
    switch (frame.kind) {
      case 'welcome':
        this.live = true;
        this.backoff = BACKOFF_MIN_MS;
        this.heartbeatMs = frame.heartbeatMs || 60_000;
        this.maxFrame = frame.maxFrame;
        setStatus('busy', 'Connected; catching up…');
        this.sync();
        for (const out of state.outbox.values()) this.sendOutgoing(out);
        this.tick();
        return;
      case 'message': {
        const live = frame.requestId === 0n;
        const chat = addMessage(frame.message);
        if (!chat) return;
        if (live && chat.held !== null && frame.message.seq > chat.held + 1n) {
          // A gap while connected: fetch what is missing from the cursor held.
          this.sync();
        }
        this.scheduleAck();
        return render();
      }
      case 'sendOk': {
        const out = state.outbox.get(frame.clientMsgId);
        state.outbox.delete(frame.clientMsgId);
        if (out && state.session) {
          addMessage({
            chatId: frame.chatId, seq: frame.seq, sender: BigInt(state.session.userId),
            serverTsMs: frame.serverTsMs, clientMsgId: frame.clientMsgId, text: out.text,
          });
          if (state.open === frame.chatId) markRead(frame.chatId);
        }
        this.scheduleAck();
        return render();
      }
      case 'syncDone': {
        if (frame.requestId !== this.syncRequest) return;
        let unknown = false;
        for (const [id, seq] of frame.heads) {
          const chat = state.chats.get(id);
          if (!chat) unknown = true;
          else if (seq > chat.lastSeq) chat.lastSeq = seq;
        }
        if (unknown) void refreshChats().then(() => render(), () => undefined);
        setStatus('ok', `Connected as ${state.session?.username ?? '?'}`);
        this.scheduleAck();
        if (state.open !== null) markRead(state.open);
        return render();
      }
      case 'historyPage': {
        const chat = state.chats.get(frame.chatId);
        if (!chat) return;
        chat.historyPending = false;
        for (const m of frame.messages) chat.messages.set(m.seq, m);
        chat.hasMore = frame.hasMore;
        return render({ keepScroll: true });
      }
      case 'presence': {
        const friend = state.friends.get(Number(frame.userId));
        if (!friend) {
          void refreshFriends().then(() => render(), () => undefined);
          return;
        }
        friend.online = frame.online;
        friend.lastSeenMs = Number(frame.lastSeenMs);
        return render();
      }
      case 'ping':
        this.write(wire.pong(frame.nonce));
        return;
      case 'pong':
        return;
      case 'resync':
        this.sync();
        return;
      case 'error':
        return this.handleError(frame);
      case 'other':
        return;
      case 'bad':
        return this.broken(frame.reason);
    }
  }

  private handleError(frame: Extract<Incoming, { kind: 'error' }>): void {
    if (frame.code === wire.ErrorCode.invalidToken || frame.code === wire.ErrorCode.tokenRevoked) {
      endSession(`Your session has ended (${frame.message || 'token revoked'}): log in again.`);
      return;
    }
    if (frame.requestId === this.syncRequest && frame.requestId !== 0n) {
      // A failed sync: ask again from the cursors held.
      window.setTimeout(() => this.live && this.sync(), 1_000);
      return;
    }
    const out = [...state.outbox.values()].find((o) => o.requestId === frame.requestId && o.requestId !== 0n);
    if (out) {
      const retryable = [wire.ErrorCode.rateLimited, wire.ErrorCode.overloaded, 13, 14].includes(frame.code as never);
      if (retryable) {
        out.requestId = 0n; // the next tick sends it again with the same client_msg_id
      } else {
        state.outbox.delete(out.clientMsgId);
        showComposeError(`Not sent: ${frame.message || `error ${frame.code}`}`);
        render();
      }
      return;
    }
    if (frame.code === wire.ErrorCode.shuttingDown) {
      setStatus('error', 'natterd is shutting down; reconnecting when it is back…');
      return;
    }
    if (frame.requestId === 0n) setStatus('error', `natterd: ${frame.message} (error ${frame.code})`);
  }
}

const conn = new Connection();

/** The WebSocket URL from a `/v1/endpoints` answer; an unspecified bind address means "this host". */
function websocketUrl(endpoints: any): string {
  const urls: unknown[] = Array.isArray(endpoints?.urls) ? endpoints.urls : [];
  const found = urls.find((u): u is string => typeof u === 'string' && /^wss?:\/\//.test(u));
  if (!found) throw new Error('natterd serves no WebSocket (it was started with --ws-port off)');
  const url = new URL(found);
  if (url.hostname === '0.0.0.0' || url.hostname === '[::]' || url.hostname === '::') {
    url.hostname = location.hostname;
  }
  return url.toString();
}

// ---------------------------------------------------------------------------------------------
// State changes.

function addMessage(m: WireMessage): Chat | null {
  let chat = state.chats.get(m.chatId);
  if (!chat) {
    // A chat created since the last GET /v1/chats (a friend opened a DM, a group added us).
    chat = newChat(m.chatId, 'direct', `chat #${m.chatId}`, m.seq, 0n);
    chat.held = m.seq - 1n;
    chat.hasMore = m.seq > 1n;
    state.chats.set(chat.id, chat);
    void refreshChats().then(() => render(), () => undefined);
  }
  chat.messages.set(m.seq, m);
  const mine = state.session !== null && Number(m.sender) === state.session.userId;
  if (mine && state.outbox.get(m.clientMsgId)?.chatId === m.chatId) {
    // Our own send, stored before the connection broke and brought back by the sync: the
    // retry's SendOk would only repeat its seq.
    state.outbox.delete(m.clientMsgId);
  }
  if (m.seq > chat.lastSeq) chat.lastSeq = m.seq;
  if (chat.held !== null) {
    while (chat.messages.has(chat.held + 1n)) chat.held += 1n;
  }
  if (state.open === chat.id && m.seq > chat.readSeq) markRead(chat.id);
  return chat;
}

function newChat(id: bigint, kind: string, name: string, lastSeq: bigint, readSeq: bigint): Chat {
  return {
    id, kind, name, lastSeq, readSeq, messages: new Map(), held: null, acked: 0n, hasMore: true,
    historyPending: false,
  };
}

async function refreshFriends(): Promise<void> {
  const session = state.session;
  if (!session) return;
  const list = await request('GET', '/v1/friends', session.token);
  const seen = new Set<number>();
  for (const f of list.friends as Array<{ user_id: number; username: string }>) {
    seen.add(f.user_id);
    const known = state.friends.get(f.user_id);
    if (known) known.username = f.username;
    else state.friends.set(f.user_id, { id: f.user_id, username: f.username, online: null, lastSeenMs: 0 });
  }
  for (const id of [...state.friends.keys()]) if (!seen.has(id)) state.friends.delete(id);
  state.incoming = list.incoming;
  state.outgoing = list.outgoing;
}

async function refreshChats(): Promise<void> {
  const session = state.session;
  if (!session) return;
  const list = await request('GET', '/v1/chats', session.token);
  for (const c of list.chats as Array<{ chat_id: number; kind: string; name: string; last_seq: number; read_seq: number }>) {
    const id = BigInt(c.chat_id);
    const chat = state.chats.get(id);
    if (chat) {
      chat.kind = c.kind;
      chat.name = c.name;
      if (BigInt(c.last_seq) > chat.lastSeq) chat.lastSeq = BigInt(c.last_seq);
      if (BigInt(c.read_seq) > chat.readSeq) chat.readSeq = BigInt(c.read_seq);
    } else {
      const fresh = newChat(id, c.kind, c.name, BigInt(c.last_seq), BigInt(c.read_seq));
      if (conn.live) {
        // Found after this connection's Sync (a new DM or group): live pushes bring what
        // comes next, "Load older" what came before; a gap in between triggers a Sync.
        fresh.held = fresh.lastSeq;
        fresh.hasMore = fresh.lastSeq > 0n;
      }
      state.chats.set(id, fresh);
    }
  }
}

const readTimers = new Map<bigint, number>();

/** Moves the user's read marker of `chatId` to its newest message (debounced). */
function markRead(chatId: bigint): void {
  if (readTimers.has(chatId) || document.visibilityState === 'hidden') return;
  readTimers.set(
    chatId,
    window.setTimeout(async () => {
      readTimers.delete(chatId);
      const chat = state.chats.get(chatId);
      const session = state.session;
      if (!chat || !session || chat.lastSeq <= chat.readSeq) return;
      try {
        const answer = await request('POST', `/v1/chats/${chatId}/read`, session.token, { seq: Number(chat.lastSeq) });
        const read = BigInt(answer.read_seq);
        if (read > chat.readSeq) chat.readSeq = read;
        render();
      } catch {
        // The next message or reconnect moves it again; the status bar reports a dead natterd.
      }
    }, 300),
  );
}

function endSession(message: string): void {
  conn.stop();
  localStorage.removeItem(SESSION_KEY);
  state.session = null;
  state.friends.clear();
  state.chats.clear();
  state.outbox.clear();
  state.open = null;
  showLogin(message);
}

// ---------------------------------------------------------------------------------------------
// Rendering. Only textContent is ever set from data: nothing a user typed becomes markup.

function el<K extends keyof HTMLElementTagNameMap>(tag: K, cls?: string, text?: string): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function nameOf(userId: bigint | number): string {
  const id = Number(userId);
  if (state.session && id === state.session.userId) return state.session.username;
  return state.friends.get(id)?.username ?? state.names.get(id) ?? `user #${id}`;
}

function ago(ms: number): string {
  if (ms <= 0) return 'never seen';
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return 'last seen just now';
  if (s < 3600) return `last seen ${Math.round(s / 60)} min ago`;
  if (s < 86400) return `last seen ${Math.round(s / 3600)} h ago`;
  return `last seen ${new Date(ms).toLocaleDateString()}`;
}

function unread(chat: Chat): number {
  return chat.lastSeq > chat.readSeq ? Number(chat.lastSeq - chat.readSeq) : 0;
}

function render(opts: { keepScroll?: boolean } = {}): void {
  if (!state.session) return;
  $('me').textContent = state.session.username;

  const friends = $('friends');
  friends.replaceChildren();
  const sorted = [...state.friends.values()].sort((a, b) => a.username.localeCompare(b.username));
  for (const f of sorted) {
    const li = el('li', 'friend');
    li.dataset.userId = String(f.id);
    li.dataset.username = f.username;
    li.dataset.online = f.online === null ? 'unknown' : String(f.online);
    li.append(el('span', `dot ${f.online ? 'on' : 'off'}`));
    li.append(el('span', 'name', f.username));
    li.append(el('span', 'presence', f.online === null ? '…' : f.online ? 'online' : `offline · ${ago(f.lastSeenMs)}`));
    li.title = `Chat with ${f.username}`;
    li.onclick = () => void openDm(f.id);
    friends.append(li);
  }
  if (sorted.length === 0) friends.append(el('li', 'empty', 'No friends yet: add one below.'));

  const requests = $('requests');
  requests.replaceChildren();
  for (const r of state.incoming) {
    const li = el('li', 'request');
    li.dataset.userId = String(r.user_id);
    li.append(el('span', 'name', `${r.username} wants to be friends`));
    const accept = el('button', 'accept', 'Accept');
    accept.onclick = () => void friendAction(`/v1/friends/requests/${r.user_id}/accept`, 'POST');
    li.append(accept);
    requests.append(li);
  }
  for (const r of state.outgoing) requests.append(el('li', 'request pending', `${r.username}: request sent`));

  const chats = $('chats');
  chats.replaceChildren();
  for (const chat of [...state.chats.values()].sort((a, b) => (a.id < b.id ? -1 : 1))) {
    const li = el('li', `chat${state.open === chat.id ? ' open' : ''}`);
    li.dataset.chatId = String(chat.id);
    li.dataset.name = chat.name;
    li.append(el('span', 'name', chat.kind === 'group' ? `# ${chat.name}` : chat.name));
    const n = state.open === chat.id ? 0 : unread(chat);
    const badge = el('span', `unread${n ? '' : ' zero'}`, String(n));
    badge.title = `${n} unread`;
    li.append(badge);
    li.onclick = () => openChat(chat.id);
    chats.append(li);
  }
  if (state.chats.size === 0) chats.append(el('li', 'empty', 'No chats yet: click a friend to start one.'));

  renderConversation(opts.keepScroll ?? false);
}

function renderConversation(keepScroll: boolean): void {
  const chat = state.open === null ? undefined : state.chats.get(state.open);
  $('conversation').hidden = !chat;
  $('placeholder').hidden = !!chat;
  if (!chat) return;
  $('chat-title').textContent = chat.kind === 'group' ? `# ${chat.name}` : chat.name;
  const list = $('messages');
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  const fromBottom = list.scrollHeight - list.scrollTop;
  list.replaceChildren();
  const seqs = [...chat.messages.keys()].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  const older = $<HTMLButtonElement>('older');
  older.hidden = !chat.hasMore;
  older.disabled = chat.historyPending;
  for (const seq of seqs) {
    const m = chat.messages.get(seq);
    if (!m) continue;
    const li = el('li', `message${state.session && Number(m.sender) === state.session.userId ? ' mine' : ''}`);
    li.dataset.seq = String(seq);
    li.dataset.sender = nameOf(m.sender);
    const head = el('div', 'head');
    head.append(el('span', 'sender', nameOf(m.sender)));
    head.append(el('span', 'time', new Date(Number(m.serverTsMs)).toLocaleTimeString()));
    li.append(head);
    li.append(el('div', 'text', m.text));
    list.append(li);
  }
  for (const out of state.outbox.values()) {
    if (out.chatId !== chat.id) continue;
    const li = el('li', 'message mine pending');
    li.append(el('div', 'head', 'sending…'));
    li.append(el('div', 'text', out.text));
    list.append(li);
  }
  if (seqs.length === 0 && !chat.hasMore) list.append(el('li', 'empty', 'No messages yet. Say hello!'));
  if (keepScroll) list.scrollTop = list.scrollHeight - fromBottom;
  else if (atBottom) list.scrollTop = list.scrollHeight;
}

function showComposeError(text: string): void {
  const e = $('compose-error');
  e.textContent = text;
  e.hidden = !text;
}

// ---------------------------------------------------------------------------------------------
// User actions.

function openChat(id: bigint): void {
  state.open = id;
  showComposeError('');
  const chat = state.chats.get(id);
  if (chat?.kind === 'group' && state.session) void loadMembers(id);
  markRead(id);
  render();
  const list = $('messages');
  list.scrollTop = list.scrollHeight;
  $<HTMLInputElement>('text').focus();
}

async function loadMembers(id: bigint): Promise<void> {
  const session = state.session;
  if (!session) return;
  try {
    const group = await request('GET', `/v1/groups/${id}`, session.token);
    for (const m of group.members as Array<{ user_id: number; username: string }>) state.names.set(m.user_id, m.username);
    render();
  } catch {
    // Names fall back to "user #id".
  }
}

async function openDm(userId: number): Promise<void> {
  const session = state.session;
  if (!session) return;
  try {
    const answer = await request('POST', '/v1/dms', session.token, { user_id: userId });
    const id = BigInt(answer.chat_id);
    if (!state.chats.has(id)) {
      await refreshChats();
      // A chat born after the connection's Sync: it holds nothing yet.
      const chat = state.chats.get(id);
      if (chat && chat.held === null) {
        chat.held = 0n;
        chat.hasMore = false;
      }
    }
    openChat(id);
  } catch (e) {
    setSideError(describe(e));
  }
}

async function friendAction(path: string, method: string, body?: unknown): Promise<void> {
  const session = state.session;
  if (!session) return;
  try {
    await request(method, path, session.token, body);
    setSideError('');
    await refreshFriends();
    render();
  } catch (e) {
    setSideError(describe(e));
  }
}

function setSideError(text: string): void {
  const e = $('side-error');
  e.textContent = text;
  e.hidden = !text;
}

function randomId(): bigint {
  const words = crypto.getRandomValues(new Uint32Array(2));
  const id = (BigInt(words[0]) << 32n) | BigInt(words[1]);
  return id === 0n ? 1n : id;
}

function sendText(): void {
  const input = $<HTMLTextAreaElement>('text');
  const chatId = state.open;
  if (chatId === null) return;
  const text = input.value;
  const refusal = wire.refuseText(text.trim() === '' ? '' : text, conn.frameLimit());
  if (refusal) return showComposeError(refusal);
  showComposeError('');
  const out: Outgoing = { chatId, clientMsgId: randomId(), text, requestId: 0n };
  state.outbox.set(out.clientMsgId, out);
  conn.sendOutgoing(out);
  if (!conn.live) showComposeError('Not connected: the message is kept and sent when the connection is back.');
  input.value = '';
  render();
  const list = $('messages');
  list.scrollTop = list.scrollHeight;
}

// ---------------------------------------------------------------------------------------------
// Login and start-up.

function showLogin(message = ''): void {
  $('app').hidden = true;
  $('login').hidden = false;
  const err = $('login-error');
  err.textContent = message;
  err.hidden = !message;
  setStatus('busy', 'Not logged in');
  void request('GET', '/v1/endpoints').then(
    () => setStatus('ok', 'natterd is up: log in or sign up'),
    (e) => setStatus('error', `Cannot reach natterd: ${describe(e)}`),
  );
}

let refresher: number | undefined;

function showApp(): void {
  $('login').hidden = true;
  $('app').hidden = false;
  render();
  conn.start();
  if (refresher === undefined) {
    refresher = window.setInterval(() => {
      if (conn.live) void Promise.all([refreshFriends(), refreshChats()]).then(() => render(), () => undefined);
    }, REFRESH_MS);
  }
}

async function login(signup: boolean): Promise<void> {
  const username = $<HTMLInputElement>('username').value.trim();
  const password = $<HTMLInputElement>('password').value;
  const err = $('login-error');
  err.hidden = true;
  if (!username || !password) {
    err.textContent = 'Enter a username and a password.';
    err.hidden = false;
    return;
  }
  try {
    if (signup) await request('POST', '/v1/signup', undefined, { username, password });
    const answer = await request('POST', '/v1/login', undefined, { username, password, device_name: 'web browser' });
    state.session = { token: answer.token, userId: answer.user_id, deviceId: answer.device_id, username: username.toLowerCase() };
    localStorage.setItem(SESSION_KEY, JSON.stringify(state.session));
    showApp();
  } catch (e) {
    err.textContent = e instanceof Unreachable ? `Cannot reach natterd: ${describe(e)}` : describe(e);
    err.hidden = false;
  }
}

async function logout(): Promise<void> {
  const session = state.session;
  if (session) await request('POST', '/v1/logout', session.token).catch(() => undefined);
  endSession('Logged out.');
}

function boot(): void {
  $('login-form').addEventListener('submit', (e) => {
    e.preventDefault();
    void login(false);
  });
  $('signup-btn').addEventListener('click', () => void login(true));
  $('logout-btn').addEventListener('click', () => void logout());
  $('compose').addEventListener('submit', (e) => {
    e.preventDefault();
    sendText();
  });
  $('text').addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey) {
      e.preventDefault();
      sendText();
    }
  });
  $('older').addEventListener('click', () => {
    const chat = state.open === null ? undefined : state.chats.get(state.open);
    if (chat) {
      conn.history(chat);
      render({ keepScroll: true });
    }
  });
  $('add-friend').addEventListener('submit', (e) => {
    e.preventDefault();
    const input = $<HTMLInputElement>('friend-name');
    const username = input.value.trim();
    if (!username) return setSideError('Type the username of the person to add.');
    void friendAction('/v1/friends/requests', 'POST', { username }).then(() => {
      input.value = '';
    });
  });
  document.addEventListener('visibilitychange', () => {
    if (state.open !== null) markRead(state.open);
  });
  window.addEventListener('unhandledrejection', (e) => setStatus('error', `Unexpected error: ${describe(e.reason)}`));

  const saved = localStorage.getItem(SESSION_KEY);
  if (saved) {
    try {
      const s = JSON.parse(saved);
      if (typeof s.token === 'string' && typeof s.userId === 'number' && typeof s.username === 'string') {
        state.session = s;
        return showApp();
      }
    } catch {
      // A damaged entry: log in again.
    }
    localStorage.removeItem(SESSION_KEY);
  }
  showLogin();
}

boot();
