import assert from "node:assert/strict";
import { afterEach, beforeEach, test } from "node:test";
import { type Client, type ClientEvents, type ClientOptions, connect } from "../src/client.js";
import { ServerError } from "../src/errors.js";
import { FallbackPolicy } from "../src/fallback.js";
import type { RoomMessage } from "../src/room.js";
import { endpoint, EventStreamParser, httpBase, streamPosition } from "../src/sse.js";
import { FakeEventSource, FakeFetch } from "./fake-http.js";
import { FakeSocket } from "./fake-socket.js";
import { until } from "./until.js";

const clients: Client[] = [];
beforeEach(() => {
  FakeSocket.reset();
  FakeEventSource.reset();
});
afterEach(() => clients.splice(0).forEach((c) => c.close()));

test("the policy: WebSocket until `after` failures in a row, then the fallback", () => {
  const p = new FallbackPolicy(3);
  assert.equal(p.transport, "websocket");
  p.failed("websocket");
  p.failed("websocket");
  assert.equal(p.transport, "websocket");
  p.connected("websocket"); // a hello clears the count
  p.failed("websocket");
  p.failed("websocket");
  assert.equal(p.transport, "websocket");
  p.failed("websocket");
  assert.equal(p.transport, "sse");
  p.connected("sse");
  assert.equal(p.transport, "sse", "the fallback stays while it works");
  // The fallback failing too (the server unreachable, not only upgrades):
  // WebSocket gets one more try, then the fallback again.
  p.failed("sse");
  assert.equal(p.transport, "websocket");
  p.failed("websocket");
  assert.equal(p.transport, "sse");
  p.reset();
  assert.equal(p.transport, "websocket");
  const never = new FallbackPolicy(false);
  for (let i = 0; i < 10; i++) never.failed("websocket");
  assert.equal(never.transport, "websocket");
  assert.throws(() => new FallbackPolicy(0), RangeError);
});

test("positions: <epoch>.<offset> per room in the stream's order, empty for a room not joined yet", () => {
  assert.equal(streamPosition([undefined, undefined]), undefined);
  assert.equal(streamPosition([{ epoch: "2a52", offset: 41 }]), "2a52.41");
  assert.equal(streamPosition([{ epoch: "2a52", offset: 41 }, undefined]), "2a52.41~");
  assert.equal(streamPosition([undefined, { epoch: "9b1c", offset: 0 }, { epoch: "ff", offset: 7 }]), "~9b1c.0~ff.7");
});

test("the HTTP base and endpoints of a WebSocket URL", () => {
  const base = httpBase(new URL("wss://chat.example.com/edge/ws?user=alice"));
  assert.equal(base.toString(), "https://chat.example.com/edge?user=alice");
  assert.equal(
    endpoint(base, "sse", { rooms: "a,b", token: undefined, last_event_id: "e.1~" }),
    "https://chat.example.com/edge/sse?user=alice&rooms=a%2Cb&last_event_id=e.1%7E",
  );
  assert.equal(endpoint(httpBase(new URL("ws://127.0.0.1:8080/ws")), "api/publish"), "http://127.0.0.1:8080/api/publish");
});

test("the event-stream parser: any line ends, chunks cut anywhere, comments, multi-line data", () => {
  const got: [string, string][] = [];
  const p = new EventStreamParser((name, data) => got.push([name, data]));
  const text = 'retry: 2417\r\n\r\nevent: hello\r\ndata: {"a":1}\r\n\r\n: keepalive\n\nevent: msg\nid: e.1\ndata: x\ndata:y\r\rdata: plain\n\n';
  for (const cut of [1, 2, 3, 5, 7, text.length]) {
    got.length = 0;
    for (let i = 0; i < text.length; i += cut) p.push(text.slice(i, i + cut));
    assert.deepEqual(got, [
      ["hello", '{"a":1}'],
      ["msg", "x\ny"],
      ["message", "plain"],
    ], `chunks of ${cut}`);
  }
});

interface Fallen {
  client: Client;
  http: FakeFetch;
  events: string[];
  msgs: RoomMessage[];
}

/** A client whose WebSocket attempts all fail before their hello. */
function fallingBack(options: ClientOptions = {}): Fallen {
  const http = new FakeFetch();
  const client = connect("ws://gateway.test/ws?user=alice", {
    WebSocket: FakeSocket,
    EventSource: FakeEventSource,
    fetch: http.fetch,
    backoffBaseMs: 2,
    backoffCapMs: 5,
    ...options,
  });
  clients.push(client);
  const events: string[] = [];
  const log = (type: keyof ClientEvents) =>
    client.on(type, (e) => events.push(`${type} ${(e as { transport?: string }).transport ?? ""}`.trim()));
  (["connecting", "connected", "disconnected"] as const).forEach(log);
  const msgs: RoomMessage[] = [];
  client.room("a").on("msg", (m) => msgs.push(m));
  client.room("b").on("msg", (m) => msgs.push(m));
  return { client, http, events, msgs };
}

async function failWebSockets(n: number): Promise<void> {
  for (let i = 1; i <= n; i++) {
    await until(() => FakeSocket.all.length >= i, `WebSocket attempt ${i}`);
    FakeSocket.all[i - 1]!.drop(1006);
  }
}

test("after 3 failed WebSocket attempts the client receives over SSE and joins its rooms there", async () => {
  const { client, events, msgs } = fallingBack();
  const joined = client.room("a").join();
  await failWebSockets(3);
  await until(() => FakeEventSource.all.length === 1, "the stream");
  assert.equal(FakeSocket.all.length, 3, "no fourth WebSocket attempt");
  const es = FakeEventSource.all[0]!;
  assert.equal(new URL(es.url).pathname, "/sse");
  assert.deepEqual(Object.fromEntries(es.params), { user: "alice", rooms: "a" });
  es.hello();
  assert.equal(client.state, "connected");
  assert.equal(client.transport, "sse");
  es.emit("join", { room: "a", epoch: "e1", offset: 4 });
  assert.deepEqual(await joined, { epoch: "e1", offset: 4 });
  es.emit("msg", { room: "a", offset: 5, from: "bob", data: { text: "hi" } });
  // What JSON cannot hold comes as MessagePack, base64: 0xc4 0x02 0x01 0xff is bin [1, 255].
  es.emit("msg", { room: "a", offset: 6, from: "bob", data_msgpack: "xAIB/w==" });
  es.emit("msg", { room: "a", offset: 6, from: "bob", data: "a duplicate" });
  assert.deepEqual(msgs.map((m) => [m.epoch, m.offset, m.data]), [
    ["e1", 5, { text: "hi" }],
    ["e1", 6, new Uint8Array([1, 255])],
  ]);
  assert.deepEqual(events, [
    "connecting websocket",
    "disconnected websocket",
    "connecting websocket",
    "disconnected websocket",
    "connecting websocket",
    "disconnected websocket",
    "connecting sse",
    "connected sse",
  ]);
});

test("a room joined, or left, on SSE re-opens the stream from every room's position", async () => {
  const { client, msgs } = fallingBack({ fallbackAfter: 1 });
  const recoveries: unknown[] = [];
  client.room("a").on("recovery", (r) => recoveries.push(r));
  void client.room("a").join();
  await failWebSockets(1);
  await until(() => FakeEventSource.all.length === 1, "the stream");
  const s1 = FakeEventSource.all[0]!;
  s1.hello();
  s1.emit("join", { room: "a", epoch: "e1", offset: 0 });
  s1.emit("msg", { room: "a", offset: 1, from: "bob", data: 1 });
  s1.emit("msg", { room: "a", offset: 2, from: "bob", data: 2 });
  const b = client.room("b").join({ presence: false });
  await until(() => FakeEventSource.all.length === 2, "the stream re-opened");
  assert.ok(s1.closed, "the old stream is closed");
  const s2 = FakeEventSource.all[1]!;
  assert.equal(s2.params.get("rooms"), "a,b");
  assert.equal(s2.params.get("last_event_id"), "e1.2~");
  assert.equal(s2.params.get("presence"), null, "a wants presence, so the stream has it");
  s2.hello();
  s2.emit("join", { room: "a", epoch: "e1", offset: 3, recovered: true });
  s2.emit("msg", { room: "a", offset: 3, from: "bob", data: 3 });
  s2.emit("join", { room: "b", epoch: "f1", offset: 9 });
  assert.deepEqual(await b, { epoch: "f1", offset: 9 });
  s2.emit("msg", { room: "b", offset: 10, from: "carol", data: "b10" });
  const bPresence: unknown[] = [];
  client.room("b").on("joined", (j) => bPresence.push(j));
  s2.emit("joined", { room: "b", user: "dave" });
  assert.deepEqual(bPresence, [], "b was joined with presence: false");
  assert.deepEqual(recoveries, [], "a re-open for a new room set resumes quietly");
  await client.room("a").leave();
  await until(() => FakeEventSource.all.length === 3, "the stream re-opened without a");
  const s3 = FakeEventSource.all[2]!;
  assert.equal(s3.params.get("rooms"), "b");
  assert.equal(s3.params.get("last_event_id"), "f1.10");
  assert.equal(s3.params.get("presence"), "false");
  s3.emit("msg", { room: "a", offset: 4, from: "bob", data: "after leave" });
  assert.deepEqual(msgs.map((m) => m.data), [1, 2, 3, "b10"]);
  // The stream ends (the node drained, the network): a new one, after a
  // backoff, resumes from the positions, and reports the recovery.
  const b2 = client.room("b");
  const bRecoveries: unknown[] = [];
  b2.on("recovery", (r) => bRecoveries.push(r));
  s3.hello();
  s3.fail();
  await until(() => FakeEventSource.all.length === 4, "a new stream");
  const s4 = FakeEventSource.all[3]!;
  assert.equal(s4.params.get("last_event_id"), "f1.10");
  s4.hello();
  s4.emit("join", { room: "b", epoch: "f1", offset: 10, recovered: true });
  assert.deepEqual(bRecoveries, [{ room: "b", recovered: true, epoch: "f1", offset: 10, since: { epoch: "f1", offset: 10 } }]);
});

test("on SSE, publications go by POST one at a time with their msg_id, re-sent after a failure", async () => {
  const { client, http } = fallingBack({ fallbackAfter: 1, token: "tok" });
  let offset = 0;
  let failNext = true;
  http.answer = (call) => {
    if (call.url.pathname === "/api/publish") {
      if (call.body!.data === "p2" && failNext) {
        failNext = false;
        throw new TypeError("fetch failed"); // the answer is lost
      }
      if (call.body!.data === "too big") return { status: 413, json: { error: "body larger than limits.max_frame_bytes (65536)" } };
      return { status: 200, json: { room: call.body!.room, offset: ++offset } };
    }
    if (call.url.pathname === "/api/send") return { status: 200, json: { delivered: 2 } };
    return { status: 404, json: { error: "not found" } };
  };
  const acks = ["p1", "p2", "p3"].map((p) => client.room("r").publish(p));
  const tooBig = client.room("r").publish("too big");
  tooBig.catch(() => undefined); // asserted below
  await failWebSockets(1);
  // No room joined: no stream, yet connected over HTTP.
  await until(() => client.state === "connected", "connected over HTTP");
  assert.equal(FakeEventSource.all.length, 0);
  const [a1, a2, a3] = await Promise.all(acks);
  assert.deepEqual([a1!.offset, a2!.offset, a3!.offset], [1, 2, 3]);
  await assert.rejects(tooBig, (e: unknown) => e instanceof ServerError && e.code === 413 && e.op === "pub");
  const posts = http.to("/api/publish");
  assert.deepEqual(posts.map((c) => c.body!.data), ["p1", "p2", "p2", "p3", "too big"]);
  assert.equal(posts[1]!.body!.msg_id, posts[2]!.body!.msg_id, "the re-send keeps its msg_id");
  assert.notEqual(posts[0]!.body!.msg_id, posts[1]!.body!.msg_id);
  assert.equal(posts[0]!.headers.Authorization, "Bearer tok");
  assert.equal(posts[0]!.headers["Content-Type"], "application/msgpack");
  assert.equal(posts[0]!.url.searchParams.get("user"), "alice");
  assert.equal(await client.send("bob", { psst: 1 }), 2);
  assert.deepEqual(http.to("/api/send")[0]!.body, { to: "bob", data: { psst: 1 } });
  assert.equal(client.transport, "sse");
});

test("a 403 for one room refuses that room and streams the others", async () => {
  const { client, http } = fallingBack({ fallbackAfter: 1 });
  http.answer = (call) =>
    call.url.searchParams.get("rooms") === "a,secret"
      ? { status: 403, text: 'rooms: "secret" is not allowed by the token\'s rooms claim\n' }
      : { status: 200, text: "" };
  const ok = client.room("a").join();
  const refused = client.room("secret").join();
  await failWebSockets(1);
  await until(() => FakeEventSource.all.length === 1, "the stream");
  // EventSource hides the status: the client asks again with fetch to learn it.
  const es = FakeEventSource.all[0]!;
  assert.equal(es.params.get("rooms"), "a,secret");
  es.fail();
  await until(() => FakeEventSource.all.length === 2, "the stream without the room");
  const s2 = FakeEventSource.all[1]!;
  assert.equal(s2.params.get("rooms"), "a");
  await assert.rejects(refused, (e: unknown) => e instanceof ServerError && e.code === 403);
  s2.hello();
  s2.emit("join", { room: "a", epoch: "e", offset: 0 });
  assert.deepEqual(await ok, { epoch: "e", offset: 0 });
});

test("a room joined while the stream is being opened is joined once it is up", async () => {
  const { client } = fallingBack({ fallbackAfter: 1 });
  void client.room("a").join();
  await failWebSockets(1);
  await until(() => FakeEventSource.all.length === 1, "the stream");
  const late = client.room("b").join();
  const s1 = FakeEventSource.all[0]!;
  s1.hello();
  await until(() => FakeEventSource.all.length === 2, "the stream opened again with b");
  const s2 = FakeEventSource.all[1]!;
  assert.equal(s2.params.get("rooms"), "a,b");
  s2.hello();
  s2.emit("join", { room: "b", epoch: "e", offset: 3 });
  assert.deepEqual(await late, { epoch: "e", offset: 3 });
  const down: string[] = [];
  client.on("disconnected", (d) => down.push(`${d.code} ${d.transport}`));
  client.close();
  assert.deepEqual(down, ["1000 sse"]);
});
