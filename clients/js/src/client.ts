import { encode } from "@msgpack/msgpack";
import { Backoff, drainSpread } from "./backoff.js";
import { type Command, decodeEvents, encodeCommand, type HelloEvent, type ServerEvent, type Since } from "./codec.js";
import { Emitter } from "./emitter.js";
import { ClosedError, MessageTooLargeError, NotConnectedError, ServerError } from "./errors.js";
import { FallbackPolicy, type Transport } from "./fallback.js";
import { Outbox, type Publication, type PublishAck } from "./outbox.js";
import { Room, type RoomHost } from "./room.js";
import { defaultWebSocket, type SocketLike, SUBPROTOCOL, type WebSocketConstructor } from "./socket.js";
import {
  endpoint,
  eventData,
  type EventSourceConstructor,
  type FetchLike,
  httpBase,
  openEventSource,
  openFetchStream,
  type ResponseLike,
  type Stream,
  streamPosition,
} from "./sse.js";

export interface ClientOptions {
  /** A fixed token, sent as `?token=` (browsers cannot set headers on a WebSocket). */
  token?: string;
  /** Called before every connection attempt for a fresh token; wins over `token`. */
  getToken?: () => string | Promise<string>;
  /** The WebSocket constructor; default the global one (pass `ws`'s on Node 20). */
  WebSocket?: WebSocketConstructor;
  /** First reconnection delay bound, ms. Default 500. */
  backoffBaseMs?: number;
  /** Largest reconnection delay bound, ms. Default 30000. */
  backoffCapMs?: number;
  /** How often to send a `ping` command while connected, ms. Default 20000. */
  pingIntervalMs?: number;
  /** A `pong` later than this declares the connection dead, ms. Default 10000. */
  pingTimeoutMs?: number;
  /** A connection attempt with no `hello` by then is abandoned, ms. Default 10000. */
  connectTimeoutMs?: number;
  /** Publications not yet acknowledged, at most. Default 1000. */
  maxQueue?: number;
  /**
   * WebSocket attempts in a row that fail before the server's `hello`
   * after which the client falls back to HTTP (Server-Sent Events to
   * receive, POST to send); `false`: never. Default 3.
   */
  fallbackAfter?: number | false;
  /** The EventSource constructor for the fallback; default the global one, else a `fetch` stream reader. */
  EventSource?: EventSourceConstructor;
  /** The `fetch` for the fallback; default the global one. */
  fetch?: FetchLike;
}

export const DEFAULTS = {
  backoffBaseMs: 500,
  backoffCapMs: 30_000,
  pingIntervalMs: 20_000,
  pingTimeoutMs: 10_000,
  connectTimeoutMs: 10_000,
  maxQueue: 1000,
  fallbackAfter: 3,
} as const;

/**
 * Close codes the client itself reports in `disconnected` when it gives up
 * on a connection that the network left open (the 4000-4999 range is free
 * for applications).
 */
export const CLIENT_CLOSE = {
  pingTimeout: 4000,
  connectTimeout: 4001,
  /** `reconnect()` was called. */
  reconnect: 4002,
  /** The server sent something the client cannot read; it connects again. */
  undecodable: 4003,
} as const;

export interface ClientEvents {
  /** A connection attempt starts; `attempt` counts from 1 since the last connection was up. */
  connecting: { attempt: number; transport: Transport };
  /**
   * The server's `hello` arrived; rooms are being rejoined. On the `sse`
   * fallback `maxFrame` is 0 (unknown: the server answers 413 to a body
   * too large), and with no room joined there is no stream yet, so no
   * `hello`: `conn`, `node` and `user` are empty.
   */
  connected: { conn: string; node: string; user: string; heartbeatMs: number; maxFrame: number; transport: Transport };
  /**
   * A connection or attempt ended: the WebSocket close code (or a client
   * code, CLIENT_CLOSE); on `sse` the HTTP status of a refused stream or
   * request, or 1006 for a stream that ended or a network failure.
   */
  disconnected: { code: number; reason: string; transport: Transport };
  /** Attempt number `attempt` (as `connecting` will count it) starts in `delay` ms. */
  reconnecting: { delay: number; attempt: number };
  /** A direct message (`send`) to this user. */
  dm: { from: string; data: unknown };
  /** A failure no promise can report: `getToken` threw, an `err` with id 0, an undecodable message. */
  error: Error;
}

/** `waiting`: between attempts, for the backoff delay. */
export type ConnectionState = "connecting" | "connected" | "waiting" | "closed";

/** A command waiting for its reply. */
type Pending =
  | { op: "join"; room: Room; since: Since | undefined; rejoin: boolean }
  | { op: "pub"; entry: Publication }
  | { op: "ping" }
  | { op: "leave" | "send" | "presence"; resolve: (ok: OkEvent) => void; reject: (e: Error) => void };

type OkEvent = Extract<ServerEvent, { op: "ok" }>;

/** Opens a client; it connects, and reconnects, in the background. */
export function connect(url: string | string[], options: ClientOptions = {}): Client {
  return new Client(url, options);
}

export class Client extends Emitter<ClientEvents> implements RoomHost {
  /** Any node of the cluster; each attempt takes the next one. */
  readonly #urls: URL[];
  #nextUrl = 0;
  readonly #options: ClientOptions;
  readonly #WebSocket: WebSocketConstructor;
  #backoff: Backoff;
  readonly #outbox: Outbox;
  readonly #rooms = new Map<string, Room>();
  readonly #pending = new Map<number, Pending>();
  #state: ConnectionState = "connecting";
  #sock: SocketLike | undefined;
  /** Bumped per attempt: events of a socket given up on are ignored. */
  #generation = 0;
  #hello: HelloEvent | undefined;
  #nextId = 1;
  /** Connection attempts since the last one that got its `hello`. */
  #attempt = 0;
  /** Rejoins sent on connect and not yet answered: publications wait for them. */
  #rejoining = 0;
  #pingOutstanding = false;
  /** Per room, the backoff of joins answered 503; gone once one succeeds. */
  readonly #joinBackoff = new Map<Room, Backoff>();
  /** Join retries waiting; a new connection rejoins everything anyway. */
  readonly #joinTimers = new Set<Timer>();
  #timers: { retry?: Timer; connect?: Timer; ping?: Timer; pong?: Timer } = {};
  readonly #policy: FallbackPolicy;
  /** The transport of the current connection or attempt. */
  #transport: Transport = "websocket";
  readonly #EventSource: EventSourceConstructor | undefined;
  readonly #fetch: FetchLike | undefined;
  /** On `sse`: the token of this connection, and its node's HTTP base. */
  #token: string | undefined;
  #base: URL | undefined;
  /** On `sse`: the current stream, if any room is joined, and its rooms in `rooms` order. */
  #stream: Stream | undefined;
  #streamGen = 0;
  readonly #streamRooms = new Map<string, { room: Room; since: Since | undefined; reconnect: boolean }>();
  #reopenQueued = false;
  /** On `sse`: a publication's POST is in flight (one at a time, in order). */
  #posting = false;

  constructor(url: string | string[], options: ClientOptions = {}) {
    super();
    this.#urls = (Array.isArray(url) ? url : [url]).map((u) => new URL(u));
    if (this.#urls.length === 0) throw new TypeError("connect: no URL");
    this.#options = options;
    this.#WebSocket = options.WebSocket ?? defaultWebSocket();
    this.#backoff = new Backoff(
      options.backoffBaseMs ?? DEFAULTS.backoffBaseMs,
      options.backoffCapMs ?? DEFAULTS.backoffCapMs,
    );
    this.#outbox = new Outbox(options.maxQueue ?? DEFAULTS.maxQueue);
    this.#policy = new FallbackPolicy(options.fallbackAfter ?? DEFAULTS.fallbackAfter);
    this.#EventSource = options.EventSource ?? (globalThis as { EventSource?: EventSourceConstructor }).EventSource;
    const globalFetch = (globalThis as { fetch?: FetchLike }).fetch;
    this.#fetch = options.fetch ?? globalFetch?.bind(globalThis);
    // Deferred so that handlers added right after connect() see `connecting`.
    queueMicrotask(() => void this.#open());
  }

  /** The current connection's `hello`, while connected. */
  get hello(): HelloEvent | undefined {
    return this.#hello;
  }

  get state(): ConnectionState {
    return this.#state;
  }

  /** The transport of the current connection or attempt: `websocket`, or the `sse` fallback. */
  get transport(): Transport {
    return this.#transport;
  }

  /** Publications not yet acknowledged. */
  get queued(): number {
    return this.#outbox.size;
  }

  /** The room called `name` (one object per name). */
  room(name: string): Room {
    let room = this.#rooms.get(name);
    if (!room) {
      room = new Room(name, this);
      this.#rooms.set(name, room);
    }
    return room;
  }

  /** Sends `data` to every connection of `user`; resolves with how many got it. */
  async send(user: string, data: unknown): Promise<number> {
    const ok = await this.#request({ op: "send", to: user, data });
    return ok.delivered ?? 0;
  }

  /** Closes the connection for good; what is still pending rejects with ClosedError. */
  close(): void {
    if (this.#state === "closed") return;
    const error = new ClosedError("client closed");
    const hadSocket = this.#sock !== undefined || this.#stream !== undefined || this.#state === "connected";
    this.#state = "closed";
    this.#drop(error);
    this.#outbox.failAll(error);
    for (const room of this.#rooms.values()) room.closed(error);
    if (hadSocket) this.emit("disconnected", { code: 1000, reason: "client closed", transport: this.#transport });
  }

  /**
   * Drops the connection as a network failure would and connects again
   * after `delayMs` (default: at once). Rooms are rejoined with `since` and
   * unacknowledged publications re-sent, as after any loss.
   */
  reconnect(delayMs = 0): void {
    if (this.#state === "closed") return;
    this.#drop(new NotConnectedError("reconnecting"));
    this.#policy.reset();
    this.emit("disconnected", { code: CLIENT_CLOSE.reconnect, reason: "reconnect requested", transport: this.#transport });
    this.#retry(delayMs);
  }

  /** @internal */
  sendJoin(room: Room): void {
    if (this.#state === "closed") room.closed(new ClosedError("client closed"));
    else if (this.#state === "connected" && this.#transport === "sse") this.#queueReopen();
    else if (this.#state === "connected") this.#join(room, false);
  }

  /** @internal */
  async sendLeave(room: Room): Promise<void> {
    // Offline, there is nothing to leave: the server dropped the membership
    // with the connection, and the room will not be rejoined.
    if (this.#state !== "connected") return;
    // On `sse` the stream is opened again without the room.
    if (this.#transport === "sse") return this.#queueReopen();
    await this.#request({ op: "leave", room: room.name });
  }

  /** @internal */
  publish(room: string, data: unknown, msgId: string | undefined): Promise<PublishAck> {
    if (this.#state === "closed") return Promise.reject(new ClosedError("client closed"));
    let acked: Promise<PublishAck>;
    try {
      acked = this.#outbox.add(room, data, msgId).acked;
    } catch (error) {
      return Promise.reject(error);
    }
    this.#flush();
    return acked;
  }

  /** @internal */
  async presence(room: string): Promise<string[]> {
    const ok = await this.#request({ op: "presence", room });
    return ok.users ?? [];
  }

  async #open(): Promise<void> {
    if (this.#state === "closed") return;
    const generation = ++this.#generation;
    this.#state = "connecting";
    const transport = (this.#transport = this.#policy.transport);
    this.emit("connecting", { attempt: ++this.#attempt, transport });
    // Started before the token is asked for: a getToken that never answers
    // must not stall reconnection either.
    this.#timers.connect = setTimeout(
      () => this.#lost(CLIENT_CLOSE.connectTimeout, "connect timeout"),
      this.#options.connectTimeoutMs ?? DEFAULTS.connectTimeoutMs,
    );
    let token: string | undefined;
    try {
      token = this.#options.getToken ? await this.#options.getToken() : this.#options.token;
    } catch (error) {
      if (generation !== this.#generation) return;
      this.#failedAttempt(error);
      return;
    }
    if (generation !== this.#generation) return;
    // A node that is gone or draining is not asked twice in a row.
    const url = new URL(this.#urls[this.#nextUrl++ % this.#urls.length]!);
    if (transport === "sse") {
      this.#token = token;
      this.#base = httpBase(url);
      this.#openStream();
      return;
    }
    if (token !== undefined) url.searchParams.set("token", token);
    let sock: SocketLike;
    try {
      sock = new this.#WebSocket(url.toString(), SUBPROTOCOL);
    } catch (error) {
      this.#failedAttempt(error);
      return;
    }
    this.#sock = sock;
    sock.binaryType = "arraybuffer";
    sock.onmessage = (ev: { data: unknown }) => {
      if (generation === this.#generation) this.#receive(ev.data);
    };
    sock.onclose = (ev: { code: number; reason: string }) => {
      if (generation === this.#generation) this.#lost(ev.code, ev.reason);
    };
    // An error is always followed by a close, which carries what is known.
    sock.onerror = () => undefined;
  }

  /** An attempt that failed before it had a socket (getToken threw, a bad URL). */
  #failedAttempt(error: unknown): void {
    this.#drop(new NotConnectedError("connection attempt failed"));
    this.emit("error", error instanceof Error ? error : new Error(String(error)));
    this.#retry(this.#backoff.next());
  }

  #receive(data: unknown): void {
    // What cannot be read may have been a reply or a message: going on
    // would leave a promise unanswered or a gap, so the connection starts
    // over (rejoins with `since` fill any gap).
    if (!(data instanceof ArrayBuffer || ArrayBuffer.isView(data))) {
      this.emit("error", new Error("the server sent a text message; the protocol is binary"));
      this.#lost(CLIENT_CLOSE.undecodable, "text message");
      return;
    }
    let events: ServerEvent[];
    try {
      events = decodeEvents(data);
    } catch (error) {
      this.emit("error", error instanceof Error ? error : new Error(String(error)));
      this.#lost(CLIENT_CLOSE.undecodable, "undecodable message");
      return;
    }
    for (const ev of events) this.#dispatch(ev);
  }

  #dispatch(ev: ServerEvent): void {
    switch (ev.op) {
      case "hello":
        return this.#connected(ev);
      case "ok":
      case "err":
      case "pong":
        return this.#reply(ev);
      case "msg":
        return this.#rooms.get(ev.room)?.deliver(ev);
      case "joined":
      case "left":
        return this.#rooms.get(ev.room)?.presenceChange(ev.op, ev.user);
      case "reset":
        return this.#rooms.get(ev.room)?.reset(ev.epoch, ev.offset);
      case "dm":
        return this.emit("dm", { from: ev.from, data: ev.data });
    }
  }

  #connected(hello: HelloEvent): void {
    clearTimeout(this.#timers.connect);
    this.#state = "connected";
    this.#hello = hello;
    // The cluster's reconnection policy, unless the application set its own.
    const policy = hello.reconnect;
    if (
      policy &&
      this.#options.backoffBaseMs === undefined &&
      this.#options.backoffCapMs === undefined &&
      policy.base_ms > 0 &&
      policy.max_ms >= policy.base_ms
    ) {
      this.#backoff = new Backoff(policy.base_ms, policy.max_ms);
    }
    this.#backoff.reset();
    this.#attempt = 0;
    this.#policy.connected("websocket");
    this.#timers.ping = setInterval(() => this.#ping(), this.#options.pingIntervalMs ?? DEFAULTS.pingIntervalMs);
    for (const room of this.#rooms.values()) {
      if (room.active) this.#join(room, true);
    }
    this.emit("connected", {
      conn: hello.conn,
      node: hello.node,
      user: hello.user,
      heartbeatMs: hello.heartbeat_ms,
      maxFrame: hello.max_frame,
      transport: "websocket",
    });
    this.#flush();
  }

  #join(room: Room, rejoin: boolean): void {
    const fields = room.joinFields();
    const id = this.#write({ op: "join", id: this.#nextId++, room: room.name, ...fields });
    if (id === undefined) return;
    if (rejoin) this.#rejoining += 1;
    this.#pending.set(id, { op: "join", room, since: fields.since, rejoin });
  }

  #reply(ev: Extract<ServerEvent, { op: "ok" | "err" | "pong" }>): void {
    const pending = this.#pending.get(ev.id);
    if (!pending) {
      if (ev.op === "err") this.emit("error", new ServerError(ev.code, ev.reason, "unknown"));
      return;
    }
    this.#pending.delete(ev.id);
    const error = ev.op === "err" ? new ServerError(ev.code, ev.reason, pending.op) : undefined;
    switch (pending.op) {
      case "ping":
        this.#pingOutstanding = false;
        clearTimeout(this.#timers.pong);
        return;
      case "join":
        if (error?.code === 503) this.#retryJoin(pending.room);
        else if (error) pending.room.joinRefused(error);
        else if (ev.op === "ok") {
          this.#joinBackoff.delete(pending.room);
          pending.room.joinAnswered(okJoin(ev), pending.since);
        }
        if (pending.rejoin && --this.#rejoining === 0) this.#flush();
        return;
      case "pub":
        if (error) this.#outbox.settle(pending.entry, { error });
        else if (ev.op === "ok") this.#outbox.settle(pending.entry, { ack: { epoch: ev.epoch ?? "", offset: ev.offset ?? 0 } });
        return;
      default:
        if (error) pending.reject(error);
        else if (ev.op === "ok") pending.resolve(ev);
    }
  }

  /**
   * A join answered 503 (the room's home is unavailable, in a cluster: a
   * node lost or moving rooms) is asked again after a backoff of its own,
   * as the protocol says to; the room stays joining meanwhile.
   */
  #retryJoin(room: Room): void {
    let backoff = this.#joinBackoff.get(room);
    if (!backoff) {
      backoff = new Backoff(this.#backoff.baseMs, this.#backoff.capMs);
      this.#joinBackoff.set(room, backoff);
    }
    const timer = setTimeout(() => {
      this.#joinTimers.delete(timer);
      if (this.#state === "connected" && room.active) this.#join(room, false);
    }, backoff.next());
    this.#joinTimers.add(timer);
  }

  /** Sends the publications still to go, once rejoins are answered. */
  #flush(): void {
    if (this.#state !== "connected") return;
    if (this.#transport === "sse") {
      void this.#flushHttp();
      return;
    }
    if (this.#rejoining > 0) return;
    for (const entry of this.#outbox.unsent()) {
      const id = this.#nextId++;
      const command: Command = { op: "pub", id, room: entry.room, data: entry.data, msg_id: entry.msgId };
      let bytes: Uint8Array;
      try {
        bytes = this.#encode(command);
      } catch (error) {
        this.#outbox.settle(entry, { error: error instanceof Error ? error : new Error(String(error)) });
        continue;
      }
      entry.sent = true;
      this.#pending.set(id, { op: "pub", entry });
      this.#sock?.send(bytes);
    }
  }

  #ping(): void {
    if (this.#pingOutstanding) return;
    const id = this.#write({ op: "ping", id: this.#nextId++ });
    if (id === undefined) return;
    this.#pingOutstanding = true;
    this.#pending.set(id, { op: "ping" });
    this.#timers.pong = setTimeout(
      () => this.#lost(CLIENT_CLOSE.pingTimeout, "ping timeout"),
      this.#options.pingTimeoutMs ?? DEFAULTS.pingTimeoutMs,
    );
  }

  /** A command whose reply resolves the promise; only while connected. */
  #request(command: WithoutId<Extract<Command, { op: "leave" | "send" | "presence" }>>): Promise<OkEvent> {
    if (this.#state !== "connected") {
      return Promise.reject(new NotConnectedError(`${command.op}: not connected`));
    }
    if (this.#transport === "sse") return this.#httpRequest(command);
    return new Promise<OkEvent>((resolve, reject) => {
      const id = this.#nextId++;
      let bytes: Uint8Array;
      try {
        bytes = this.#encode({ ...command, id } as Command);
      } catch (error) {
        reject(error);
        return;
      }
      this.#pending.set(id, { op: command.op, resolve, reject });
      this.#sock?.send(bytes);
    });
  }

  /** Encodes and sends a command; returns its id, or undefined if too large. */
  #write(command: Command): number | undefined {
    try {
      this.#sock?.send(this.#encode(command));
      return command.id;
    } catch (error) {
      this.emit("error", error instanceof Error ? error : new Error(String(error)));
      return undefined;
    }
  }

  #encode(command: Command): Uint8Array {
    const bytes = encodeCommand(command);
    const limit = this.#hello?.max_frame;
    if (limit && bytes.byteLength > limit) {
      throw new MessageTooLargeError(bytes.byteLength, limit);
    }
    return bytes;
  }

  /** The connection (or attempt) ended: report it and schedule the next one. */
  #lost(code: number, reason: string): void {
    if (this.#state === "closed") return;
    const wasConnected = this.#state === "connected";
    if (!wasConnected) this.#policy.failed(this.#transport);
    this.#drop(new NotConnectedError(`connection lost (${code}${reason ? ` ${reason}` : ""})`));
    this.emit("disconnected", { code, reason, transport: this.#transport });
    // A draining node (1012) asks its clients to move now; only a failure
    // right after that waits.
    this.#retry(code === 1012 && wasConnected ? drainSpread(reason) : this.#backoff.next());
  }

  /**
   * Gives the current socket up: ignores its events from now on, closes it,
   * stops the timers, and settles what was waiting on it. Publications and
   * rooms stay, for the next connection.
   */
  #drop(error: Error): void {
    this.#generation += 1;
    const sock = this.#sock;
    this.#sock = undefined;
    this.#hello = undefined;
    if (sock) {
      sock.onmessage = sock.onclose = sock.onerror = null;
      try {
        sock.close(1000);
      } catch {
        // Closing a socket that is still connecting may throw; it is gone either way.
      }
    }
    this.#stream?.close();
    this.#stream = undefined;
    this.#streamGen += 1;
    this.#streamRooms.clear();
    clearTimeout(this.#timers.retry);
    clearTimeout(this.#timers.connect);
    clearInterval(this.#timers.ping);
    clearTimeout(this.#timers.pong);
    this.#timers = {};
    this.#joinTimers.forEach(clearTimeout);
    this.#joinTimers.clear();
    this.#pingOutstanding = false;
    this.#rejoining = 0;
    for (const pending of this.#pending.values()) {
      // A leave is done when the connection is: the server drops its rooms.
      if (pending.op === "leave") pending.resolve({ op: "ok", id: 0 });
      else if (pending.op === "send" || pending.op === "presence") pending.reject(error);
    }
    this.#pending.clear();
    this.#outbox.connectionLost();
    for (const room of this.#rooms.values()) room.connectionLost();
  }

  // ---- the HTTP fallback: a Server-Sent Events stream, and POSTs ----

  /**
   * Opens the stream for the rooms joined now (closing the current one),
   * each resumed from its position: the last message handed over, so that
   * nothing is lost or repeated. With no room there is no stream; the
   * client still publishes and sends over HTTP.
   */
  #openStream(): void {
    const generation = this.#generation;
    const streamGen = ++this.#streamGen;
    this.#stream?.close();
    this.#stream = undefined;
    this.#streamRooms.clear();
    const rooms = [...this.#rooms.values()].filter((r) => r.active);
    const reconnect = this.#state !== "connected";
    if (rooms.length === 0) {
      if (reconnect) this.#connectedOverHttp();
      return;
    }
    for (const room of rooms) {
      room.connectionLost();
      this.#streamRooms.set(room.name, { room, since: room.position, reconnect });
    }
    const url = endpoint(this.#base!, "sse", {
      rooms: rooms.map((r) => r.name).join(","),
      presence: rooms.some((r) => r.wantsPresence) ? undefined : "false",
      token: this.#token,
      last_event_id: streamPosition(rooms.map((r) => r.position)),
    });
    const current = () => generation === this.#generation && streamGen === this.#streamGen;
    const handlers = {
      event: (name: string, data: string) => {
        if (current()) this.#streamEvent(name, data);
      },
      closed: (status: number | undefined, reason: string) => {
        if (current()) this.#streamClosed(status, reason);
      },
    };
    if (this.#EventSource) this.#stream = openEventSource(this.#EventSource, this.#fetch, url, handlers);
    else if (this.#fetch) this.#stream = openFetchStream(this.#fetch, url, handlers);
    else this.#failedAttempt(new TypeError("no EventSource and no fetch here: pass one in the options"));
  }

  /** The room set changed while on `sse`: one new stream for the changes of this turn. */
  #queueReopen(): void {
    if (this.#reopenQueued) return;
    this.#reopenQueued = true;
    const generation = this.#generation;
    queueMicrotask(() => {
      this.#reopenQueued = false;
      if (generation === this.#generation && this.#state === "connected") this.#openStream();
    });
  }

  #streamEvent(name: string, data: string): void {
    let ev: Record<string, unknown>;
    try {
      ev = JSON.parse(data) as Record<string, unknown>;
    } catch (error) {
      this.emit("error", error instanceof Error ? error : new Error(String(error)));
      this.#lost(CLIENT_CLOSE.undecodable, "undecodable event");
      return;
    }
    const room = typeof ev.room === "string" ? this.#rooms.get(ev.room) : undefined;
    switch (name) {
      case "hello":
        this.#hello = {
          op: "hello",
          v: 1,
          conn: String(ev.conn),
          node: String(ev.node),
          user: String(ev.user),
          heartbeat_ms: Number(ev.heartbeat_ms),
          max_frame: 0,
        };
        if (this.#state !== "connected") this.#connectedOverHttp();
        return;
      case "join": {
        const entry = this.#streamRooms.get(String(ev.room));
        if (!entry) return;
        const recovered = ev.recovered as boolean | undefined;
        // A stream opened again for a new room set resumes the other rooms
        // quietly; after a loss, and whenever history is lost, it is told.
        const report = entry.reconnect || recovered === false ? entry.since : undefined;
        entry.room.joinAnswered({ epoch: String(ev.epoch), offset: Number(ev.offset), recovered }, report);
        return;
      }
      case "msg":
        return room?.deliver({ offset: Number(ev.offset), from: String(ev.from), data: eventData(ev) });
      case "joined":
      case "left":
        return room?.presenceChange(name, String(ev.user));
      case "reset":
        return room?.reset(String(ev.epoch), Number(ev.offset));
      case "dm":
        return this.emit("dm", { from: String(ev.from), data: eventData(ev) });
      // `err`: a room could not be joined (503); the stream ends next and
      // is opened again with backoff, the room still joining.
    }
  }

  #connectedOverHttp(): void {
    clearTimeout(this.#timers.connect);
    this.#state = "connected";
    this.#backoff.reset();
    this.#attempt = 0;
    this.#policy.connected("sse");
    const hello = this.#hello;
    this.emit("connected", {
      conn: hello?.conn ?? "",
      node: hello?.node ?? "",
      user: hello?.user ?? "",
      heartbeatMs: hello?.heartbeat_ms ?? 0,
      maxFrame: 0,
      transport: "sse",
    });
    // Rooms joined or left while the stream was being opened.
    const active = [...this.#rooms.values()].filter((r) => r.active);
    if (active.length !== this.#streamRooms.size || active.some((r) => !this.#streamRooms.has(r.name))) {
      this.#queueReopen();
    }
    this.#flush();
  }

  #streamClosed(status: number | undefined, reason: string): void {
    // A room outside the token's claim refuses the whole stream: that room
    // is refused (as a join would be), the others go on without it.
    const refused = status === 403 ? /rooms: "([^"]+)"/.exec(reason)?.[1] : undefined;
    const entry = refused === undefined ? undefined : this.#streamRooms.get(refused);
    if (entry) {
      entry.room.joinRefused(new ServerError(403, reason, "join"));
      this.#openStream();
      return;
    }
    this.#lost(status ?? 1006, reason);
  }

  /** Sends the publications still to go over HTTP, one at a time, in order. */
  async #flushHttp(): Promise<void> {
    if (this.#posting) return;
    this.#posting = true;
    const generation = this.#generation;
    try {
      for (;;) {
        if (generation !== this.#generation || this.#state !== "connected") return;
        const entry = this.#outbox.unsent()[0];
        if (!entry) return;
        entry.sent = true;
        let res: ResponseLike;
        let answer: Answer;
        try {
          res = await this.#http("POST", "api/publish", { room: entry.room, data: entry.data, msg_id: entry.msgId });
          answer = await readAnswer(res);
        } catch (error) {
          // Published or not, it is sent again with its msg_id.
          if (generation === this.#generation) this.#lost(1006, `publish: ${String(error)}`);
          return;
        }
        if (res.status === 200) {
          const epoch = this.#rooms.get(entry.room)?.position?.epoch ?? "";
          this.#outbox.settle(entry, { ack: { epoch, offset: answer.offset ?? 0 } });
        } else if (res.status >= 500) {
          // Draining, or the room's home unavailable: not published; the
          // connection starts over and the publication goes again.
          if (generation === this.#generation) this.#lost(res.status, answer.error ?? "");
          return;
        } else {
          this.#outbox.settle(entry, { error: new ServerError(res.status, answer.error ?? "", "pub") });
        }
      }
    } finally {
      this.#posting = false;
      // A connection that came while this one's POST was in flight.
      if (generation !== this.#generation) this.#flush();
    }
  }

  /** `send` and `presence` over HTTP; a network failure rejects with NotConnectedError. */
  async #httpRequest(command: WithoutId<Extract<Command, { op: "leave" | "send" | "presence" }>>): Promise<OkEvent> {
    let res: ResponseLike;
    let answer: Answer;
    try {
      res =
        command.op === "send"
          ? await this.#http("POST", "api/send", { to: command.to, data: command.data })
          : await this.#http("GET", `api/rooms/${encodeURIComponent(command.room)}/presence`);
      answer = await readAnswer(res);
    } catch (error) {
      throw new NotConnectedError(`${command.op}: ${String(error)}`);
    }
    if (res.status !== 200) throw new ServerError(res.status, answer.error ?? "", command.op);
    return { op: "ok", id: 0, ...answer };
  }

  /** One HTTP API call with this connection's token; a body goes as MessagePack, `data` byte for byte. */
  #http(method: "GET" | "POST", path: string, body?: Record<string, unknown>): Promise<ResponseLike> {
    const headers: Record<string, string> = {};
    if (this.#token !== undefined) headers.Authorization = `Bearer ${this.#token}`;
    let bytes: Uint8Array | undefined;
    if (body) {
      headers["Content-Type"] = "application/msgpack";
      bytes = encode(body, { ignoreUndefined: true });
    }
    return this.#fetch!(endpoint(this.#base!, path), { method, headers, ...(bytes && { body: bytes }) });
  }

  #retry(delay: number): void {
    if (this.#state === "closed") return;
    this.#state = "waiting";
    this.emit("reconnecting", { delay, attempt: this.#attempt + 1 });
    this.#timers.retry = setTimeout(() => void this.#open(), delay);
  }
}

type Timer = ReturnType<typeof setTimeout>;

/** Omit distributed over a union, so each command keeps its own fields. */
type WithoutId<C> = C extends unknown ? Omit<C, "id"> : never;

/** The HTTP API's JSON answer (`{"error": ...}` on a refusal). */
interface Answer {
  offset?: number;
  delivered?: number;
  users?: string[];
  error?: string;
}

async function readAnswer(res: ResponseLike): Promise<Answer> {
  const text = await res.text();
  try {
    return JSON.parse(text) as Answer;
  } catch {
    return { error: text.trim() };
  }
}

function okJoin(ok: OkEvent): { epoch: string; offset: number; recovered?: boolean | undefined } {
  return { epoch: ok.epoch ?? "", offset: ok.offset ?? 0, recovered: ok.recovered };
}
