/** How the client talks to the server. */
export type Transport = "websocket" | "sse";

/**
 * Which transport the next connection attempt uses. WebSocket first; after
 * `after` consecutive WebSocket attempts that failed before the server's
 * `hello` (an upgrade refused or cut by a proxy, a connect timeout), the
 * HTTP fallback: a Server-Sent Events stream to receive, HTTP POSTs to
 * send. A `hello` on WebSocket clears the count. Once on the fallback the
 * client stays there while it works; a fallback attempt that fails before
 * its `hello` (the whole server unreachable, rather than only upgrades)
 * gives WebSocket one more try, then the fallback again, and so on.
 */
export class FallbackPolicy {
  #wsFailures = 0;

  /** `after`: failed WebSocket attempts before the fallback; `false`: never. */
  constructor(readonly after: number | false) {
    if (after !== false && !(Number.isInteger(after) && after > 0)) {
      throw new RangeError(`fallbackAfter must be a positive integer or false, got ${after}`);
    }
  }

  /** WebSocket attempts that failed before their `hello`, in a row. */
  get wsFailures(): number {
    return this.#wsFailures;
  }

  get transport(): Transport {
    return this.after !== false && this.#wsFailures >= this.after ? "sse" : "websocket";
  }

  /** An attempt on `transport` ended before its `hello`. */
  failed(transport: Transport): void {
    if (this.after === false) return;
    if (transport === "websocket") this.#wsFailures += 1;
    else this.#wsFailures = this.after - 1;
  }

  /** An attempt on `transport` got its `hello`. */
  connected(transport: Transport): void {
    if (transport === "websocket") this.#wsFailures = 0;
  }

  /** Start again from WebSocket (`client.reconnect()`). */
  reset(): void {
    this.#wsFailures = 0;
  }
}
