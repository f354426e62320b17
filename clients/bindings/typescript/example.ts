// How a TypeScript client builds and reads natter frames with the generated code
// (generated/, never edited by hand) and the npm `flatbuffers` runtime. Type-checked by
// `npm run check` (scripts/check-ts-bindings.sh): if the generated API changes shape, this
// stops compiling. Protocol rules: docs/PROTOCOL.md.
import * as flatbuffers from 'flatbuffers';

import {
  Body, Cursor, Error as ErrorFrame, Frame, Hello, Message, Send, SendOk, Sync, SyncDone, Welcome,
} from './generated/natter/wire.js';

/** Finishes `body` as a size-prefixed Frame (u32 little-endian length, then the buffer). */
function frame(b: flatbuffers.Builder, requestId: bigint, type: Body, body: flatbuffers.Offset): Uint8Array {
  Frame.finishSizePrefixedFrameBuffer(b, Frame.createFrame(b, requestId, type, body));
  return b.asUint8Array();
}

/** The first frame on every connection; `syncFirst` holds live pushes back until `Sync`. */
export function hello(requestId: bigint, token: string, device: string): Uint8Array {
  const b = new flatbuffers.Builder(256);
  const body = Hello.createHello(b, b.createString(token), b.createString(device), 1, true, false);
  return frame(b, requestId, Body.Hello, body);
}

/** A Send; retry it after any failure with the same `clientMsgId`. */
export function send(requestId: bigint, chatId: bigint, clientMsgId: bigint, text: string): Uint8Array {
  const b = new flatbuffers.Builder(64 + text.length * 3);
  const body = Send.createSend(b, chatId, clientMsgId, b.createString(text));
  return frame(b, requestId, Body.Send, body);
}

/** A Sync from the cursors held (chat id -> highest seq held without a gap). */
export function sync(requestId: bigint, held: Map<bigint, bigint>): Uint8Array {
  const b = new flatbuffers.Builder(64 + 16 * held.size);
  const entries = [...held.entries()];
  Sync.startCursorsVector(b, entries.length);
  for (const [chat, seq] of entries.reverse()) Cursor.createCursor(b, chat, seq);
  const body = Sync.createSync(b, b.endVector());
  return frame(b, requestId, Body.Sync, body);
}

/** What a client does with one received frame (prefix included), `maxFrame` from Welcome. */
export function receive(bytes: Uint8Array, maxFrame: number, held: Map<bigint, bigint>): string {
  if (bytes.length > maxFrame) throw new RangeError(`frame of ${bytes.length} bytes over max_frame`);
  const f = Frame.getSizePrefixedRootAsFrame(new flatbuffers.ByteBuffer(bytes));
  switch (f.bodyType()) {
    case Body.Welcome: {
      const w: Welcome = f.body(new Welcome());
      return `welcome user ${w.userId()} max_frame ${w.maxFrame()}`;
    }
    case Body.SendOk: {
      const ok: SendOk = f.body(new SendOk());
      return `stored as ${ok.chatId()}/${ok.seq()}`;
    }
    case Body.Message: {
      const m: Message = f.body(new Message());
      const have = held.get(m.chatId()) ?? 0n;
      if (m.seq() <= have) return 'duplicate';
      if (m.seq() > have + 1n) return 'gap: send Sync with the held cursors';
      held.set(m.chatId(), m.seq());
      return `${m.sender()}: ${m.text() ?? ''}`;
    }
    case Body.SyncDone: {
      const d: SyncDone = f.body(new SyncDone());
      return `synced ${d.headsLength()} chats`;
    }
    case Body.Error: {
      const e: ErrorFrame = f.body(new ErrorFrame());
      return `error ${e.code()} for request ${e.requestId()}: ${e.message() ?? ''}`;
    }
    default:
      return `body ${Body[f.bodyType()]}`;
  }
}
