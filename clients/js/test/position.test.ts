import assert from "node:assert/strict";
import { test } from "node:test";
import { Position } from "../src/position.js";

test("a first join continues after the room's newest offset", () => {
  const p = new Position();
  assert.equal(p.since(), undefined);
  assert.equal(p.accept(1), false, "nothing is accepted before the join's ok");
  assert.equal(p.joined({ epoch: "e1", offset: 5 }), "joined");
  assert.deepEqual(p.since(), { epoch: "e1", offset: 5 });
  assert.equal(p.accept(5), false);
  assert.equal(p.accept(6), true);
  assert.deepEqual(p.since(), { epoch: "e1", offset: 6 });
});

test("duplicates and old offsets are dropped, in order ones pass", () => {
  const p = new Position();
  p.joined({ epoch: "e1", offset: 0 });
  const got = [1, 2, 2, 1, 3, 3, 4].filter((o) => p.accept(o));
  assert.deepEqual(got, [1, 2, 3, 4]);
});

test("recovered: true keeps our offset, so the replay is taken once", () => {
  const p = new Position();
  p.joined({ epoch: "e1", offset: 0 });
  p.accept(1);
  p.accept(2);
  // Rejoin with since {e1, 2}; the room is at 4 now.
  assert.equal(p.joined({ epoch: "e1", offset: 4, recovered: true }), "recovered");
  assert.deepEqual([2, 3, 4, 4].filter((o) => p.accept(o)), [3, 4]);
});

test("recovered: false is reported and continues from the new epoch and offset", () => {
  const p = new Position();
  p.joined({ epoch: "e1", offset: 0 });
  p.accept(1);
  assert.equal(p.joined({ epoch: "e2", offset: 7, recovered: false }), "lost");
  assert.deepEqual(p.since(), { epoch: "e2", offset: 7 });
  assert.equal(p.accept(7), false);
  assert.equal(p.accept(8), true);
});

test("recovered: true for another epoch than ours is not trusted as a recovery", () => {
  const p = new Position();
  p.joined({ epoch: "e1", offset: 3 });
  assert.equal(p.joined({ epoch: "e9", offset: 3, recovered: true }), "lost");
  assert.deepEqual(p.since(), { epoch: "e9", offset: 3 });
});

test("a reset moves to the new epoch: low offsets of the new epoch pass again", () => {
  const p = new Position();
  p.joined({ epoch: "e1", offset: 40 });
  p.accept(41);
  p.reset("e2", 0);
  assert.deepEqual(p.since(), { epoch: "e2", offset: 0 });
  assert.equal(p.accept(1), true);
  assert.equal(p.accept(1), false);
});

test("clear forgets the room", () => {
  const p = new Position();
  p.joined({ epoch: "e1", offset: 2 });
  p.clear();
  assert.equal(p.since(), undefined);
  assert.equal(p.accept(3), false);
});
