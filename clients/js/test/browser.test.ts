import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { after, before, describe, test } from "node:test";
import { type Browser, chromium, type Page } from "playwright-core";
import WebSocket from "ws";
import { connect } from "../src/client.js";
import type { RoomMessage } from "../src/room.js";
import { NoUpgradeProxy } from "./no-upgrade-proxy.js";
import { FaultProxy } from "./proxy.js";
import { type Server, skipReason, startCluster, startServer, stopServer } from "./server.js";
import { until } from "./until.js";

/**
 * The demo page (`GET /demo`, the SDK as bundled into the gateway) in
 * headless Chromium against real nodes. Debian's chromium: tools that
 * download their own browser build cannot here.
 */
const CHROMIUM = process.env.CHROMIUM_BIN ?? "/usr/bin/chromium";

function browserSkip(): string | undefined {
  const reason = skipReason();
  if (reason) return reason;
  if (!existsSync(CHROMIUM)) {
    throw new Error(`no Chromium at ${CHROMIUM}: apt-get install chromium, or set CHROMIUM_BIN`);
  }
  return undefined;
}

const skip = browserSkip();

interface Shown {
  offset: number;
  text: string;
}

async function openDemo(browser: Browser, addr: string, user: string, room: string, nodes?: string[]): Promise<Page> {
  const page = await browser.newPage();
  page.on("pageerror", (e) => console.error(`[${user}] page error: ${e.message}`));
  const q = new URLSearchParams({ user, room });
  if (nodes) q.set("nodes", nodes.join(","));
  await page.goto(`http://${addr}/demo?${q}`);
  await page.click("#join");
  await page.waitForSelector("#text:not([disabled])");
  return page;
}

function shown(page: Page): Promise<Shown[]> {
  return page.$$eval("#messages li[data-offset]", (lis) =>
    lis.map((li) => ({
      offset: Number((li as HTMLElement).dataset.offset),
      text: li.querySelector(".text")?.textContent ?? "",
    })),
  );
}

async function say(page: Page, text: string): Promise<void> {
  await page.fill("#text", text);
  await page.press("#text", "Enter");
}

/** Waits until the page shows a message with this text. */
async function sees(page: Page, text: string, timeout = 15_000): Promise<void> {
  await page.waitForFunction(
    (t) => [...document.querySelectorAll("#messages li .text")].some((e) => e.textContent === t),
    text,
    { timeout },
  );
}

function expectExactly(list: Shown[], texts: string[]): void {
  assert.deepEqual(
    list,
    texts.map((text, i) => ({ offset: i + 1, text })),
  );
}

describe("the demo page in Chromium", { skip }, () => {
  let browser: Browser;
  before(async () => {
    browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
  });
  after(async () => {
    await browser?.close();
  });

  test("two pages chat through the demo, with presence", async () => {
    const node = await startServer();
    try {
      const alice = await openDemo(browser, node.addr, "alice", "lobby");
      const bob = await openDemo(browser, node.addr, "bob", "lobby");
      await alice.waitForFunction(() => document.querySelectorAll("#presence li").length === 2);
      assert.deepEqual(await alice.$$eval("#presence li", (l) => l.map((e) => e.textContent)), ["alice", "bob"]);
      await say(alice, "hello bob");
      await sees(bob, "hello bob");
      await say(bob, "hi alice");
      await sees(alice, "hi alice");
      for (const page of [alice, bob]) expectExactly(await shown(page), ["hello bob", "hi alice"]);
      assert.equal(await alice.textContent("#offset"), "2");
      // The node's metrics, read by the page from /metrics.
      await alice.waitForSelector('#metrics dd[data-metric="switchboard_connections"]');
      await bob.close();
      await alice.waitForFunction(() => document.querySelectorAll("#presence li").length === 1);
    } finally {
      await stopServer(node);
    }
  });

  test("a page whose connection is cut recovers what it missed and re-sends its unacknowledged message once", async () => {
    const node = await startServer();
    const proxy = await FaultProxy.start(node.addr);
    try {
      // Alice's socket goes through the proxy; the page comes from the node.
      const alice = await openDemo(browser, node.addr, "alice", "r", [proxy.addr]);
      const bob = await openDemo(browser, node.addr, "bob", "r");
      await say(bob, "b1");
      await sees(alice, "b1");
      // The node's replies stop reaching Alice: her message is published
      // (Bob sees it) but its ok never arrives.
      proxy.deaf = true;
      await say(alice, "a1");
      await sees(bob, "a1");
      assert.equal(await alice.textContent("#queued"), "1");
      await say(bob, "b2");
      await say(bob, "b3");
      await sees(bob, "b3");
      proxy.cut();
      // Back: rejoined with since, the missed messages replayed, a1 re-sent
      // with its msg_id and answered with its original offset.
      await sees(alice, "b3");
      await alice.waitForFunction(() => document.querySelector("#queued")?.textContent === "0");
      const log = await alice.$$eval("#log li", (l) => l.map((e) => e.textContent ?? ""));
      assert.ok(
        log.some((l) => l.includes("recovered everything after 1")),
        `no recovery in the log: ${log.join(" | ")}`,
      );
      await say(alice, "a2");
      await sees(bob, "a2");
      await sees(alice, "a2");
      for (const page of [alice, bob]) expectExactly(await shown(page), ["b1", "a1", "b2", "b3", "a2"]);
    } finally {
      await proxy.close();
      await stopServer(node);
    }
  });

  test("a plain EventSource sees what a WebSocket member sees, and resumes after a cut with nothing lost or repeated", async () => {
    const node = await startServer();
    const proxy = await FaultProxy.start(node.addr);
    // A WebSocket member of the room (the SDK, in Node).
    const member = connect(`ws://${node.addr}/ws?user=alice`, { WebSocket });
    const seen: RoomMessage[] = [];
    member.room("es").on("msg", (m) => seen.push(m));
    try {
      await member.room("es").join();
      // The page comes from the node through the proxy, so its stream is
      // same-origin and goes through the proxy too.
      const page = await browser.newPage();
      page.on("pageerror", (e) => console.error(`[eventsource] page error: ${e.message}`));
      await page.goto(`http://${proxy.addr}/healthz`);
      await page.evaluate(() => {
        const w = window as unknown as Record<string, unknown>;
        const got: unknown[] = [];
        const joins: unknown[] = [];
        let hellos = 0;
        let errors = 0;
        const es = new EventSource("/sse?rooms=es&user=carol");
        es.addEventListener("hello", () => hellos++);
        es.addEventListener("join", (e) => joins.push(JSON.parse(e.data)));
        es.addEventListener("msg", (e) => {
          const m = JSON.parse(e.data);
          got.push({ offset: m.offset, from: m.from, data: m.data, id: e.lastEventId });
        });
        es.addEventListener("error", () => errors++);
        w.stream = { got, joins, hellos: () => hellos, errors: () => errors };
      });
      type Stream = {
        got: { offset: number; from: string; data: unknown; id: string }[];
        joins: { recovered?: boolean }[];
        hellos: () => number;
        errors: () => number;
      };
      const stream = <T>(f: (s: Stream) => T) =>
        page.evaluate(`(${f.toString()})(window.stream)`) as Promise<T>;
      const waitStream = (f: (s: Stream) => boolean, timeout = 15_000) =>
        page.waitForFunction(`(${f.toString()})(window.stream)`, undefined, { timeout });
      await waitStream((s) => s.joins.length === 1);
      let n = 0;
      const publish = async (count: number) => {
        for (let i = 0; i < count; i++, n++) {
          if (n % 2 === 0) {
            await member.room("es").publish({ n });
          } else {
            const r = await fetch(`http://${node.addr}/api/publish?user=dave`, {
              method: "POST",
              headers: { "Content-Type": "application/json" },
              body: JSON.stringify({ room: "es", data: { n } }),
            });
            assert.equal(r.status, 200, await r.text());
          }
        }
      };
      await publish(20);
      await waitStream((s) => s.got.length >= 10);
      // Cut mid-way: some of the 20 may still be on the wire.
      proxy.cut();
      await publish(20);
      // EventSource reconnects by itself after the server's retry (2-3 s)
      // and sends Last-Event-ID: the stream resumes where it was.
      await waitStream((s) => s.hellos() === 2 && s.got.length >= 40, 30_000);
      await publish(1);
      await waitStream((s) => s.got.length >= 41);
      await until(() => seen.length === 41, "the member's 41 messages");
      const got = await stream((s) => s.got);
      assert.deepEqual(
        got.map(({ offset, from, data }) => ({ offset, from, data })),
        seen.map(({ offset, from, data }) => ({ offset, from, data })),
        "the same messages in the same order, each once",
      );
      assert.deepEqual(got.map((m) => (m.data as { n: number }).n), [...Array(41).keys()]);
      assert.ok(got.every((m) => m.id.endsWith(`.${m.offset}`)), "each id is the position after its message");
      assert.deepEqual(await stream((s) => s.joins.map((j) => j.recovered)), [undefined, true]);
      assert.ok((await stream((s) => s.errors())) >= 1, "the cut was seen");
      await page.close();
    } finally {
      member.close();
      await proxy.close();
      await stopServer(node);
    }
  });

  test("the SDK in a page whose WebSocket upgrades are refused falls back to EventSource and HTTP", async () => {
    const node = await startServer();
    const proxy = await NoUpgradeProxy.start(node.addr);
    try {
      // Erin's page and everything it asks for go through the proxy.
      const erin = await openDemo(browser, proxy.addr, "erin", "fbr");
      const bob = await openDemo(browser, node.addr, "bob", "fbr");
      await say(bob, "b1");
      await sees(erin, "b1");
      await say(erin, "e1");
      await sees(bob, "e1");
      await say(bob, "b2");
      await sees(erin, "b2");
      for (const page of [erin, bob]) expectExactly(await shown(page), ["b1", "e1", "b2"]);
      assert.equal(proxy.refusedUpgrades, 3);
      const log = await erin.$$eval("#log li", (l) => l.map((e) => e.textContent ?? ""));
      assert.ok(log.some((l) => l.includes("over sse")), `not on the fallback: ${log.join(" | ")}`);
      // Cut: EventSource's stream ends, the SDK opens it again from its positions.
      proxy.cut();
      await say(bob, "b3");
      await sees(erin, "b3");
      await say(erin, "e2");
      await sees(bob, "e2");
      for (const page of [erin, bob]) expectExactly(await shown(page), ["b1", "e1", "b2", "b3", "e2"]);
    } finally {
      await proxy.close();
      await stopServer(node);
    }
  });

  test("a page on a drained node moves to another node of the cluster and loses nothing", async () => {
    const nodes: Server[] = await startCluster(3, { SWITCHBOARD__SHUTDOWN__DRAIN_S: "1" });
    const addrs = nodes.map((n) => n.addr);
    try {
      const alice = await openDemo(browser, addrs[0]!, "alice", "deploy", addrs);
      const bob = await openDemo(browser, addrs[2]!, "bob", "deploy", [addrs[2]!]);
      assert.equal(await alice.textContent("#node"), "n1");
      const sent: string[] = [];
      const publish = async (n: number) => {
        for (let i = 0; i < n; i++) {
          const text = `m${sent.length + 1}`;
          sent.push(text);
          await say(bob, text);
          await new Promise((r) => setTimeout(r, 50));
        }
      };
      await publish(5);
      await sees(alice, "m5");
      // Drain n1 (SIGTERM) while Bob keeps publishing.
      nodes[0]!.proc.kill("SIGTERM");
      await publish(20);
      assert.equal(await nodes[0]!.exited, 0);
      await sees(alice, sent.at(-1)!);
      await alice.waitForFunction(() => document.querySelector("#node")?.textContent !== "n1");
      await sees(bob, sent.at(-1)!);
      for (const page of [alice, bob]) expectExactly(await shown(page), sent);
      const log = await alice.$$eval("#log li", (l) => l.map((e) => e.textContent ?? ""));
      assert.ok(log.some((l) => l.includes("disconnected 1012")), `no 1012 in the log: ${log.join(" | ")}`);
      assert.ok(!log.some((l) => l.includes("recovered:false")), `lost history: ${log.join(" | ")}`);
    } finally {
      await Promise.all(nodes.map((n) => stopServer(n)));
    }
  });
});
