import assert from "node:assert/strict";
import { afterEach, beforeEach, test } from "node:test";
import { type Client, type ClientOptions, connect } from "../src/client.js";
import { ClosedError, MessageTooLargeError, NotConnectedError, QueueFullError, ServerError } from "../src/errors.js";
import type { RoomEvents } from "../src/room.js";
import { FakeSocket } from "./fake-socket.js";
import { until } from "./until.js";

const clients: Client[] = [];
beforeEach(() => FakeSocket.reset());
// A failed assertion must not leave a client's timers holding the process open.
afterEach(() => clients.splice(0).forEach((c) => c.close()));

function open(options: ClientOptions = {}): Client {
  return track(connect("ws://gateway.test/ws?user=alice", {
    WebSocket: FakeSocket,
    backoffBaseMs: 5,
    backoffCapMs: 20,
    ...options,
  }));
}

function track(client: Client): Client {
  clients.push(client);
  return client;
}

/** Waits for the n-th socket (from 1) and plays its `hello`. */
async function serve(n: number): Promise<FakeSocket> {
  await until(() => FakeSocket.all.length >= n, `connection ${n}`);
  const sock = FakeSocket.all[n - 1]!;
  sock.hello();
  return sock;
}

function record<K extends keyof RoomEvents>(client: Client, room: string, type: K): RoomEvents[K][] {
  const seen: RoomEvents[K][] = [];
  client.room(room).on(type, (e) => seen.push(e));
  return seen;
}

test("connects with the subprotocol and a fresh token per attempt", async () => {
  let n = 0;
  const client = open({ getToken: async () => `t${++n}` });
  const s1 = await serve(1);
  assert.equal(s1.protocols, "switchboard.v1");
  assert.equal(s1.binaryType, "arraybuffer");
  assert.equal(new URL(s1.url).searchParams.get("token"), "t1");
  assert.equal(new URL(s1.url).searchParams.get("user"), "alice");
  s1.drop(1006);
  const s2 = await serve(2);
  assert.equal(new URL(s2.url).searchParams.get("token"), "t2");
  client.close();
});

test("join, deliveries in order, duplicates and old offsets dropped", async () => {
  const client = open();
  const msgs = record(client, "lobby", "msg");
  const joined = client.room("lobby").join();
  const s = await serve(1);
  const join = s.commands("join")[0]!;
  assert.deepEqual(join, { op: "join", id: join.id, room: "lobby" });
  s.deliver({ op: "ok", id: join.id, room: "lobby", epoch: "e1", offset: 3 });
  assert.deepEqual(await joined, { epoch: "e1", offset: 3 });
  s.deliver(...[3, 4, 5, 5, 4, 6].map((offset) => ({ op: "msg", room: "lobby", offset, from: "bob", data: offset })));
  assert.deepEqual(msgs.map((m) => [m.epoch, m.offset, m.data]), [
    ["e1", 4, 4],
    ["e1", 5, 5],
    ["e1", 6, 6],
  ]);
  client.close();
});

test("presence: false is sent only when asked for", async () => {
  const client = open();
  void client.room("feed").join({ presence: false });
  const s = await serve(1);
  assert.equal(s.commands("join")[0]!.presence, false);
  client.close();
});

test("a reconnect rejoins with since; recovered: true is surfaced and the replay is not duplicated", async () => {
  const client = open();
  const msgs = record(client, "r", "msg");
  const recoveries = record(client, "r", "recovery");
  void client.room("r").join();
  const s1 = await serve(1);
  s1.deliver({ op: "ok", id: s1.commands("join")[0]!.id, room: "r", epoch: "e1", offset: 0 });
  s1.deliver({ op: "msg", room: "r", offset: 1, from: "b", data: 1 }, { op: "msg", room: "r", offset: 2, from: "b", data: 2 });
  s1.drop(1006);
  const s2 = await serve(2);
  const rejoin = s2.commands("join")[0]!;
  assert.deepEqual(rejoin.since, { epoch: "e1", offset: 2 });
  s2.deliver(
    { op: "ok", id: rejoin.id, room: "r", epoch: "e1", offset: 4, recovered: true },
    { op: "msg", room: "r", offset: 2, from: "b", data: 2 },
    { op: "msg", room: "r", offset: 3, from: "b", data: 3 },
    { op: "msg", room: "r", offset: 4, from: "b", data: 4 },
  );
  assert.deepEqual(msgs.map((m) => m.offset), [1, 2, 3, 4]);
  assert.deepEqual(recoveries, [{ room: "r", recovered: true, epoch: "e1", offset: 2, since: { epoch: "e1", offset: 2 } }]);
  client.close();
});

test("recovered: false is surfaced once and deliveries continue in the new epoch", async () => {
  const client = open();
  const msgs = record(client, "r", "msg");
  const recoveries = record(client, "r", "recovery");
  void client.room("r").join();
  const s1 = await serve(1);
  s1.deliver({ op: "ok", id: s1.commands("join")[0]!.id, room: "r", epoch: "e1", offset: 9 });
  s1.drop(1001);
  const s2 = await serve(2);
  s2.deliver(
    { op: "ok", id: s2.commands("join")[0]!.id, room: "r", epoch: "e2", offset: 5, recovered: false },
    { op: "msg", room: "r", offset: 6, from: "b", data: "x" },
  );
  assert.deepEqual(recoveries, [{ room: "r", recovered: false, epoch: "e2", offset: 5, since: { epoch: "e1", offset: 9 } }]);
  assert.deepEqual(msgs.map((m) => [m.epoch, m.offset]), [["e2", 6]]);
  s2.drop(1006);
  const s3 = await serve(3);
  assert.deepEqual(s3.commands("join")[0]!.since, { epoch: "e2", offset: 6 });
  client.close();
});

test("a reset is surfaced and the room continues in its new epoch", async () => {
  const client = open();
  const msgs = record(client, "r", "msg");
  const resets = record(client, "r", "reset");
  void client.room("r").join();
  const s = await serve(1);
  s.deliver(
    { op: "ok", id: s.commands("join")[0]!.id, room: "r", epoch: "e1", offset: 0 },
    { op: "msg", room: "r", offset: 1, from: "b", data: 1 },
    { op: "reset", room: "r", epoch: "e2", offset: 0 },
    { op: "msg", room: "r", offset: 1, from: "b", data: "new" },
  );
  assert.deepEqual(resets, [{ room: "r", epoch: "e2", offset: 0 }]);
  assert.deepEqual(msgs.map((m) => [m.epoch, m.offset, m.data]), [
    ["e1", 1, 1],
    ["e2", 1, "new"],
  ]);
  client.close();
});

test("an unacknowledged pub is re-sent once, after the rejoin, with the same msg_id", async () => {
  const client = open();
  void client.room("r").join();
  const s1 = await serve(1);
  s1.deliver({ op: "ok", id: s1.commands("join")[0]!.id, room: "r", epoch: "e1", offset: 0 });
  const acked = client.room("r").publish({ n: 1 });
  const lost = client.room("r").publish({ n: 2 }, { msgId: "m-2" });
  const [p1, p2] = s1.commands("pub");
  assert.equal(p2!.msg_id, "m-2");
  assert.equal(typeof p1!.msg_id, "string");
  s1.deliver({ op: "ok", id: p1!.id, epoch: "e1", offset: 1 });
  assert.deepEqual(await acked, { epoch: "e1", offset: 1 });
  s1.drop(1006);
  assert.equal(client.queued, 1);

  const s2 = await serve(2);
  assert.equal(s2.commands("pub").length, 0, "publications wait for the rejoin's answer");
  s2.deliver({ op: "ok", id: s2.commands("join")[0]!.id, room: "r", epoch: "e1", offset: 2, recovered: true });
  const resent = s2.commands("pub");
  assert.deepEqual(resent.map((c) => [c.msg_id, c.data]), [["m-2", { n: 2 }]]);
  s2.deliver({ op: "ok", id: resent[0]!.id, epoch: "e1", offset: 2 });
  assert.deepEqual(await lost, { epoch: "e1", offset: 2 });
  assert.equal(client.queued, 0);
  client.close();
});

test("publications made while disconnected go out on connect; the queue is bounded", async () => {
  const client = open({ maxQueue: 2 });
  const a = client.room("r").publish("a");
  const b = client.room("r").publish("b");
  await assert.rejects(client.room("r").publish("c"), (e: unknown) => e instanceof QueueFullError && e.limit === 2);
  const s = await serve(1);
  const pubs = s.commands("pub");
  assert.deepEqual(pubs.map((c) => c.data), ["a", "b"]);
  s.deliver({ op: "ok", id: pubs[0]!.id, epoch: "e", offset: 1 }, { op: "ok", id: pubs[1]!.id, epoch: "e", offset: 2 });
  await Promise.all([a, b]);
  client.room("r").publish("c").catch(() => undefined);
  assert.equal(client.queued, 1, "room again once acknowledged");
  assert.deepEqual(s.commands("pub").map((c) => c.data), ["a", "b", "c"]);
  client.close();
});

test("after leave no msg is delivered and the room is not rejoined", async () => {
  const client = open();
  const msgs = record(client, "r", "msg");
  void client.room("r").join();
  const s1 = await serve(1);
  s1.deliver({ op: "ok", id: s1.commands("join")[0]!.id, room: "r", epoch: "e1", offset: 0 });
  const left = client.room("r").leave();
  const leave = s1.commands("leave")[0]!;
  assert.equal(leave.room, "r");
  s1.deliver({ op: "msg", room: "r", offset: 1, from: "b", data: 1 }, { op: "ok", id: leave.id });
  await left;
  assert.deepEqual(msgs, []);
  s1.drop(1006);
  const s2 = await serve(2);
  assert.deepEqual(s2.commands("join"), []);
});

test("a server error rejects the publish with its code, and it is not re-sent", async () => {
  const client = open();
  const s = await serve(1);
  const p = client.room("r").publish("x");
  const pub = s.commands("pub")[0]!;
  s.deliver({ op: "err", id: pub.id, code: 429, reason: "rate: publish_per_s limit (50/s, burst 100) exceeded; not published" });
  await assert.rejects(p, (e: unknown) => e instanceof ServerError && e.code === 429 && e.op === "pub" && e.reason.startsWith("rate:"));
  assert.equal(client.queued, 0);
  client.close();
});

test("a command larger than max_frame is refused locally", async () => {
  const client = open();
  const s = await serve(1);
  await assert.rejects(client.room("r").publish("x".repeat(70_000)), MessageTooLargeError);
  assert.equal(s.commands("pub").length, 0);
  client.close();
});

test("send and presence need a connection; their replies resolve them", async () => {
  const client = open();
  await assert.rejects(client.send("bob", "hi"), NotConnectedError);
  const s = await serve(1);
  const sent = client.send("bob", "hi");
  const who = client.room("r").presence();
  const [send] = s.commands("send");
  const [presence] = s.commands("presence");
  s.deliver({ op: "ok", id: send!.id, delivered: 2 }, { op: "ok", id: presence!.id, room: "r", users: ["alice", "bob"] });
  assert.equal(await sent, 2);
  assert.deepEqual(await who, ["alice", "bob"]);
  const gone = client.send("carol", "hi");
  s.drop(1006);
  await assert.rejects(gone, NotConnectedError);
  client.close();
});

test("a refused rejoin is an error event on the room", async () => {
  const client = open();
  const errors = record(client, "r", "error");
  void client.room("r").join();
  const s1 = await serve(1);
  s1.deliver({ op: "ok", id: s1.commands("join")[0]!.id, room: "r", epoch: "e1", offset: 0 });
  s1.drop(1006);
  const s2 = await serve(2);
  s2.deliver({ op: "err", id: s2.commands("join")[0]!.id, code: 403, reason: "room: \"r\" is not allowed by the token's rooms claim" });
  assert.equal(errors.length, 1);
  assert.equal(errors[0]!.code, 403);
  assert.equal(client.room("r").active, false);
  client.close();
});

test("1012 retries at once; other closes back off; a success resets the schedule", async () => {
  const client = open({ backoffBaseMs: 40, backoffCapMs: 1000 });
  const retries: { delay: number; attempt: number }[] = [];
  client.on("reconnecting", (r) => retries.push(r));
  const s1 = await serve(1);
  s1.drop(1012, "draining");
  assert.deepEqual(retries.at(-1), { delay: 0, attempt: 1 });
  await until(() => FakeSocket.all.length === 2, "the immediate retry");
  FakeSocket.all[1]!.drop(1006);
  await until(() => FakeSocket.all.length === 3, "retry 2");
  FakeSocket.all[2]!.drop(1006);
  assert.ok(retries[1]!.delay < 40 && retries[2]!.delay < 80, JSON.stringify(retries));
  assert.deepEqual(retries.map((r) => r.attempt), [1, 2, 3]);
  const s4 = await serve(4);
  s4.drop(1006);
  assert.equal(retries.at(-1)!.attempt, 1, "the count restarted after the success");
  assert.ok(retries.at(-1)!.delay < 40);
  client.close();
});

test("a join answered 503 is asked again until it succeeds", async () => {
  const client = open();
  const joined = client.room("r").join();
  const s = await serve(1);
  s.deliver({ op: "err", id: s.commands("join")[0]!.id, code: 503, reason: "room: its home node is unavailable; retry" });
  await until(() => s.commands("join").length === 2, "the join asked again");
  s.deliver({ op: "ok", id: s.commands("join")[1]!.id, room: "r", epoch: "e1", offset: 0 });
  assert.deepEqual(await joined, { epoch: "e1", offset: 0 });
});

test("a failing getToken is reported and retried", async () => {
  let calls = 0;
  const client = open({
    getToken: () => {
      if (++calls === 1) throw new Error("token service down");
      return "t2";
    },
  });
  const errors: Error[] = [];
  client.on("error", (e) => errors.push(e));
  const s = await serve(1);
  assert.equal(new URL(s.url).searchParams.get("token"), "t2");
  assert.deepEqual(errors.map((e) => e.message), ["token service down"]);
});

test("an unanswered ping declares the connection dead and reconnects", async () => {
  const client = open({ pingIntervalMs: 10, pingTimeoutMs: 30 });
  const down: { code: number; reason: string }[] = [];
  client.on("disconnected", (d) => down.push(d));
  const s1 = await serve(1);
  await until(() => s1.commands("ping").length === 1, "a ping");
  await until(() => down.length === 1, "the ping timeout");
  assert.deepEqual(down[0], { code: 4000, reason: "ping timeout", transport: "websocket" });
  assert.equal(s1.closedByClient, 1000);
  assert.equal(s1.commands("ping").length, 1, "one ping outstanding at a time");
  const s2 = await serve(2);
  await until(() => s2.commands("ping").length === 1, "a ping on the new connection");
  s2.deliver({ op: "pong", id: s2.commands("ping")[0]!.id });
  await until(() => s2.commands("ping").length === 2, "the next ping after a pong");
  assert.equal(down.length, 1);
  client.close();
});

test("close rejects what is pending and stops reconnecting", async () => {
  const client = open();
  const joined = client.room("r").join();
  const pub = client.room("r").publish(1);
  await until(() => FakeSocket.all.length === 1, "a socket");
  client.close();
  await assert.rejects(joined, /client closed/);
  await assert.rejects(pub, /client closed/);
  await new Promise((r) => setTimeout(r, 30));
  assert.equal(FakeSocket.all.length, 1);
  assert.equal(client.state, "closed");
  await assert.rejects(client.room("other").join(), ClosedError);
  await assert.rejects(client.room("r").publish(2), ClosedError);
});

test("reconnect() drops the socket, connects again after the delay, rejoins with since and re-sends", async () => {
  const client = open();
  const states: string[] = [];
  client.on("disconnected", (e) => states.push(`disconnected ${e.code}`));
  client.on("reconnecting", (e) => states.push(`reconnecting ${e.delay}`));
  void client.room("r").join();
  const s1 = await serve(1);
  s1.deliver({ op: "ok", id: s1.commands("join")[0]!.id, room: "r", epoch: "e1", offset: 7 });
  const acked = client.room("r").publish("x", { msgId: "m1" });
  await until(() => s1.commands("pub").length === 1, "pub sent");
  client.reconnect(30);
  assert.equal(s1.closedByClient, 1000);
  assert.deepEqual(states, ["disconnected 4002", "reconnecting 30"]);
  const s2 = await serve(2);
  const rejoin = s2.commands("join")[0]!;
  assert.deepEqual(rejoin.since, { epoch: "e1", offset: 7 });
  s2.deliver({ op: "ok", id: rejoin.id, room: "r", epoch: "e1", offset: 8, recovered: true });
  await until(() => s2.commands("pub").length === 1, "pub re-sent");
  const pub = s2.commands("pub")[0]!;
  assert.equal(pub.msg_id, "m1");
  s2.deliver({ op: "ok", id: pub.id, room: "r", epoch: "e1", offset: 8 });
  assert.deepEqual(await acked, { epoch: "e1", offset: 8 });
  client.close();
});

test("a message that does not decode is an error event and the connection starts over", async () => {
  const client = open();
  const errors: Error[] = [];
  const closes: number[] = [];
  client.on("error", (e) => errors.push(e));
  client.on("disconnected", (e) => closes.push(e.code));
  void client.room("r").join();
  const s1 = await serve(1);
  s1.deliverRaw(new Uint8Array([0xc1, 0xff, 0x00]));
  assert.equal(errors.length, 1);
  assert.deepEqual(closes, [4003]);
  const s2 = await serve(2);
  assert.equal(s2.commands("join").length, 1);
  client.close();
});
