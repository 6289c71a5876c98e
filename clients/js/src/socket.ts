/**
 * The part of the WebSocket API the SDK uses: what browsers' `WebSocket`
 * and the `ws` package's both provide.
 */
export interface SocketLike {
  binaryType: string;
  // Handlers take `never` so that any implementation's own event type
  // (DOM MessageEvent, ws's MessageEvent) is accepted; the SDK reads only
  // the fields typed in the handlers it installs.
  onopen: ((event: never) => void) | null;
  onmessage: ((event: never) => void) | null;
  onclose: ((event: never) => void) | null;
  onerror: ((event: never) => void) | null;
  send(data: Uint8Array): void;
  close(code?: number, reason?: string): void;
}

export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => SocketLike;

/** The subprotocol the server selects when offered. */
export const SUBPROTOCOL = "switchboard.v1";

/** The global WebSocket (browsers, Node >= 22), or a clear error. */
export function defaultWebSocket(): WebSocketConstructor {
  const ctor = (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
  if (!ctor) {
    throw new TypeError(
      "no global WebSocket here (Node 20): pass one, e.g. connect(url, { WebSocket }) with `import WebSocket from \"ws\"`",
    );
  }
  return ctor;
}
