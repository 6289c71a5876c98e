import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import WebSocket from "ws";
import { type Client, type ClientOptions, connect } from "../src/client.js";
import type { RoomEvents, RoomMessage } from "../src/room.js";
import { until } from "./until.js";
import { type Server, skipReason, startServer, stopServer } from "./server.js";

/**
 * `ws`'s WebSocket, remembering every socket a client opens, and able to
 * go deaf: what arrives after `deaf` is set never reaches the client, as
 * when a connection dies with replies still on the wire.
 */
class Tracked extends WebSocket {
  deaf = false;

  constructor(url: string, protocols?: string | string[]) {
    super(url, protocols);
    const handler = Object.getOwnPropertyDescriptor(WebSocket.prototype, "onmessage")!;
    Object.defineProperty(this, "onmessage", {
      get: () => handler.get!.call(this),
      set: (fn: ((ev: WebSocket.MessageEvent) => void) | null) =>
        handler.set!.call(this, fn && ((ev: WebSocket.MessageEvent) => this.deaf || fn(ev))),
    });
  }
}

function trackedWebSocket(sockets: Tracked[]) {
  return class extends Tracked {
    constructor(url: string, protocols?: string | string[]) {
      super(url, protocols);
      sockets.push(this);
    }
  };
}

interface Peer {
  client: Client;
  sockets: Tracked[];
  msgs: RoomMessage[];
  recoveries: RoomEvents["recovery"][];
}

const clients: Client[] = [];

function peer(addr: string, user: string, room: string, options: ClientOptions = {}): Peer {
  const sockets: Tracked[] = [];
  const client = connect(`ws://${addr}/ws?user=${user}`, {
    WebSocket: trackedWebSocket(sockets),
    backoffBaseMs: 100,
    backoffCapMs: 400,
    ...options,
  });
  clients.push(client);
  const p: Peer = { client, sockets, msgs: [], recoveries: [] };
  client.room(room).on("msg", (m) => p.msgs.push(m));
  client.room(room).on("recovery", (r) => p.recoveries.push(r));
  return p;
}

const skip = skipReason();

describe("against a real switchboard", { skip: skip ?? false }, () => {
  let server: Server;
  const extra: Server[] = [];

  before(async () => {
    server = await startServer();
  });

  after(async () => {
    clients.splice(0).forEach((c) => c.close());
    await Promise.all([server, ...extra].map((s) => stopServer(s)));
  });

  test("two clients: join, publish, receive in order, presence and dm", async () => {
    const alice = peer(server.addr, "alice", "js-order");
    const bob = peer(server.addr, "bob", "js-order");
    const dms: unknown[] = [];
    bob.client.on("dm", (d) => dms.push(d));
    const joined = await alice.client.room("js-order").join();
    assert.equal(joined.offset, 0);
    await bob.client.room("js-order").join();
    const acks = await Promise.all(
      [0, 1, 2, 3, 4].map((n) => bob.client.room("js-order").publish({ n, blob: new Uint8Array([n, 255]) })),
    );
    assert.deepEqual(acks.map((a) => a.offset), [1, 2, 3, 4, 5]);
    assert.ok(acks.every((a) => a.epoch === joined.epoch));
    await until(() => alice.msgs.length === 5, "alice's five messages");
    assert.deepEqual(alice.msgs.map((m) => [m.offset, m.from, (m.data as { n: number }).n]), [
      [1, "bob", 0],
      [2, "bob", 1],
      [3, "bob", 2],
      [4, "bob", 3],
      [5, "bob", 4],
    ]);
    assert.deepEqual((alice.msgs[4]!.data as { blob: Uint8Array }).blob, new Uint8Array([4, 255]));
    assert.deepEqual(await alice.client.room("js-order").presence(), ["alice", "bob"]);
    assert.equal(await alice.client.send("bob", "psst"), 1);
    await until(() => dms.length === 1, "bob's dm");
    assert.deepEqual(dms[0], { from: "alice", data: "psst" });
  });

  test("a lost connection: rejoin with since, recovered, an unacknowledged pub delivered exactly once", async () => {
    const room = "js-once";
    const alice = peer(server.addr, "alice", room);
    const bob = peer(server.addr, "bob", room);
    await alice.client.room(room).join();
    await bob.client.room(room).join();
    assert.equal((await bob.client.room(room).publish("m1")).offset, 1);
    await until(() => bob.msgs.length === 1 && alice.msgs.length === 1, "m1 everywhere");

    // Bob goes deaf: the server publishes m2 but its `ok` never reaches
    // him. Then his TCP connection dies without a close handshake.
    const bobSocket = bob.sockets.at(-1)!;
    bobSocket.deaf = true;
    const m2 = bob.client.room(room).publish("m2");
    await until(() => alice.msgs.length === 2, "m2 at alice");
    bobSocket.terminate();

    const ack = await m2;
    assert.equal(ack.offset, 2, "the re-send got the original offset back");
    assert.equal(bob.sockets.length, 2, "bob reconnected once");
    assert.equal(bob.recoveries.length, 1);
    assert.equal(bob.recoveries[0]!.recovered, true);
    assert.deepEqual(bob.recoveries[0]!.since, { epoch: ack.epoch, offset: 1 });

    // Alice loses her connection too, while bob goes on publishing.
    alice.sockets.at(-1)!.terminate();
    assert.equal((await bob.client.room(room).publish("m3")).offset, 3);
    assert.equal((await bob.client.room(room).publish("m4")).offset, 4);
    await until(() => alice.msgs.length === 4 && bob.msgs.length === 4, "m3 and m4 everywhere", 5000);
    assert.equal(alice.recoveries.length, 1);
    assert.equal(alice.recoveries[0]!.recovered, true);

    for (const p of [alice, bob]) {
      assert.deepEqual(p.msgs.map((m) => [m.offset, m.data]), [
        [1, "m1"],
        [2, "m2"],
        [3, "m3"],
        [4, "m4"],
      ]);
    }
  });

  test("a drain (1012) retries within the spread it names; a restarted node answers recovered: false, surfaced once", async () => {
    const node = await startServer("127.0.0.1:0", {
      SWITCHBOARD__SHUTDOWN__DRAIN_S: "1",
      SWITCHBOARD__RECONNECT__AFTER_DRAIN_MS: "300",
    });
    extra.push(node);
    const room = "js-restart";
    const carol = peer(node.addr, "carol", room);
    const down: { code: number; reason: string }[] = [];
    const retries: number[] = [];
    carol.client.on("disconnected", (d) => down.push(d));
    carol.client.on("reconnecting", (r) => retries.push(r.delay));
    const first = await carol.client.room(room).join();
    await carol.client.room(room).publish("before");
    await until(() => carol.msgs.length === 1, "the first message");

    await stopServer(node, "SIGTERM");
    assert.equal(down[0]?.code, 1012);
    assert.equal(down[0]?.reason, "node draining; reconnect within 300 ms");
    assert.ok(retries[0]! <= 300, `the first retry after a drain comes within 300 ms, not after backoff: ${retries[0]}`);

    // Same address, fresh memory: the room's history is gone.
    const again = await startServer(node.addr);
    extra.push(again);
    await until(() => carol.recoveries.length === 1, "the rejoin's answer", 10_000);
    const r = carol.recoveries[0]!;
    assert.equal(r.recovered, false);
    assert.deepEqual(r.since, { epoch: first.epoch, offset: 1 });
    assert.notEqual(r.epoch, first.epoch);
    assert.equal((await carol.client.room(room).publish("after")).epoch, r.epoch);
    await until(() => carol.msgs.length === 2, "the message after the restart");
    assert.deepEqual(carol.msgs.map((m) => [m.epoch, m.offset, m.data]), [
      [first.epoch, 1, "before"],
      [r.epoch, 1, "after"],
    ]);
  });
});

if (skip) test(`integration: skipped (${skip})`, { skip });
