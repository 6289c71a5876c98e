/** Base class of every error the SDK rejects a promise with. */
export class SwitchboardError extends Error {
  override name = "SwitchboardError";
}

/**
 * The server answered a command with `err`. `code` is the protocol's error
 * code (400, 403, 404, 429, 503) and `reason` its one-line reason, which
 * starts with the offending field (`room:`, `rate:`, `msg_id:` ...).
 */
export class ServerError extends SwitchboardError {
  override name = "ServerError";
  constructor(
    readonly code: number,
    readonly reason: string,
    /** The command that failed: `join`, `pub`, `send`, `presence`, ... */
    readonly op: string,
  ) {
    super(`${op}: ${code} ${reason}`);
  }
}

/**
 * `publish` was called while `maxQueue` publications were still waiting for
 * their acknowledgement. Nothing was queued or sent.
 */
export class QueueFullError extends SwitchboardError {
  override name = "QueueFullError";
  constructor(readonly limit: number) {
    super(`publish queue full: ${limit} publications not yet acknowledged`);
  }
}

/**
 * A command that is not safe to repeat blindly (`send`, `presence`) was
 * made, or was in flight, while there was no open connection.
 */
export class NotConnectedError extends SwitchboardError {
  override name = "NotConnectedError";
}

/** The client was closed, or the room left, before the command finished. */
export class ClosedError extends SwitchboardError {
  override name = "ClosedError";
}

/**
 * The encoded command is larger than the server's `max_frame`: sending it
 * would make the server close the connection (1009), over and over on
 * every re-send.
 */
export class MessageTooLargeError extends SwitchboardError {
  override name = "MessageTooLargeError";
  constructor(
    readonly size: number,
    readonly limit: number,
  ) {
    super(`command of ${size} bytes exceeds the server's max_frame of ${limit} bytes`);
  }
}
