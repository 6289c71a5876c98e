import { decodeMulti, encode } from "@msgpack/msgpack";

/** Where a room's deliveries resume: the last offset processed, in its epoch. */
export interface Since {
  epoch: string;
  offset: number;
}

export type Command =
  | { op: "join"; id: number; room: string; since?: Since; presence?: boolean }
  | { op: "leave"; id: number; room: string }
  | { op: "pub"; id: number; room: string; data: unknown; msg_id: string }
  | { op: "send"; id: number; to: string; data: unknown }
  | { op: "presence"; id: number; room: string }
  | { op: "ping"; id: number };

export interface HelloEvent {
  op: "hello";
  v: number;
  conn: string;
  node: string;
  user: string;
  heartbeat_ms: number;
  max_frame: number;
  /** The reconnection policy the cluster asks for (servers since 0.1). */
  reconnect?: { base_ms: number; max_ms: number; jitter: string; after_drain_ms: number };
}

/**
 * Every reply and event of protocol v1. Replies (`ok`, `err`, `pong`) carry
 * the command's `id`; the `ok` fields depend on the command answered.
 */
export type ServerEvent =
  | HelloEvent
  | {
      op: "ok";
      id: number;
      room?: string;
      epoch?: string;
      offset?: number;
      recovered?: boolean;
      delivered?: number;
      users?: string[];
    }
  | { op: "err"; id: number; code: number; reason: string }
  | { op: "pong"; id: number }
  | { op: "msg"; room: string; offset: number; from: string; data: unknown }
  | { op: "dm"; from: string; data: unknown }
  | { op: "joined" | "left"; room: string; user: string }
  | { op: "reset"; room: string; epoch: string; offset: number };

export function encodeCommand(command: Command): Uint8Array {
  // `since` and `presence` are optional on the wire: undefined must not
  // become nil, which the server would refuse as a malformed field.
  return encode(command, { ignoreUndefined: true });
}

/**
 * The events of one binary WebSocket message: one or more MessagePack maps,
 * concatenated (the server coalesces events under load). Values that are
 * not maps with a string `op` are skipped, as unknown keys are.
 */
export function decodeEvents(message: ArrayBuffer | ArrayBufferView): ServerEvent[] {
  const bytes =
    message instanceof ArrayBuffer
      ? new Uint8Array(message)
      : new Uint8Array(message.buffer, message.byteOffset, message.byteLength);
  const events: ServerEvent[] = [];
  for (const value of decodeMulti(bytes)) {
    if (isEvent(value)) events.push(value);
  }
  return events;
}

function isEvent(value: unknown): value is ServerEvent {
  return (
    typeof value === "object" &&
    value !== null &&
    typeof (value as { op?: unknown }).op === "string"
  );
}
