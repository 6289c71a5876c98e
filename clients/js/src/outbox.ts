import { QueueFullError } from "./errors.js";

/** Where an acknowledged publication went in its room's sequence. */
export interface PublishAck {
  epoch: string;
  offset: number;
}

/** One publication not yet acknowledged. */
export interface Publication {
  readonly room: string;
  readonly data: unknown;
  /** Kept across re-sends: the server publishes a repeated msg_id once. */
  readonly msgId: string;
  /** Sent on the current connection (and so not to be sent again on it). */
  sent: boolean;
  readonly resolve: (ack: PublishAck) => void;
  readonly reject: (error: Error) => void;
}

/**
 * The publications not yet acknowledged, in the order they were made, up
 * to `limit` of them. Each stays until its `ok` or `err`: one sent on a
 * connection that dropped goes out again, with the same msg_id, on the next.
 */
export class Outbox {
  readonly #entries: Publication[] = [];

  constructor(readonly limit: number) {
    if (!(Number.isInteger(limit) && limit > 0)) {
      throw new RangeError(`maxQueue must be a positive integer, got ${limit}`);
    }
  }

  get size(): number {
    return this.#entries.length;
  }

  /** Queues a publication; throws QueueFullError at the limit. */
  add(room: string, data: unknown, msgId: string = newMsgId()): { entry: Publication; acked: Promise<PublishAck> } {
    if (this.#entries.length >= this.limit) throw new QueueFullError(this.limit);
    let resolve!: (ack: PublishAck) => void;
    let reject!: (error: Error) => void;
    const acked = new Promise<PublishAck>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    const entry: Publication = { room, data, msgId, sent: false, resolve, reject };
    this.#entries.push(entry);
    return { entry, acked };
  }

  /** The publications still to send on the current connection, oldest first. */
  unsent(): Publication[] {
    return this.#entries.filter((e) => !e.sent);
  }

  /** The connection dropped: everything unacknowledged must go out again. */
  connectionLost(): void {
    for (const e of this.#entries) e.sent = false;
  }

  settle(entry: Publication, outcome: { ack: PublishAck } | { error: Error }): void {
    const i = this.#entries.indexOf(entry);
    if (i < 0) return;
    this.#entries.splice(i, 1);
    if ("ack" in outcome) entry.resolve(outcome.ack);
    else entry.reject(outcome.error);
  }

  /** Rejects and drops every publication (the client is closing). */
  failAll(error: Error): void {
    for (const e of this.#entries.splice(0)) e.reject(error);
  }
}

/**
 * A msg_id unique enough to never meet another within a room's history:
 * a random UUID. `randomUUID` exists only in secure contexts (https, or
 * localhost) in browsers; `getRandomValues` is everywhere.
 */
export function newMsgId(): string {
  const c = (globalThis as unknown as { crypto: Crypto }).crypto;
  if (c.randomUUID) return c.randomUUID();
  const bytes = c.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

interface Crypto {
  randomUUID?: () => string;
  getRandomValues: (array: Uint8Array) => Uint8Array;
}
