import http from 'node:http';

/** What a probe found. */
export interface ProbeResult {
  readonly ok: boolean;
  /** The status it answered, or why there was no answer. */
  readonly detail: string;
}

/**
 * Where a probe next to the daemon reaches it: an address it binds, or loopback when it binds
 * every address (`0.0.0.0`, `::`).
 */
export function probeHost(host: string): string {
  const bare = host.replace(/^\[(.*)\]$/, '$1');
  if (bare === '0.0.0.0') return '127.0.0.1';
  if (bare === '::') return '::1';
  return bare;
}

/**
 * GETs `path` of the daemon at `host:port` (`probeHost(host)`), one connection, no keep-alive:
 * ok on a 200 within `timeoutMs`. Never throws.
 */
export function probe(host: string, port: number, path: string, timeoutMs: number): Promise<ProbeResult> {
  const address = probeHost(host);
  const target = `${address.includes(':') ? `[${address}]` : address}:${port}${path}`;
  return new Promise<ProbeResult>((resolve) => {
    const req = http.get({ host: address, port, path, agent: false }, (res) => {
      res.resume();
      clearTimeout(timer);
      resolve({ ok: res.statusCode === 200, detail: `GET ${target} answered ${res.statusCode ?? 'nothing'}` });
    });
    const timer = setTimeout(() => req.destroy(Object.assign(new Error(`no answer within ${timeoutMs} ms`), { code: 'ETIMEDOUT' })), timeoutMs);
    req.on('error', (error: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      resolve({ ok: false, detail: `GET ${target} failed: ${error.code ?? error.message}` });
    });
  });
}
