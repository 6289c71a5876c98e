import { type ChildProcess, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

/** clients/js, from dist/test/ where the compiled tests run. */
const PACKAGE_DIR = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");

/** The switchboard binary: $SWITCHBOARD_BIN, else the workspace's debug build. */
export function switchboardBin(): string {
  return process.env.SWITCHBOARD_BIN ?? resolve(PACKAGE_DIR, "../../target/debug/switchboard");
}

/** Why the integration tests do not run here, or undefined if they do. */
export function skipReason(): string | undefined {
  if (process.env.SWITCHBOARD_SKIP_INTEGRATION === "1") {
    return "SWITCHBOARD_SKIP_INTEGRATION=1: not running against a real switchboard";
  }
  const bin = switchboardBin();
  if (!existsSync(bin)) {
    // Missing is a failure, not a skip: CI must not pass without the real server.
    throw new Error(`no switchboard binary at ${bin}: build it (cargo build --bin switchboard) or set SWITCHBOARD_BIN`);
  }
  return undefined;
}

export interface Server {
  readonly proc: ChildProcess;
  /** host:port of the HTTP listener, from the `listening addr=` log line. */
  readonly addr: string;
  /** host:port of the cluster listener, when the node is in a cluster. */
  readonly clusterAddr: string | undefined;
  readonly exited: Promise<number | null>;
}

/**
 * Starts a real node, on `listen` (default a free port), with the extra
 * settings in `env` (`SWITCHBOARD__SECTION__KEY`).
 */
export function startServer(listen = "127.0.0.1:0", env: Record<string, string> = {}): Promise<Server> {
  const proc = spawn(switchboardBin(), [], {
    env: { ...process.env, RUST_LOG: "info", SWITCHBOARD__HTTP__LISTEN: listen, ...env },
    stdio: ["ignore", "ignore", "pipe"],
  });
  const clustered = env.SWITCHBOARD__CLUSTER__LISTEN !== undefined;
  const exited = new Promise<number | null>((res) => proc.once("exit", (code) => res(code)));
  return new Promise((resolvePromise, reject) => {
    const timer = setTimeout(() => reject(new Error("switchboard did not log `listening` within 15 s")), 15_000);
    let addr: string | undefined;
    let clusterAddr: string | undefined;
    // The log is read to the end so that the server never blocks on a full pipe.
    const lines = createInterface({ input: proc.stderr! });
    lines.on("line", (line) => {
      const found = / listening.*addr=(\S+)/.exec(line)?.[1];
      if (!found) return;
      if (line.includes("cluster listening")) clusterAddr = found;
      else addr = found;
      if (addr && (clusterAddr || !clustered)) {
        clearTimeout(timer);
        resolvePromise({ proc, addr, clusterAddr, exited });
      }
    });
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`switchboard exited with ${code} before listening`));
    });
  });
}

/**
 * Starts `n` nodes `n1..` as one cluster, each on ports of its own choosing,
 * seeded with the nodes started before it; resolves once every node sees
 * all `n` (`GET /api/node`).
 */
export async function startCluster(n: number, env: Record<string, string> = {}): Promise<Server[]> {
  const cookie = `js-${Math.random().toString(16).slice(2)}`;
  const nodes: Server[] = [];
  for (let i = 1; i <= n; i++) {
    nodes.push(
      await startServer("127.0.0.1:0", {
        SWITCHBOARD__NODE__NAME: `n${i}`,
        SWITCHBOARD__CLUSTER__LISTEN: "127.0.0.1:0",
        SWITCHBOARD__CLUSTER__SEEDS: nodes.map((s) => s.clusterAddr).join(","),
        SWITCHBOARD__CLUSTER__COOKIE: cookie,
        ...env,
      }),
    );
  }
  const deadline = Date.now() + 20_000;
  for (const node of nodes) {
    for (;;) {
      const seen = await fetch(`http://${node.addr}/api/node`)
        .then((r) => r.json() as Promise<{ nodes: number; ready: boolean }>)
        .catch(() => undefined);
      if (seen?.nodes === n && seen.ready) break;
      if (Date.now() > deadline) throw new Error(`node ${node.addr} did not see ${n} nodes within 20 s`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  return nodes;
}

/** Stops a node (SIGKILL unless told), waiting for its exit. */
export async function stopServer(server: Server, signal: NodeJS.Signals = "SIGKILL"): Promise<void> {
  if (server.proc.exitCode === null && server.proc.signalCode === null) server.proc.kill(signal);
  await server.exited;
}
