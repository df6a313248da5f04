/** An entry of a `MinHeap`: ordered by `atMs`, then by insertion. */
export interface HeapEntry<T> {
  readonly atMs: number;
  readonly value: T;
  /** Insertion counter: equal times come out first-in, first-out. */
  readonly order: number;
}

/**
 * A binary min-heap of timed entries: one heap (and one timer) serves every watch, so the
 * cost of scheduling is O(log n) and there is no timer per watch.
 */
export class MinHeap<T> {
  readonly #items: HeapEntry<T>[] = [];
  #order = 0;

  /** Number of entries (including ones the caller will skip as stale). */
  get size(): number {
    return this.#items.length;
  }

  /** Adds a value due at `atMs`; returns its entry, by which a caller can tell a stale one. */
  push(atMs: number, value: T): HeapEntry<T> {
    const items = this.#items;
    const entry: HeapEntry<T> = { atMs, value, order: this.#order++ };
    let i = items.push(entry) - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      const p = items[parent]!;
      if (!before(entry, p)) break;
      items[i] = p;
      i = parent;
    }
    items[i] = entry;
    return entry;
  }

  /** The earliest entry, without removing it. */
  peek(): HeapEntry<T> | undefined {
    return this.#items[0];
  }

  /** Removes and returns the earliest entry. */
  pop(): HeapEntry<T> | undefined {
    const items = this.#items;
    const top = items[0];
    const last = items.pop();
    if (top === undefined || last === undefined || items.length === 0) return top;
    let i = 0;
    const n = items.length;
    for (;;) {
      const left = 2 * i + 1;
      if (left >= n) break;
      const right = left + 1;
      const child = right < n && before(items[right]!, items[left]!) ? right : left;
      if (!before(items[child]!, last)) break;
      items[i] = items[child]!;
      i = child;
    }
    items[i] = last;
    return top;
  }

  /** Removes every entry. */
  clear(): void {
    this.#items.length = 0;
  }
}

function before<T>(a: HeapEntry<T>, b: HeapEntry<T>): boolean {
  return a.atMs < b.atMs || (a.atMs === b.atMs && a.order < b.order);
}

/** A first-in, first-out queue with O(1) shift (an array with a moving head). */
export class Fifo<T> {
  #items: (T | undefined)[] = [];
  #head = 0;

  /** Number of queued values. */
  get size(): number {
    return this.#items.length - this.#head;
  }

  /** Appends a value. */
  push(value: T): void {
    this.#items.push(value);
  }

  /** Removes and returns the oldest value. */
  shift(): T | undefined {
    if (this.#head >= this.#items.length) return undefined;
    const value = this.#items[this.#head];
    this.#items[this.#head] = undefined;
    this.#head += 1;
    // compact once the dead prefix dominates, so memory stays proportional to the queue
    if (this.#head > 1024 && this.#head * 2 > this.#items.length) {
      this.#items = this.#items.slice(this.#head);
      this.#head = 0;
    }
    return value;
  }

  /** Removes every value. */
  clear(): void {
    this.#items = [];
    this.#head = 0;
  }
}
