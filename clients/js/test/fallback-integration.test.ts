import assert from "node:assert/strict";
import { after, describe, test } from "node:test";
import WebSocket from "ws";
import { type Client, type ClientOptions, connect } from "../src/client.js";
import type { RoomEvents, RoomMessage } from "../src/room.js";
import { NoUpgradeProxy } from "./no-upgrade-proxy.js";
import { type Server, skipReason, startServer, stopServer } from "./server.js";
import { until } from "./until.js";

const skip = skipReason();
const clients: Client[] = [];

function open(url: string, options: ClientOptions = {}): Client {
  const client = connect(url, { WebSocket, backoffBaseMs: 50, backoffCapMs: 200, ...options });
  clients.push(client);
  return client;
}

function record(client: Client, room: string): RoomMessage[] {
  const msgs: RoomMessage[] = [];
  client.room(room).on("msg", (m) => msgs.push(m));
  return msgs;
}

const view = (msgs: RoomMessage[]) => msgs.map((m) => [m.offset, m.from, m.data]);

describe("the HTTP fallback against a real switchboard", { skip: skip ?? false }, () => {
  let node: Server | undefined;
  let proxy: NoUpgradeProxy | undefined;
  after(async () => {
    clients.splice(0).forEach((c) => c.close());
    await proxy?.close();
    if (node) await stopServer(node);
  });

  test("upgrades refused by a proxy: the SDK falls back to SSE and HTTP and messages flow both ways, across a cut", async () => {
    node = await startServer();
    proxy = await NoUpgradeProxy.start(node.addr);
    // Carol is behind the proxy (Node 20 has no EventSource: the fetch
    // reader); Dave is a WebSocket member of the same room.
    const carol = open(`ws://${proxy.addr}/ws?user=carol`);
    const dave = open(`ws://${node.addr}/ws?user=dave`);
    const connected: string[] = [];
    carol.on("connected", (c) => connected.push(c.transport));
    const recoveries: RoomEvents["recovery"][] = [];
    carol.room("fb").on("recovery", (r) => recoveries.push(r));
    const carolMsgs = record(carol, "fb");
    const daveMsgs = record(dave, "fb");
    const carolDms: unknown[] = [];
    carol.on("dm", (d) => carolDms.push(d));
    const daveDms: unknown[] = [];
    dave.on("dm", (d) => daveDms.push(d));
    await dave.room("fb").join();
    await carol.room("fb").join();
    assert.equal(carol.transport, "sse");
    assert.deepEqual(connected, ["sse"]);
    assert.equal(proxy.refusedUpgrades, 3, "the default: three refused upgrades, then the fallback");

    const publish = async (from: Client, i: number) => {
      const ack = await from.room("fb").publish({ n: i, bytes: new Uint8Array([i, 255]) });
      assert.ok(ack.offset > 0);
    };
    for (let i = 0; i < 30; i++) await publish(i % 2 === 0 ? carol : dave, i);
    await until(() => carolMsgs.length === 30 && daveMsgs.length === 30, "30 messages at both", 10_000);
    assert.deepEqual(view(carolMsgs), view(daveMsgs));
    assert.deepEqual(carolMsgs.map((m) => (m.data as { n: number }).n), [...Array(30).keys()]);
    assert.deepEqual((carolMsgs[7]!.data as { bytes: Uint8Array }).bytes, new Uint8Array([7, 255]), "binary passes");
    assert.deepEqual(new Set(carolMsgs.map((m) => m.from)), new Set(["carol", "dave"]));

    assert.equal(await carol.send("dave", "from sse"), 1);
    assert.equal(await dave.send("carol", { to: "sse" }), 1);
    await until(() => carolDms.length === 1 && daveDms.length === 1, "both dms");
    assert.deepEqual(carolDms, [{ from: "dave", data: { to: "sse" } }]);
    assert.deepEqual(daveDms, [{ from: "carol", data: "from sse" }]);

    // The network cuts Carol's stream; messages go on meanwhile, hers
    // too (queued until the stream is back).
    proxy.cut();
    const queued = [30, 32].map((i) => carol.room("fb").publish({ n: i }));
    for (const i of [31, 33, 34, 35]) await dave.room("fb").publish({ n: i });
    await Promise.all(queued);
    await until(() => carolMsgs.length === 36 && daveMsgs.length === 36, "36 messages at both", 15_000);
    assert.deepEqual(view(carolMsgs), view(daveMsgs));
    assert.deepEqual(recoveries.map((r) => r.recovered), [true]);
    assert.equal(carol.transport, "sse");

    // A second room: the stream is opened again for both, resuming fb.
    const more = record(carol, "fb2");
    await carol.room("fb2").join();
    await dave.room("fb").publish({ n: 36 });
    await dave.room("fb2").publish("second room");
    await until(() => more.length === 1 && carolMsgs.length === 37 && daveMsgs.length === 37, "both rooms", 10_000);
    assert.deepEqual(view(carolMsgs), view(daveMsgs));
    assert.deepEqual(carolMsgs.map((m) => m.offset), [...Array(37).keys()].map((i) => i + 1), "once each, in order");
    assert.equal(more[0]!.data, "second room");
  });
});

if (skip) test(`fallback integration: skipped (${skip})`, { skip });
