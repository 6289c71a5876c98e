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
  const exited = new Promise<number | null>((res) => proc.once("exit", (code) => res(code)));
  return new Promise((resolvePromise, reject) => {
    const timer = setTimeout(() => reject(new Error("switchboard did not log `listening` within 15 s")), 15_000);
    // The log is read to the end so that the server never blocks on a full pipe.
    const lines = createInterface({ input: proc.stderr! });
    lines.on("line", (line) => {
      const addr = / listening.*addr=(\S+)/.exec(line)?.[1];
      if (addr && !line.includes("cluster listening")) {
        clearTimeout(timer);
        resolvePromise({ proc, addr, exited });
      }
    });
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`switchboard exited with ${code} before listening`));
    });
  });
}

/** Stops a node (SIGKILL unless told), waiting for its exit. */
export async function stopServer(server: Server, signal: NodeJS.Signals = "SIGKILL"): Promise<void> {
  if (server.proc.exitCode === null && server.proc.signalCode === null) server.proc.kill(signal);
  await server.exited;
}
