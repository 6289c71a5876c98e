/** A minimal typed event emitter, the same in browsers and Node. */
export class Emitter<Events extends object> {
  readonly #handlers = new Map<keyof Events, Set<(value: never) => void>>();

  /** Adds `handler`; the function returned removes it. */
  on<K extends keyof Events>(type: K, handler: (value: Events[K]) => void): () => void {
    let set = this.#handlers.get(type);
    if (!set) {
      set = new Set();
      this.#handlers.set(type, set);
    }
    set.add(handler);
    return () => set.delete(handler);
  }

  protected emit<K extends keyof Events>(type: K, value: Events[K]): void {
    const set = this.#handlers.get(type);
    if (!set) return;
    for (const handler of [...set]) {
      try {
        (handler as (value: Events[K]) => void)(value);
      } catch (error) {
        // An application handler that throws must not leave the SDK's
        // bookkeeping half done; the error still surfaces, as uncaught.
        queueMicrotask(() => {
          throw error;
        });
      }
    }
  }
}
