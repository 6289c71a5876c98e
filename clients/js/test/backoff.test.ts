import assert from "node:assert/strict";
import { test } from "node:test";
import { Backoff, drainSpread } from "../src/backoff.js";

test("the bound doubles from base and stops at cap", () => {
  const b = new Backoff(100, 1000, () => 0.999999);
  const ceilings: number[] = [];
  const delays: number[] = [];
  for (let i = 0; i < 7; i++) {
    ceilings.push(b.ceiling());
    delays.push(b.next());
  }
  assert.deepEqual(ceilings, [100, 200, 400, 800, 1000, 1000, 1000]);
  delays.forEach((d, i) => assert.ok(d < ceilings[i]! && d >= ceilings[i]! - 1, `delay ${d} near ceiling ${ceilings[i]}`));
});

test("full jitter: every delay in [0, bound), spread over the window", () => {
  const b = new Backoff(1000, 1000);
  const delays = Array.from({ length: 2000 }, () => b.next());
  assert.ok(delays.every((d) => Number.isInteger(d) && d >= 0 && d < 1000));
  const mean = delays.reduce((a, d) => a + d, 0) / delays.length;
  assert.ok(mean > 400 && mean < 600, `mean ${mean} near 500`);
  assert.ok(Math.min(...delays) < 100 && Math.max(...delays) >= 900, "both ends of the window are used");
  assert.equal(new Backoff(10, 20, () => 0).next(), 0, "the lowest draw is an immediate retry");
});

test("a success resets the schedule to base", () => {
  const b = new Backoff(50, 10_000, () => 0.5);
  for (let i = 0; i < 6; i++) b.next();
  assert.equal(b.attempts, 6);
  assert.equal(b.ceiling(), 3200);
  b.reset();
  assert.equal(b.attempts, 0);
  assert.equal(b.ceiling(), 50);
  assert.equal(b.next(), 25);
});

test("a long outage does not overflow the bound", () => {
  const b = new Backoff(1, 30_000, () => 0.5);
  for (let i = 0; i < 5000; i++) b.next();
  assert.equal(b.ceiling(), 30_000);
  assert.equal(b.next(), 15_000);
});

test("nonsensical bounds are refused", () => {
  assert.throws(() => new Backoff(0, 10), RangeError);
  assert.throws(() => new Backoff(100, 10), RangeError);
});

test("after a drain, a random delay up to what its close reason names", () => {
  const reason = "node draining; reconnect within 2000 ms";
  assert.equal(drainSpread(reason, () => 0), 0);
  assert.equal(drainSpread(reason, () => 0.999999), 2000);
  const delays = Array.from({ length: 500 }, () => drainSpread(reason));
  assert.ok(delays.every((d) => d >= 0 && d <= 2000));
  assert.ok(Math.max(...delays) > 1000, "the window is used");
  assert.equal(drainSpread("node draining"), 0, "an older server: at once");
});
