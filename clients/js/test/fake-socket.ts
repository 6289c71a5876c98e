import { decodeMulti, encode } from "@msgpack/msgpack";
import type { SocketLike } from "../src/socket.js";

/**
 * A WebSocket the test plays the server of: it records the commands the
 * client sends and delivers the events the test writes.
 */
export class FakeSocket implements SocketLike {
  static all: FakeSocket[] = [];

  binaryType = "blob";
  onopen: ((event: never) => void) | null = null;
  onmessage: ((event: { data: unknown }) => void) | null = null;
  onclose: ((event: { code: number; reason: string }) => void) | null = null;
  onerror: ((event: never) => void) | null = null;
  readonly sent: Record<string, unknown>[] = [];
  closedByClient: number | undefined;

  constructor(
    readonly url: string,
    readonly protocols?: string | string[],
  ) {
    FakeSocket.all.push(this);
  }

  static reset(): void {
    FakeSocket.all = [];
  }

  static last(): FakeSocket {
    const sock = FakeSocket.all.at(-1);
    if (!sock) throw new Error("no socket opened yet");
    return sock;
  }

  send(data: Uint8Array): void {
    for (const value of decodeMulti(data)) this.sent.push(value as Record<string, unknown>);
  }

  close(code?: number): void {
    this.closedByClient = code ?? 1005;
  }

  /** Server side: one binary message holding `events`, concatenated. */
  deliver(...events: Record<string, unknown>[]): void {
    const parts = events.map((e) => encode(e));
    const message = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0));
    let at = 0;
    for (const p of parts) {
      message.set(p, at);
      at += p.byteLength;
    }
    this.onmessage?.({ data: message.buffer });
  }

  /** Server side: a binary message as is (e.g. bytes that do not decode). */
  deliverRaw(bytes: Uint8Array): void {
    this.onmessage?.({ data: bytes.buffer });
  }

  hello(user = "alice"): void {
    this.deliver({ op: "hello", v: 1, conn: "c1", node: "node-1", user, heartbeat_ms: 30000, max_frame: 65536 });
  }

  /** Server side: the connection ends. */
  drop(code = 1006, reason = ""): void {
    this.onclose?.({ code, reason });
  }

  /** The commands sent with this op, in order. */
  commands(op: string): Record<string, unknown>[] {
    return this.sent.filter((c) => c.op === op);
  }
}
