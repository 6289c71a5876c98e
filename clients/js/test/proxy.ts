import { createConnection, createServer, type Server, type Socket } from "node:net";

/**
 * A TCP proxy in front of a node, as a network between a browser and the
 * gateway: it can go deaf (the server's bytes stop reaching the client, as
 * when replies are lost on the way) and cut every connection it carries.
 */
export class FaultProxy {
  deaf = false;
  readonly #server: Server;
  readonly #pairs = new Set<[Socket, Socket]>();

  private constructor(server: Server) {
    this.#server = server;
  }

  static start(target: string): Promise<FaultProxy> {
    const [host, port] = splitAddr(target);
    const server = createServer();
    const proxy = new FaultProxy(server);
    server.on("connection", (client) => {
      const upstream = createConnection({ host, port });
      const pair: [Socket, Socket] = [client, upstream];
      proxy.#pairs.add(pair);
      client.on("data", (d) => upstream.write(d));
      upstream.on("data", (d) => {
        if (!proxy.deaf) client.write(d);
      });
      const end = () => {
        proxy.#pairs.delete(pair);
        client.destroy();
        upstream.destroy();
      };
      client.on("close", end).on("error", end);
      upstream.on("close", end).on("error", end);
    });
    return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(proxy)));
  }

  get addr(): string {
    const a = this.#server.address();
    if (a === null || typeof a === "string") throw new Error("proxy not listening");
    return `127.0.0.1:${a.port}`;
  }

  /** Resets every connection it carries (new ones pass, and are heard). */
  cut(): void {
    this.deaf = false;
    for (const [client, upstream] of this.#pairs) {
      client.resetAndDestroy();
      upstream.destroy();
    }
    this.#pairs.clear();
  }

  close(): Promise<void> {
    this.cut();
    return new Promise((resolve) => this.#server.close(() => resolve()));
  }
}

function splitAddr(addr: string): [string, number] {
  const i = addr.lastIndexOf(":");
  return [addr.slice(0, i), Number(addr.slice(i + 1))];
}
