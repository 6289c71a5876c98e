/**
 * Reconnection delays: exponential backoff with full jitter. The n-th
 * consecutive failed attempt (from 0) waits a uniformly random time in
 * [0, min(cap, base * 2^n)). Full jitter spreads the clients of a node that
 * went away over the whole window instead of sending them back in waves.
 */
export class Backoff {
  #attempts = 0;

  constructor(
    readonly baseMs: number,
    readonly capMs: number,
    private readonly random: () => number = Math.random,
  ) {
    if (!(baseMs > 0) || !(capMs >= baseMs)) {
      throw new RangeError(`backoff needs 0 < base (${baseMs}) <= cap (${capMs})`);
    }
  }

  /** Consecutive delays handed out since the last `reset`. */
  get attempts(): number {
    return this.#attempts;
  }

  /** The upper bound of the next delay. */
  ceiling(): number {
    // Capping the exponent first keeps 2^n finite however long the outage.
    const exp = Math.min(this.#attempts, 52);
    return Math.min(this.capMs, this.baseMs * 2 ** exp);
  }

  /** The next delay in milliseconds; each call counts one attempt. */
  next(): number {
    const delay = Math.floor(this.random() * this.ceiling());
    this.#attempts += 1;
    return delay;
  }

  /** A connection succeeded: the next failure starts from `base` again. */
  reset(): void {
    this.#attempts = 0;
  }
}

/**
 * The delay before reconnecting after a drain's close (1012): uniformly
 * random up to the `N` its reason names (`node draining; reconnect within
 * N ms`), so that a drained node's clients do not all arrive at once; 0 if
 * it names none.
 */
export function drainSpread(reason: string, random: () => number = Math.random): number {
  const m = /within (\d+) ms/.exec(reason);
  const within = m ? Number(m[1]) : 0;
  return Math.floor(random() * (within + 1));
}
