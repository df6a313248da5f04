import { readFile } from 'node:fs/promises';
import type http from 'node:http';

/** Where the page's files are: `ui/` of the package, two levels above this module in `src/daemon/` and `dist/daemon/` alike. */
export const UI_DIR = new URL('../../ui/', import.meta.url);

/** The files of the web view and their content types; nothing else under /ui is served. */
const UI_FILES: Readonly<Record<string, string>> = {
  'index.html': 'text/html; charset=utf-8',
  'ui.js': 'text/javascript; charset=utf-8',
  'ui.css': 'text/css; charset=utf-8',
};

/**
 * The page runs only its own script and style, talks only to this origin, and cannot be framed:
 * an id or error message that slipped past escaping still could not run.
 */
export const UI_CSP = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/** Headers of every /ui answer. */
const SECURITY_HEADERS = {
  'content-security-policy': UI_CSP,
  'x-content-type-options': 'nosniff',
  'x-frame-options': 'DENY',
  'referrer-policy': 'no-referrer',
  // a daemon upgrade serves new files at once
  'cache-control': 'no-cache',
} as const;

/** The files, read once on first use: they ship with the package and do not change while it runs. */
const cache = new Map<string, Buffer>();

/**
 * Answers a GET or HEAD under /ui: `/ui` redirects to `/ui/` (the page's links are relative,
 * so it also works behind a proxy's path prefix), `/ui/` is the page, `/ui/<file>` its files.
 * No token: the page asks for it and sends it on its own calls to /v1.
 */
export async function serveUi(path: string, method: string, res: http.ServerResponse): Promise<void> {
  if (path === '/ui') {
    res.writeHead(308, { ...SECURITY_HEADERS, location: '/ui/' }).end();
    return;
  }
  const name = path === '/ui/' ? 'index.html' : path.slice('/ui/'.length);
  const type = Object.hasOwn(UI_FILES, name) ? UI_FILES[name] : undefined;
  if (!type) {
    const text = JSON.stringify({ error: { code: 'not_found', message: `no file ${path}` } });
    res.writeHead(404, { ...SECURITY_HEADERS, 'content-type': 'application/json' }).end(text);
    return;
  }
  let body = cache.get(name);
  if (!body) {
    body = await readFile(new URL(name, UI_DIR));
    cache.set(name, body);
  }
  res.writeHead(200, { ...SECURITY_HEADERS, 'content-type': type, 'content-length': body.length });
  res.end(method === 'HEAD' ? undefined : body);
}
