import type { Since } from "./codec.js";
import { Emitter } from "./emitter.js";
import { ClosedError, type ServerError } from "./errors.js";
import type { PublishAck } from "./outbox.js";
import { Position } from "./position.js";

/** A room message, as handed to the application: each one once, in order. */
export interface RoomMessage {
  room: string;
  /** The epoch the message belongs to (the wire's `msg` leaves it implied). */
  epoch: string;
  offset: number;
  /** The publisher's user id, or "api" for the HTTP API. */
  from: string;
  data: unknown;
}

export interface RoomEvents {
  msg: RoomMessage;
  /** A user's first connection in the room (not sent with `presence: false`). */
  joined: { room: string; user: string };
  /** A user's last connection left the room (not sent with `presence: false`). */
  left: { room: string; user: string };
  /**
   * The room's sequence restarted while we stayed a member: what came
   * before `offset` in the new `epoch` cannot be recovered. Reload the
   * room's state from your source of truth.
   */
  reset: { room: string; epoch: string; offset: number };
  /**
   * A rejoin after a reconnect was answered. `recovered: true`: the missed
   * messages follow as `msg`, nothing was lost. `recovered: false`: nothing
   * was replayed; messages continue after `offset` in `epoch` and the
   * room's state must be reloaded, as after `reset`.
   */
  recovery: { room: string; recovered: boolean; epoch: string; offset: number; since: Since };
  /** A rejoin after a reconnect was refused: the room is no longer joined. */
  error: ServerError;
}

export interface JoinOptions {
  /** false: do not receive `joined`/`left` (large rooms). Default true. */
  presence?: boolean;
}

/** Where a join left the room: deliveries continue after `offset` in `epoch`. */
export interface JoinResult {
  epoch: string;
  offset: number;
}

/** What a Room needs from its client. */
export interface RoomHost {
  sendJoin(room: Room): void;
  sendLeave(room: Room): Promise<void>;
  publish(room: string, data: unknown, msgId: string | undefined): Promise<PublishAck>;
  presence(room: string): Promise<string[]>;
}

type State = "idle" | "joining" | "joined";

/** One room, as the application sees it; obtained from `client.room(name)`. */
export class Room extends Emitter<RoomEvents> {
  #state: State = "idle";
  #presence = true;
  readonly #position = new Position();
  #joined: Promise<JoinResult> | undefined;
  #settleJoin: { resolve: (r: JoinResult) => void; reject: (e: Error) => void } | undefined;

  /** @internal */
  constructor(
    readonly name: string,
    private readonly host: RoomHost,
  ) {
    super();
  }

  /** Whether the application wants to be in the room (joined, or joining). */
  get active(): boolean {
    return this.#state !== "idle";
  }

  /** @internal Whether the application asked for `joined`/`left` (the default). */
  get wantsPresence(): boolean {
    return this.#presence;
  }

  /** The epoch and offset of the last message handed over, once joined. */
  get position(): Since | undefined {
    return this.#position.since();
  }

  /**
   * Joins the room; resolves with the room's epoch and newest offset once
   * the server answers (after the connection is up, if it is not yet).
   * The SDK then keeps the room joined across reconnects. Calling it again
   * while joined returns the same answer.
   */
  join(options: JoinOptions = {}): Promise<JoinResult> {
    if (this.#joined) return this.#joined;
    this.#presence = options.presence ?? true;
    this.#state = "joining";
    const joined = new Promise<JoinResult>((resolve, reject) => {
      this.#settleJoin = { resolve, reject };
    });
    // A join started without awaiting it and then cancelled (leave, close)
    // must not crash Node with an unhandled rejection; an awaiter still
    // gets the error.
    joined.catch(() => undefined);
    this.#joined = joined;
    // May settle it at once (a closed client), so `joined` is kept above.
    this.host.sendJoin(this);
    return joined;
  }

  /** Leaves the room; no `msg` of it is delivered after this is called. */
  leave(): Promise<void> {
    if (this.#state === "idle") return Promise.resolve();
    this.#forget(new ClosedError(`room ${this.name} left before its join was answered`));
    return this.host.sendLeave(this);
  }

  /**
   * Publishes `data` (any MessagePack-encodable value). Resolves with the
   * epoch and offset the room gave it. Membership is not needed.
   * Unacknowledged publications survive reconnects and are re-sent with
   * the same `msgId`, which the server publishes only once.
   */
  publish(data: unknown, options: { msgId?: string } = {}): Promise<PublishAck> {
    return this.host.publish(this.name, data, options.msgId);
  }

  /** The distinct users present in the room, cluster-wide, sorted. */
  presence(): Promise<string[]> {
    return this.host.presence(this.name);
  }

  /** @internal The fields of the join command to send now. */
  joinFields(): { since?: Since; presence?: boolean } {
    const since = this.#position.since();
    return {
      ...(since && { since }),
      ...(!this.#presence && { presence: false }),
    };
  }

  /** @internal A join's `ok`; `since` is what the join asked for. */
  joinAnswered(ok: { epoch: string; offset: number; recovered?: boolean | undefined }, since: Since | undefined): void {
    if (this.#state === "idle") return;
    const outcome = this.#position.joined(ok);
    this.#state = "joined";
    this.#settleJoin?.resolve({ epoch: ok.epoch, offset: ok.offset });
    this.#settleJoin = undefined;
    if (since) {
      this.emit("recovery", {
        room: this.name,
        recovered: outcome === "recovered",
        epoch: ok.epoch,
        offset: this.#position.offset,
        since,
      });
    }
  }

  /** @internal A join's `err`. */
  joinRefused(error: ServerError): void {
    if (this.#state === "idle") return;
    const first = this.#settleJoin !== undefined;
    this.#forget(error);
    // The first join's caller has the error through its promise; a rejoin
    // has no caller, so the refusal is an event.
    if (!first) this.emit("error", error);
  }

  /** @internal The connection dropped: the next one joins again with since. */
  connectionLost(): void {
    if (this.#state === "joined") this.#state = "joining";
  }

  /** @internal A `msg` for this room. */
  deliver(ev: { offset: number; from: string; data: unknown }): void {
    if (this.#state !== "joined" || !this.#position.accept(ev.offset)) return;
    this.emit("msg", {
      room: this.name,
      epoch: this.#position.epoch as string,
      offset: ev.offset,
      from: ev.from,
      data: ev.data,
    });
  }

  /** @internal A `joined` or `left` for this room. */
  presenceChange(op: "joined" | "left", user: string): void {
    // A stream shared with rooms that want presence gets it for all.
    if (this.#state === "idle" || !this.#presence) return;
    this.emit(op, { room: this.name, user });
  }

  /** @internal A `reset` for this room. */
  reset(epoch: string, offset: number): void {
    if (this.#state === "idle") return;
    this.#position.reset(epoch, offset);
    this.emit("reset", { room: this.name, epoch, offset });
  }

  /** @internal The client closed. */
  closed(error: ClosedError): void {
    this.#forget(error);
  }

  #forget(error: Error): void {
    this.#state = "idle";
    this.#position.clear();
    this.#settleJoin?.reject(error);
    this.#settleJoin = undefined;
    this.#joined = undefined;
  }
}
