// The page's frame codec: builds the frames it sends and turns every received frame into a
// plain `Incoming` value, on the flatc-generated code (clients/bindings/typescript/generated,
// never edited by hand) and the npm `flatbuffers` runtime. The TypeScript runtime has no
// verifier, so (docs/PROTOCOL.md, Framing) a frame longer than `max_frame` or one that throws
// while being read is reported as `bad`, and the caller treats the connection as broken.
import * as flatbuffers from 'flatbuffers';

import {
  Ack, Body, Cursor, Error as ErrorFrame, Frame, Hello, History, HistoryPage, Message, Ping, Pong,
  Presence, Send, SendOk, Sync, SyncDone, Welcome,
} from '../../bindings/typescript/generated/natter/wire.js';

/** The protocol version this page speaks (docs/PROTOCOL.md, Compatibility). */
export const PROTOCOL_VERSION = 1;
/** Before the `Welcome` every answer to `Hello` fits in this many bytes (512 KiB). */
export const DEFAULT_MAX_FRAME = 512 * 1024;
/** The most Unicode scalar values a message may have (docs/PROTOCOL.md, `Send`). */
export const MAX_TEXT_CHARS = 100_000;
/** Bytes a `Send` frame needs besides its text's UTF-8 (prefix, tables, ids); generous. */
export const SEND_OVERHEAD = 128;

/** One stored message, as the page keeps it. */
export interface WireMessage {
  chatId: bigint;
  seq: bigint;
  sender: bigint;
  serverTsMs: bigint;
  clientMsgId: bigint;
  text: string;
}

/** A received frame, decoded. `requestId` is 0 on pushes. */
export type Incoming =
  | { kind: 'welcome'; requestId: bigint; userId: bigint; heartbeatMs: number; maxFrame: number }
  | { kind: 'sendOk'; requestId: bigint; clientMsgId: bigint; chatId: bigint; seq: bigint; serverTsMs: bigint }
  | { kind: 'message'; requestId: bigint; message: WireMessage }
  | { kind: 'syncDone'; requestId: bigint; heads: Array<[bigint, bigint]> }
  | { kind: 'historyPage'; requestId: bigint; chatId: bigint; messages: WireMessage[]; hasMore: boolean }
  | { kind: 'presence'; userId: bigint; online: boolean; lastSeenMs: bigint }
  | { kind: 'ping'; nonce: bigint }
  | { kind: 'pong'; nonce: bigint }
  | { kind: 'error'; requestId: bigint; code: number; message: string }
  | { kind: 'resync' }
  | { kind: 'other'; body: string }
  | { kind: 'bad'; reason: string };

/** Wire error codes the page acts on (docs/PROTOCOL.md, Error codes; `ErrorCode` in natter-wire). */
export const ErrorCode = {
  invalidToken: 4,
  notMember: 7,
  emptyText: 8,
  textTooLong: 9,
  unknownChat: 11,
  rateLimited: 12,
  tokenRevoked: 15,
  shuttingDown: 16,
  overloaded: 21,
} as const;

function finish(b: flatbuffers.Builder, requestId: bigint, type: Body, body: flatbuffers.Offset): Uint8Array {
  Frame.finishSizePrefixedFrameBuffer(b, Frame.createFrame(b, requestId, type, body));
  return b.asUint8Array();
}

/** The first frame of a connection; `sync_first` holds live pushes back until our `Sync`. */
export function hello(requestId: bigint, token: string, device: string): Uint8Array {
  const b = new flatbuffers.Builder(256);
  const body = Hello.createHello(b, b.createString(token), b.createString(device), PROTOCOL_VERSION, true, false);
  return finish(b, requestId, Body.Hello, body);
}

/** "Send me everything after these cursors" (chat id → highest seq held). */
export function sync(requestId: bigint, cursors: Array<[bigint, bigint]>): Uint8Array {
  const b = new flatbuffers.Builder(64 + 16 * cursors.length);
  Sync.startCursorsVector(b, cursors.length);
  for (const [chat, seq] of [...cursors].reverse()) Cursor.createCursor(b, chat, seq);
  const vector = b.endVector();
  return finish(b, requestId, Body.Sync, Sync.createSync(b, vector));
}

/** A message to store; retried after any failure with the same `clientMsgId`. */
export function send(requestId: bigint, chatId: bigint, clientMsgId: bigint, text: string): Uint8Array {
  const b = new flatbuffers.Builder(SEND_OVERHEAD + text.length * 3);
  const body = Send.createSend(b, chatId, clientMsgId, b.createString(text));
  return finish(b, requestId, Body.Send, body);
}

/** Messages of `chatId` older than `beforeSeq` (0: from the newest), newest first. */
export function history(requestId: bigint, chatId: bigint, beforeSeq: bigint, limit: number): Uint8Array {
  const b = new flatbuffers.Builder(64);
  return finish(b, requestId, Body.History, History.createHistory(b, chatId, beforeSeq, limit));
}

/** This device holds `chatId` up to `seq` (stored as its cursor). */
export function ack(chatId: bigint, seq: bigint): Uint8Array {
  const b = new flatbuffers.Builder(64);
  return finish(b, 0n, Body.Ack, Ack.createAck(b, chatId, seq));
}

/** A keepalive. */
export function ping(requestId: bigint, nonce: bigint): Uint8Array {
  const b = new flatbuffers.Builder(64);
  return finish(b, requestId, Body.Ping, Ping.createPing(b, nonce));
}

/** The answer to a server `Ping`. */
export function pong(nonce: bigint): Uint8Array {
  const b = new flatbuffers.Builder(64);
  return finish(b, 0n, Body.Pong, Pong.createPong(b, nonce));
}

/** UTF-8 length of `text`, in bytes. */
export function utf8Length(text: string): number {
  return new TextEncoder().encode(text).length;
}

/** Unicode scalar values in `text` (what natterd's 100,000-character limit counts). */
export function charCount(text: string): number {
  let n = 0;
  for (const _ of text) n++;
  return n;
}

/**
 * Why `text` cannot be sent on a connection whose `Welcome` said `maxFrame`, or null when it
 * can. Checked before sending, so the user sees the reason at once and nothing is queued.
 */
export function refuseText(text: string, maxFrame: number): string | null {
  if (text.length === 0) return 'The message is empty: type something first.';
  const chars = charCount(text);
  if (chars > MAX_TEXT_CHARS) {
    return `The message has ${chars} characters; natter takes at most ${MAX_TEXT_CHARS}.`;
  }
  const bytes = utf8Length(text);
  if (bytes + SEND_OVERHEAD > maxFrame) {
    return `The message is ${bytes} bytes of UTF-8; this server takes frames of at most ${maxFrame} bytes.`;
  }
  return null;
}

function message(m: Message): WireMessage {
  return {
    chatId: m.chatId(),
    seq: m.seq(),
    sender: m.sender(),
    serverTsMs: m.serverTsMs(),
    clientMsgId: m.clientMsgId(),
    text: m.text() ?? '',
  };
}

/** Decodes one received WebSocket message (one size-prefixed frame). Never throws. */
export function decode(data: ArrayBuffer, maxFrame: number): Incoming {
  if (data.byteLength > maxFrame) return { kind: 'bad', reason: `frame of ${data.byteLength} bytes over max_frame` };
  if (data.byteLength < 8) return { kind: 'bad', reason: `frame of ${data.byteLength} bytes is too short` };
  const bytes = new Uint8Array(data);
  const len = bytes[0] | (bytes[1] << 8) | (bytes[2] << 16) | (bytes[3] << 24);
  if (len + 4 !== bytes.length) return { kind: 'bad', reason: 'length prefix does not match the message' };
  try {
    const f = Frame.getSizePrefixedRootAsFrame(new flatbuffers.ByteBuffer(bytes));
    const requestId = f.requestId();
    switch (f.bodyType()) {
      case Body.Welcome: {
        const w: Welcome = f.body(new Welcome());
        return {
          kind: 'welcome', requestId, userId: w.userId(), heartbeatMs: w.heartbeatIntervalMs(),
          maxFrame: w.maxFrame() || DEFAULT_MAX_FRAME,
        };
      }
      case Body.SendOk: {
        const ok: SendOk = f.body(new SendOk());
        return {
          kind: 'sendOk', requestId, clientMsgId: ok.clientMsgId(), chatId: ok.chatId(), seq: ok.seq(),
          serverTsMs: ok.serverTsMs(),
        };
      }
      case Body.Message:
        return { kind: 'message', requestId, message: message(f.body(new Message())) };
      case Body.SyncDone: {
        const d: SyncDone = f.body(new SyncDone());
        const heads: Array<[bigint, bigint]> = [];
        for (let i = 0; i < d.headsLength(); i++) {
          const c = d.heads(i, new Cursor());
          if (c) heads.push([c.chatId(), c.seq()]);
        }
        return { kind: 'syncDone', requestId, heads };
      }
      case Body.HistoryPage: {
        const p: HistoryPage = f.body(new HistoryPage());
        const messages: WireMessage[] = [];
        for (let i = 0; i < p.messagesLength(); i++) {
          const m = p.messages(i, new Message());
          if (m) messages.push(message(m));
        }
        return { kind: 'historyPage', requestId, chatId: p.chatId(), messages, hasMore: p.hasMore() };
      }
      case Body.Presence: {
        const p: Presence = f.body(new Presence());
        return { kind: 'presence', userId: p.userId(), online: p.online(), lastSeenMs: p.lastSeenMs() };
      }
      case Body.Ping:
        return { kind: 'ping', nonce: (f.body(new Ping()) as Ping).nonce() };
      case Body.Pong:
        return { kind: 'pong', nonce: (f.body(new Pong()) as Pong).nonce() };
      case Body.Error: {
        const e: ErrorFrame = f.body(new ErrorFrame());
        return { kind: 'error', requestId: e.requestId() || requestId, code: e.code(), message: e.message() ?? '' };
      }
      case Body.Resync:
        return { kind: 'resync' };
      default:
        return { kind: 'other', body: Body[f.bodyType()] ?? String(f.bodyType()) };
    }
  } catch (e) {
    return { kind: 'bad', reason: `unreadable frame: ${String(e)}` };
  }
}
