import assert from "node:assert/strict";
import { test } from "node:test";
import { QueueFullError } from "../src/errors.js";
import { newMsgId, Outbox } from "../src/outbox.js";

test("a publication without msgId gets a fresh one", () => {
  const o = new Outbox(10);
  const a = o.add("r", 1).entry;
  const b = o.add("r", 2).entry;
  assert.notEqual(a.msgId, b.msgId);
  assert.ok(a.msgId.length >= 1 && a.msgId.length <= 64);
  assert.equal(o.add("r", 3, "mine").entry.msgId, "mine");
});

test("unsent in order; after a lost connection everything unacked is unsent again", async () => {
  const o = new Outbox(10);
  const [a, b, c] = [o.add("r", "a"), o.add("r", "b"), o.add("r", "c")];
  assert.deepEqual(o.unsent().map((e) => e.data), ["a", "b", "c"]);
  for (const e of o.unsent()) e.sent = true;
  assert.deepEqual(o.unsent(), []);
  o.settle(b.entry, { ack: { epoch: "e", offset: 2 } });
  assert.deepEqual(await b.acked, { epoch: "e", offset: 2 });
  o.connectionLost();
  const again = o.unsent();
  assert.deepEqual(again.map((e) => [e.data, e.msgId]), [
    ["a", a.entry.msgId],
    ["c", c.entry.msgId],
  ]);
});

test("the queue is bounded: QueueFullError at the limit, room again after an ack", async () => {
  const o = new Outbox(2);
  const a = o.add("r", 1);
  o.add("r", 2);
  assert.throws(
    () => o.add("r", 3),
    (e: unknown) => e instanceof QueueFullError && e.limit === 2 && e.name === "QueueFullError",
  );
  o.settle(a.entry, { ack: { epoch: "e", offset: 1 } });
  await a.acked;
  assert.equal(o.add("r", 3).entry.data, 3);
  assert.throws(() => new Outbox(0), RangeError);
});

test("failAll rejects everything queued", async () => {
  const o = new Outbox(5);
  const a = o.add("r", 1);
  o.failAll(new Error("closed"));
  await assert.rejects(a.acked, /closed/);
  assert.equal(o.size, 0);
});

test("msg ids are distinct and fit the protocol's 64 bytes", () => {
  const ids = new Set(Array.from({ length: 1000 }, newMsgId));
  assert.equal(ids.size, 1000);
  for (const id of ids) assert.ok(id.length > 0 && id.length <= 64);
});
