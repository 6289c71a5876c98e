export { connect, Client, DEFAULTS, CLIENT_CLOSE, type ClientOptions, type ClientEvents, type ConnectionState } from "./client.js";
export { Room, type RoomEvents, type RoomMessage, type JoinOptions, type JoinResult } from "./room.js";
export type { PublishAck } from "./outbox.js";
export type { Since } from "./codec.js";
export type { SocketLike, WebSocketConstructor } from "./socket.js";
export { FallbackPolicy, type Transport } from "./fallback.js";
export type { EventSourceConstructor, EventSourceLike, FetchLike, ResponseLike } from "./sse.js";
export { Backoff } from "./backoff.js";
export {
  SwitchboardError,
  ServerError,
  QueueFullError,
  NotConnectedError,
  ClosedError,
  MessageTooLargeError,
} from "./errors.js";
