/**
 * Stable error codes. They appear in `watch.error` events, in the CLI's one-line errors and
 * in `RunwatchError.code`; they never change meaning once released.
 */
export type ErrorCode =
  /** A thread, run or watch id does not match `^[A-Za-z0-9_-]{1,128}$`; no request was sent. */
  | 'invalid_id'
  /** An option or configuration value is invalid. */
  | 'invalid_config'
  /** The server answered 404: the run (or thread) does not exist for these credentials. */
  | 'run_not_found'
  /** The server answered 404 for a background response: it does not exist for these credentials (or was not stored). */
  | 'response_not_found'
  /** The server answered 401: the API key is missing or wrong. */
  | 'unauthorized'
  /** The server answered 403: the key may not read this run. */
  | 'forbidden'
  /** The server answered 400 or 422: the request itself is wrong. */
  | 'bad_request'
  /** Any other permanent HTTP answer (another 4xx, or `x-should-retry: false`). */
  | 'http_error'
  /** A transient failure: network error, timeout, 408, 409, 429, 5xx or a malformed body. */
  | 'transient'
  /** The watch's deadline passed before the run reached a status it resolves on. */
  | 'deadline_exceeded'
  /** The watch's `AbortSignal` fired. */
  | 'aborted'
  /** The watcher was closed while the watch was still running. */
  | 'closed'
  /** A sink could not take an event. */
  | 'delivery_failed'
  /** A tool handler (`onRequiresAction`) threw or returned no output for some tool call. */
  | 'tool_handler_failed'
  /** The server answered 404 for a thread (thread guard). */
  | 'thread_not_found'
  /** The daemon's store does not answer (Redis down or unreachable); retry later. */
  | 'store_unavailable'
  /** The daemon's store cannot be opened (the data dir is not a writable directory). */
  | 'store_open_failed'
  /** A step could not be written to the daemon's store (disk full, file removed). */
  | 'store_write_failed'
  /** The daemon cannot listen on its address (in use, not permitted). */
  | 'cannot_listen'
  /** The answer's body is larger than `maxResponseBytes`: retrying would not make it smaller. */
  | 'response_too_large'
  /** The CLI's daemon client could not reach the daemon, it did not answer in time or like a runwatch daemon, or it answered 5xx. */
  | 'daemon_unreachable'
  /** The daemon answered 401 to the CLI's daemon client: no control token, or the wrong one. */
  | 'daemon_unauthorized'
  /** The daemon refused the CLI's daemon client's request (4xx but 401, or `cancel_refused`). */
  | 'daemon_refused';

/**
 * Base class of every error runwatch throws: a literal `name`, a stable `code`, an optional
 * `cause`. Messages never contain credentials.
 */
export class RunwatchError extends Error {
  override readonly name: string = 'RunwatchError';
  /** Stable machine-readable code. */
  readonly code: ErrorCode;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
  }
}

/** A bad option, flag or configuration value; the CLI exits 64 on it. */
export class ConfigError extends RunwatchError {
  override readonly name = 'ConfigError';

  constructor(message: string, options?: { cause?: unknown }) {
    super('invalid_config', message, options);
  }
}

/** An id that would not be safe to put in a URL path; nothing was sent. */
export class InvalidIdError extends RunwatchError {
  override readonly name = 'InvalidIdError';

  constructor(message: string) {
    super('invalid_id', message);
  }
}

/** Details of the HTTP answer behind an error, when there was one. */
export interface HttpErrorDetails {
  /** HTTP status code. */
  readonly httpStatus?: number;
  /** The server's request id (`x-request-id`), for support tickets. */
  readonly requestId?: string;
}

/**
 * A watch ended without reaching a status it resolves on. Carries the last snapshot seen
 * (or `null`), so callers can still act on what was observed.
 */
export class WatchError<TSnapshot = unknown> extends RunwatchError {
  override readonly name = 'WatchError';
  /** HTTP status of the last failed request, if the error came from one. */
  readonly httpStatus: number | undefined;
  /** Server request id of the last failed request, if any. */
  readonly requestId: string | undefined;
  /** The last snapshot observed before the watch ended, or `null`. */
  readonly lastSnapshot: TSnapshot | null;

  constructor(
    code: ErrorCode,
    message: string,
    options: HttpErrorDetails & { cause?: unknown; lastSnapshot?: TSnapshot | null } = {},
  ) {
    super(code, message, { cause: options.cause });
    this.httpStatus = options.httpStatus;
    this.requestId = options.requestId;
    this.lastSnapshot = options.lastSnapshot ?? null;
  }
}

/**
 * A sink failed to take an event. `permanent` failures are dead-lettered at once; others are
 * retried (no sooner than `retryAfterMs` when the receiver said so).
 */
export class DeliveryError extends RunwatchError {
  override readonly name = 'DeliveryError';
  /** True when retrying cannot help (e.g. the receiver answered 400). */
  readonly permanent: boolean;
  /** The receiver's `retry-after`, when it sent one. */
  readonly retryAfterMs: number | undefined;

  constructor(message: string, options: { permanent?: boolean; retryAfterMs?: number | undefined; cause?: unknown } = {}) {
    super('delivery_failed', message, { cause: options.cause });
    this.permanent = options.permanent ?? false;
    this.retryAfterMs = options.retryAfterMs;
  }
}

/** The store does not answer (Redis down or unreachable). The control API answers 503; at start the daemon exits 69. */
export class StoreUnavailableError extends RunwatchError {
  override readonly name = 'StoreUnavailableError';

  constructor(message: string, options?: { cause?: unknown }) {
    super('store_unavailable', message, options);
  }
}

/** The store cannot be opened (the data dir is a file, or not writable). The daemon exits 73. */
export class StoreOpenError extends RunwatchError {
  override readonly name = 'StoreOpenError';

  constructor(message: string, options?: { cause?: unknown }) {
    super('store_open_failed', message, options);
  }
}

/** A step could not be written to the store. The daemon stops (exit 1) and a restart resumes from what was written. */
export class StoreWriteError extends RunwatchError {
  override readonly name = 'StoreWriteError';

  constructor(message: string, options?: { cause?: unknown }) {
    super('store_write_failed', message, options);
  }
}

/** The daemon cannot listen on its address. It exits 69. */
export class ListenError extends RunwatchError {
  override readonly name = 'ListenError';

  constructor(message: string, options?: { cause?: unknown }) {
    super('cannot_listen', message, options);
  }
}
