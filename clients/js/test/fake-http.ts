import { decode } from "@msgpack/msgpack";
import type { EventSourceLike, FetchLike, ResponseLike } from "../src/sse.js";

/** An EventSource the test plays the server of. */
export class FakeEventSource implements EventSourceLike {
  static all: FakeEventSource[] = [];
  readyState = 0;
  onerror: ((event: never) => void) | null = null;
  closed = false;
  readonly #listeners = new Map<string, ((event: { data?: unknown }) => void)[]>();

  constructor(readonly url: string) {
    FakeEventSource.all.push(this);
  }

  static reset(): void {
    FakeEventSource.all = [];
  }

  /** The query parameters of the stream's URL. */
  get params(): URLSearchParams {
    return new URL(this.url).searchParams;
  }

  addEventListener(type: string, listener: (event: { data?: unknown }) => void): void {
    this.#listeners.set(type, [...(this.#listeners.get(type) ?? []), listener]);
  }

  close(): void {
    this.closed = true;
    this.readyState = 2;
  }

  /** Server side: one event. */
  emit(name: string, data: Record<string, unknown>): void {
    this.readyState = 1;
    for (const l of this.#listeners.get(name) ?? []) l({ data: JSON.stringify(data) });
  }

  hello(user = "alice"): void {
    this.emit("hello", { conn: "s1", node: "node-1", user, heartbeat_ms: 30000, rooms: this.params.get("rooms")!.split(",") });
  }

  /** The stream fails (the server ended it, the network cut it). */
  fail(): void {
    this.onerror?.({} as never);
  }
}

export interface Call {
  url: URL;
  method: string;
  headers: Record<string, string>;
  body: Record<string, unknown> | undefined;
}

type Answer = { status: number; json: unknown } | { status: number; text: string };

/** A `fetch` whose answers the test gives: `answer(call)` returns status and JSON, or throws (a network failure). */
export class FakeFetch {
  readonly calls: Call[] = [];
  answer: (call: Call) => Answer | Promise<Answer> = () => ({
    status: 500,
    json: { error: "no answer set" },
  });

  readonly fetch: FetchLike = async (url, init) => {
    const call: Call = {
      url: new URL(url),
      method: init.method ?? "GET",
      headers: init.headers ?? {},
      body: init.body ? (decode(init.body) as Record<string, unknown>) : undefined,
    };
    this.calls.push(call);
    const answer = await this.answer(call);
    const text = "text" in answer ? answer.text : JSON.stringify(answer.json);
    const res: ResponseLike = { status: answer.status, text: async () => text, body: null };
    return res;
  };

  /** The calls to `path`, in order. */
  to(path: string): Call[] {
    return this.calls.filter((c) => c.url.pathname === path);
  }
}
