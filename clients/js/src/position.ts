import type { Since } from "./codec.js";

/** How a `join` turned out, as far as the room's history is concerned. */
export type JoinOutcome =
  /** A join without `since`: deliveries start after the room's newest offset. */
  | "joined"
  /** `recovered: true`: the missed messages follow, then live ones. */
  | "recovered"
  /** `recovered: false`: nothing was replayed; the app must resynchronise. */
  | "lost";

/**
 * One room's place in its sequence: the epoch it follows and the offset of
 * the last message handed to the application. It decides which deliveries
 * reach the application (none twice, none out of order) and what a rejoin
 * asks for with `since`.
 */
export class Position {
  #epoch: string | undefined;
  #offset = 0;

  get epoch(): string | undefined {
    return this.#epoch;
  }

  get offset(): number {
    return this.#offset;
  }

  /** What a rejoin asks for; undefined before the first join was answered. */
  since(): Since | undefined {
    return this.#epoch === undefined ? undefined : { epoch: this.#epoch, offset: this.#offset };
  }

  /**
   * Takes a join's `ok`. Without `recovered` (no `since` was sent) or with
   * `recovered: false`, deliveries continue after the `ok`'s offset in its
   * epoch. With `recovered: true` the replay starts right after our own
   * offset, which therefore stays.
   */
  joined(ok: { epoch: string; offset: number; recovered?: boolean | undefined }): JoinOutcome {
    if (ok.recovered === true && ok.epoch === this.#epoch) return "recovered";
    this.#epoch = ok.epoch;
    this.#offset = ok.offset;
    return ok.recovered === undefined ? "joined" : "lost";
  }

  /** The room's sequence restarted under us: continue after `offset` in `epoch`. */
  reset(epoch: string, offset: number): void {
    this.#epoch = epoch;
    this.#offset = offset;
  }

  /**
   * Whether a delivered `msg` at `offset` is new. An offset at or below the
   * last one handed over is a duplicate (a replay overlapping what was
   * already seen) and is dropped; a new one becomes the last.
   */
  accept(offset: number): boolean {
    if (this.#epoch === undefined || offset <= this.#offset) return false;
    this.#offset = offset;
    return true;
  }

  /** The room was left: a later join starts afresh. */
  clear(): void {
    this.#epoch = undefined;
    this.#offset = 0;
  }
}
