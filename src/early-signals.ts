// The first module the CLI imports, and one that imports nothing: ES modules run in import
// order, so for `runwatch daemon` the stop signals are caught before the other modules run,
// before the configuration is read and before anything is opened. Node as PID 1 (a container
// started without --init) ignores a signal it has no handler for: a SIGTERM in that window
// would be lost and the container SIGKILLed at the end of its grace period.

/** The signals that stop the daemon. */
export type StopSignal = 'SIGTERM' | 'SIGINT';

let controller: AbortController | undefined;
let received: StopSignal | null = null;

/**
 * Aborted at the first SIGTERM or SIGINT; later ones change nothing. Installs the handlers on
 * the first call; they stay installed (the daemon's shutdown is idempotent and bounded).
 */
export function daemonStopSignal(): AbortSignal {
  if (!controller) {
    const stop = new AbortController();
    const onSignal = (signal: StopSignal): void => {
      if (received !== null) return;
      received = signal;
      stop.abort(new Error(`received ${signal}`));
    };
    process.on('SIGTERM', onSignal);
    process.on('SIGINT', onSignal);
    controller = stop;
  }
  return controller.signal;
}

/** The stop signal received, if any. */
export function stopSignalReceived(): StopSignal | null {
  return received;
}

if (process.argv[2] === 'daemon') daemonStopSignal();
