import { decode } from "@msgpack/msgpack";
import type { Since } from "./codec.js";

/**
 * The HTTP transport the client falls back to when WebSocket upgrades fail:
 * a Server-Sent Events stream (`GET /sse`) to receive, `POST /api/publish`
 * and `/api/send` to send. This file holds its pieces that know nothing of
 * the client: the stream readers, the event-stream parser, positions, URLs.
 */

/** The event names the server sends on a stream (`err` is the server's, not EventSource's `error`). */
export const STREAM_EVENTS = ["hello", "join", "msg", "reset", "joined", "left", "dm", "err"] as const;

/** The part of the browser's `EventSource` the client uses. */
export interface EventSourceLike {
  readonly readyState: number;
  addEventListener(type: string, listener: (event: { data?: unknown }) => void): void;
  onerror: ((event: never) => void) | null;
  close(): void;
}

export type EventSourceConstructor = new (url: string) => EventSourceLike;

export type FetchLike = (
  url: string,
  init: { method?: string; headers?: Record<string, string>; body?: Uint8Array; signal?: AbortSignal; cache?: "no-store" },
) => Promise<ResponseLike>;

/** The part of `fetch`'s Response the client uses. */
export interface ResponseLike {
  readonly status: number;
  text(): Promise<string>;
  readonly body: ReadableStream<Uint8Array> | null;
}

export interface StreamHandlers {
  /** One event: its name and its `data` (JSON text). */
  event(name: string, data: string): void;
  /**
   * The stream ended or could not be opened: `status` is the HTTP status
   * of a refusal (with its body as `reason`), undefined for a stream that
   * ended or a network failure.
   */
  closed(status: number | undefined, reason: string): void;
}

export interface Stream {
  close(): void;
}

/**
 * An event stream read with `EventSource` (browsers). Its own reconnection
 * is not used: on the first error it is closed and the client reconnects
 * with its backoff and its own positions. EventSource does not tell a
 * refusal's status, so a stream that fails before its first event is
 * asked again with `fetch` once to learn it.
 */
export function openEventSource(
  EventSourceCtor: EventSourceConstructor,
  fetchFn: FetchLike | undefined,
  url: string,
  handlers: StreamHandlers,
): Stream {
  let open = true;
  let seen = false;
  const es = new EventSourceCtor(url);
  for (const name of STREAM_EVENTS) {
    es.addEventListener(name, (e) => {
      seen = true;
      if (open) handlers.event(name, String(e.data));
    });
  }
  es.onerror = () => {
    if (!open) return;
    open = false;
    es.close();
    if (seen || !fetchFn) {
      handlers.closed(undefined, "stream error");
      return;
    }
    const probe = new AbortController();
    fetchFn(url, { headers: { Accept: "text/event-stream" }, signal: probe.signal, cache: "no-store" })
      .then(async (res) => {
        if (res.status === 200) {
          probe.abort();
          handlers.closed(undefined, "stream error");
        } else {
          handlers.closed(res.status, (await res.text()).trim());
        }
      })
      .catch((error: unknown) => handlers.closed(undefined, String(error)));
  };
  return {
    close() {
      open = false;
      es.close();
    },
  };
}

/** An event stream read with `fetch` (Node, or where there is no EventSource). */
export function openFetchStream(fetchFn: FetchLike, url: string, handlers: StreamHandlers): Stream {
  const abort = new AbortController();
  let open = true;
  const closed = (status: number | undefined, reason: string) => {
    if (!open) return;
    open = false;
    handlers.closed(status, reason);
  };
  void (async () => {
    try {
      const res = await fetchFn(url, { headers: { Accept: "text/event-stream" }, signal: abort.signal, cache: "no-store" });
      if (res.status !== 200 || !res.body) {
        closed(res.status, (await res.text()).trim());
        return;
      }
      const parser = new EventStreamParser((name, data) => {
        if (open) handlers.event(name, data);
      });
      const reader = res.body.getReader();
      const text = new TextDecoder();
      for (;;) {
        const { done, value } = await reader.read();
        if (done || !open) break;
        parser.push(text.decode(value, { stream: true }));
      }
      closed(undefined, "stream ended");
    } catch (error) {
      closed(undefined, String(error));
    }
  })();
  return {
    close() {
      open = false;
      abort.abort();
    },
  };
}

/**
 * The `text/event-stream` format, as the HTML standard parses it: lines
 * ended by CRLF, LF or CR; `field: value`; an event dispatched at each
 * blank line that follows data; comments (`:`) ignored. `id` and `retry`
 * are not needed: the client keeps its own positions and backoff.
 */
export class EventStreamParser {
  #buffer = "";
  #event = "";
  #data: string[] = [];
  /** A CR ended the last chunk: a LF starting the next belongs to it. */
  #afterCr = false;

  constructor(private readonly dispatch: (name: string, data: string) => void) {}

  push(chunk: string): void {
    if (this.#afterCr && chunk.startsWith("\n")) chunk = chunk.slice(1);
    this.#afterCr = false;
    this.#buffer += chunk;
    for (;;) {
      const end = this.#buffer.search(/[\r\n]/);
      if (end < 0) return;
      const line = this.#buffer.slice(0, end);
      let next = end + 1;
      if (this.#buffer[end] === "\r") {
        if (end + 1 === this.#buffer.length) this.#afterCr = true;
        else if (this.#buffer[end + 1] === "\n") next += 1;
      }
      this.#buffer = this.#buffer.slice(next);
      this.#line(line);
    }
  }

  #line(line: string): void {
    if (line === "") {
      if (this.#data.length > 0) this.dispatch(this.#event || "message", this.#data.join("\n"));
      this.#event = "";
      this.#data = [];
      return;
    }
    if (line.startsWith(":")) return;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") this.#event = value;
    else if (field === "data") this.#data.push(value);
  }
}

/**
 * A stream's position from each room's: `<epoch>.<offset>` per room, in
 * the order of the stream's `rooms`, empty for a room never joined, joined
 * with `~` (docs/protocol.md, "Positions"). Undefined when no room has
 * one: a fresh stream.
 */
export function streamPosition(rooms: readonly (Since | undefined)[]): string | undefined {
  if (rooms.every((s) => s === undefined)) return undefined;
  return rooms.map((s) => (s ? `${s.epoch}.${s.offset}` : "")).join("~");
}

/**
 * The HTTP base of a WebSocket URL: `ws:` becomes `http:`, `wss:` `https:`,
 * and a final `/ws` of the path is removed (`wss://h/chat/ws` serves
 * `https://h/chat/sse`). The query (`user`, ...) is kept.
 */
export function httpBase(wsUrl: URL): URL {
  const url = new URL(wsUrl.toString());
  url.protocol = url.protocol === "wss:" ? "https:" : url.protocol === "ws:" ? "http:" : url.protocol;
  url.pathname = url.pathname.replace(/\/ws\/?$/, "") || "/";
  url.hash = "";
  return url;
}

/** `path` under a base from `httpBase`, with its query and `params` added. */
export function endpoint(base: URL, path: string, params: Record<string, string | undefined> = {}): string {
  const url = new URL(base.toString());
  url.pathname = `${url.pathname.replace(/\/$/, "")}/${path}`;
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined) url.searchParams.set(k, v);
  }
  return url.toString();
}

/**
 * A stream event's `data` as the WebSocket would have given it: JSON, or
 * `data_msgpack` (what JSON cannot hold: binary, extension types, ...)
 * decoded from base64 MessagePack.
 */
export function eventData(ev: { data?: unknown; data_msgpack?: string }): unknown {
  if (typeof ev.data_msgpack === "string") return decode(fromBase64(ev.data_msgpack));
  return ev.data;
}

function fromBase64(text: string): Uint8Array {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}
