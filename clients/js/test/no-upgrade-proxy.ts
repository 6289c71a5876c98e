import { createServer, request, type Server } from "node:http";
import type { Socket } from "node:net";

/**
 * An HTTP proxy in front of a node that refuses every WebSocket upgrade
 * with 403, as some corporate proxies and CDNs do, and passes every other
 * request (event streams included) through. `cut()` ends every connection
 * it carries, as a network failure would.
 */
export class NoUpgradeProxy {
  refusedUpgrades = 0;
  readonly #server: Server;
  readonly #sockets = new Set<Socket>();

  private constructor(server: Server) {
    this.#server = server;
  }

  static start(target: string): Promise<NoUpgradeProxy> {
    const i = target.lastIndexOf(":");
    const [host, port] = [target.slice(0, i), Number(target.slice(i + 1))];
    const server = createServer((req, res) => {
      const upstream = request(
        { host, port, method: req.method, path: req.url, headers: req.headers, agent: false },
        (answer) => {
          res.writeHead(answer.statusCode ?? 502, answer.headers);
          answer.pipe(res);
        },
      );
      upstream.on("error", () => res.destroy());
      res.on("close", () => upstream.destroy());
      req.pipe(upstream);
    });
    const proxy = new NoUpgradeProxy(server);
    server.on("connection", (socket: Socket) => {
      proxy.#sockets.add(socket);
      socket.on("close", () => proxy.#sockets.delete(socket));
    });
    server.on("upgrade", (_req, socket: Socket) => {
      proxy.refusedUpgrades += 1;
      socket.end("HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    });
    return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(proxy)));
  }

  get addr(): string {
    const a = this.#server.address();
    if (a === null || typeof a === "string") throw new Error("proxy not listening");
    return `127.0.0.1:${a.port}`;
  }

  /** Resets every connection it carries; new ones pass. */
  cut(): void {
    for (const s of this.#sockets) s.resetAndDestroy();
    this.#sockets.clear();
  }

  close(): Promise<void> {
    this.cut();
    return new Promise((resolve) => this.#server.close(() => resolve()));
  }
}
