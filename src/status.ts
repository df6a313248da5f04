/** Non-terminal statuses of an Assistants-style run. */
export const ACTIVE_RUN_STATUSES = ['queued', 'in_progress', 'requires_action', 'cancelling'] as const;
/** Terminal statuses of an Assistants-style run: once seen, the run never changes again. */
export const TERMINAL_RUN_STATUSES = ['completed', 'failed', 'cancelled', 'expired', 'incomplete'] as const;

/** A status the runs API documents. */
export type KnownRunStatus =
  | (typeof ACTIVE_RUN_STATUSES)[number]
  | (typeof TERMINAL_RUN_STATUSES)[number];

/** A run status as observed: a documented one, or a future value the API may add. */
// `string & {}` keeps editor completion for the known values while accepting any string.
export type RunStatus = KnownRunStatus | (string & {});

const MAX_STATUS_LENGTH = 64;

/**
 * Normalises a raw `status` field: lower-cased, trimmed, characters outside `[a-z0-9_]`
 * replaced by `_` (it becomes part of an event type), at most 64 characters.
 * Returns `undefined` when the value is not a non-empty string (a malformed body).
 */
export function normalizeStatus(raw: unknown): string | undefined {
  if (typeof raw !== 'string') return undefined;
  const status = raw.trim().toLowerCase().replace(/[^a-z0-9_]/g, '_').slice(0, MAX_STATUS_LENGTH);
  return status === '' ? undefined : status;
}

/** Rules a status machine applies; a resource kind supplies them. */
export interface StatusRules {
  /** Statuses that end the resource's life. */
  readonly terminal: ReadonlySet<string>;
  /**
   * For a current status, the statuses that can only come from a stale replica and are
   * ignored (a run never goes back to `queued` from `in_progress`).
   */
  readonly staleAfter: ReadonlyMap<string, ReadonlySet<string>>;
  /**
   * When set, the only statuses that are not final: any other, known or not, ends the
   * resource (a background response ends on anything but `queued` and `in_progress`).
   * @default undefined (only `terminal` ends it; unknown statuses are polled on)
   */
  readonly active?: ReadonlySet<string> | undefined;
}

/** True when `status` ends a resource under these rules. */
export function isTerminal(rules: StatusRules, status: string): boolean {
  return rules.terminal.has(status) || (rules.active !== undefined && !rules.active.has(status));
}

/** What observing one status did to the machine. */
export type Observation =
  /** The status changed: emit an event with this `seq`. */
  | { readonly kind: 'transition'; readonly from: string | null; readonly to: string; readonly seq: number; readonly terminal: boolean }
  /** Same status as before. */
  | { readonly kind: 'unchanged'; readonly status: string }
  /** An older status a stale replica answered with; ignored. */
  | { readonly kind: 'stale'; readonly status: string; readonly current: string }
  /** The machine is already terminal; nothing changes any more. */
  | { readonly kind: 'after_terminal'; readonly status: string; readonly current: string };

/** Where a machine starts: fresh, or restored from a store. */
export interface MachineState {
  /** The last status seen, or `null` before the first observation. */
  readonly status: string | null;
  /** The last `seq` handed out (0 before any event). */
  readonly seq: number;
}

/**
 * The status machine of one watch: turns observed statuses into transitions. Knows nothing
 * of HTTP or time. Unknown statuses are transitions like any other, and terminal only where
 * the rules list the active statuses (`StatusRules.active`).
 */
export class StatusMachine {
  readonly #rules: StatusRules;
  #status: string | null;
  #seq: number;

  constructor(rules: StatusRules, initial: MachineState = { status: null, seq: 0 }) {
    this.#rules = rules;
    this.#status = initial.status;
    this.#seq = initial.seq;
  }

  /** The current status, `null` before the first observation. */
  get status(): string | null {
    return this.#status;
  }

  /** The last sequence number handed out. */
  get seq(): number {
    return this.#seq;
  }

  /** True once a terminal status has been observed. */
  get terminal(): boolean {
    return this.#status !== null && isTerminal(this.#rules, this.#status);
  }

  /** Feeds one observed (normalised) status. */
  observe(status: string): Observation {
    const current = this.#status;
    if (current !== null) {
      if (isTerminal(this.#rules, current)) return { kind: 'after_terminal', status, current };
      if (status === current) return { kind: 'unchanged', status };
      if (this.#rules.staleAfter.get(current)?.has(status)) return { kind: 'stale', status, current };
    }
    this.#status = status;
    this.#seq += 1;
    return { kind: 'transition', from: current, to: status, seq: this.#seq, terminal: isTerminal(this.#rules, status) };
  }

  /** Reserves the next sequence number for an event that is not a transition (`watch.error`). */
  nextSeq(): number {
    this.#seq += 1;
    return this.#seq;
  }
}
