import { createHmac } from 'node:crypto';
import { mkdtempSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { PassThrough, Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import type { WatchEvent } from '../src/events.js';
import { FileSink } from '../src/sinks/file.js';
import { loadModuleSink } from '../src/sinks/module.js';
import { SinkDispatcher } from '../src/sinks/sink.js';
import { StdoutSink } from '../src/sinks/stdout.js';
import { signWebhook, verifyWebhook, webhookKey } from '../src/standard-webhooks.js';
import type { Sink, SinkFailure } from '../src/sinks/sink.js';

function event(seq: number): WatchEvent {
  return {
    id: `w_1.${seq}`,
    type: 'run.in_progress',
    seq,
    watch_id: 'w_1',
    thread_id: 'thread_1',
    run_id: 'run_1',
    from: null,
    to: 'in_progress',
    observed_at: '2026-01-01T00:00:00.000Z',
    run: { id: 'run_1', status: 'in_progress' },
  };
}

describe('StdoutSink', () => {
  it('writes one JSON object per line', async () => {
    const stream = new PassThrough();
    let text = '';
    stream.on('data', (chunk: Buffer) => (text += chunk.toString()));
    const sink = new StdoutSink(stream);
    await sink.deliver(event(1));
    await sink.deliver(event(2));
    await sink.close();
    const lines = text.trim().split('\n');
    expect(lines.map((l) => (JSON.parse(l) as WatchEvent).seq)).toEqual([1, 2]);
  });

  it('waits for drain under backpressure and loses nothing', async () => {
    const received: string[] = [];
    const slow = new Writable({
      highWaterMark: 16,
      write(chunk: Buffer, _encoding, callback) {
        received.push(chunk.toString());
        setImmediate(callback);
      },
    });
    const sink = new StdoutSink(slow);
    for (let i = 1; i <= 50; i++) await sink.deliver(event(i));
    await sink.close();
    expect(received.join('').trim().split('\n')).toHaveLength(50);
  });

  it('reports a broken stream (EPIPE) as a failed delivery instead of crashing', async () => {
    const broken = new Writable({
      write(_chunk, _encoding, callback) {
        callback(Object.assign(new Error('write EPIPE'), { code: 'EPIPE' }));
      },
    });
    const sink = new StdoutSink(broken);
    await sink.deliver(event(1)).catch(() => undefined);
    await new Promise((resolve) => setImmediate(resolve));
    await expect(sink.deliver(event(2))).rejects.toThrow('EPIPE');
    await sink.close();
    expect(broken.listenerCount('error')).toBe(0);
  });
});

describe('SinkDispatcher', () => {
  it('isolates a failing sink and keeps order for every sink', async () => {
    const good: number[] = [];
    const slow: number[] = [];
    const failures: SinkFailure[] = [];
    const sinks: Sink[] = [
      { name: 'good', deliver: (e) => void good.push(e.seq) },
      {
        name: 'slow',
        deliver: async (e) => {
          await new Promise((resolve) => setTimeout(resolve, e.seq % 2 === 0 ? 1 : 15));
          slow.push(e.seq);
        },
      },
      {
        name: 'broken',
        deliver: () => {
          throw new Error('down');
        },
      },
    ];
    const dispatcher = new SinkDispatcher(sinks, { onFailure: (f) => failures.push(f) });
    for (let i = 1; i <= 6; i++) dispatcher.dispatch(event(i));
    // dispatch returns at once: the fast sink has its events before the slow one
    await new Promise((resolve) => setImmediate(resolve));
    expect(good).toEqual([1, 2, 3, 4, 5, 6]);
    await dispatcher.flush();
    expect(slow).toEqual([1, 2, 3, 4, 5, 6]);
    expect(failures.map((f) => [f.sink, f.event.seq])).toEqual([1, 2, 3, 4, 5, 6].map((seq) => ['broken', seq]));
  });

  it('closes every sink even when one fails to close, once', async () => {
    let closed = 0;
    const dispatcher = new SinkDispatcher([
      { name: 'a', deliver: () => undefined, close: () => void (closed += 1) },
      {
        name: 'b',
        deliver: () => undefined,
        close: () => {
          throw new Error('close failed');
        },
      },
      { name: 'c', deliver: () => undefined, close: () => void (closed += 1) },
    ]);
    await Promise.all([dispatcher.close(), dispatcher.close()]);
    expect(closed).toBe(2);
  });
});

describe('FileSink', () => {
  it('appends NDJSON and reopens the path after a rotation', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'runwatch-file-'));
    const file = path.join(dir, 'nested', 'events.ndjson');
    const sink = new FileSink({ path: file, fsync: 'always' });
    await sink.deliver(event(1));
    renameSync(file, `${file}.1`);
    await sink.deliver(event(2));
    await sink.reopen();
    await sink.deliver(event(3));
    await sink.close();
    const seqs = (name: string): number[] => readFileSync(name, 'utf8').trim().split('\n').map((l) => (JSON.parse(l) as WatchEvent).seq);
    // the event written after the move still went to the open (moved) file; after reopen, a new file
    expect(seqs(`${file}.1`)).toEqual([1, 2]);
    expect(seqs(file)).toEqual([3]);
  });
});

describe('module sinks', () => {
  it('loads a default-exported factory and rejects what is not a sink', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'runwatch-module-'));
    const good = path.join(dir, 'good.mjs');
    writeFileSync(good, "export default (options) => ({ name: 'custom', seen: [], deliver(e) { this.seen.push([options.prefix, e.id]); } });\n");
    const sink = (await loadModuleSink(good, { prefix: 'p' })) as Sink & { seen: unknown[] };
    await sink.deliver(event(1));
    expect(sink.seen).toEqual([['p', 'w_1.1']]);
    const bad = path.join(dir, 'bad.mjs');
    writeFileSync(bad, 'export default 42;\n');
    await expect(loadModuleSink(bad)).rejects.toThrow('must export default a Sink');
    await expect(loadModuleSink(path.join(dir, 'missing.mjs'))).rejects.toThrow('cannot load sink module');
  });
});

describe('Standard Webhooks signatures', () => {
  const secret = `whsec_${Buffer.from('0123456789abcdef0123456789abcdef').toString('base64')}`;

  it('signs id.timestamp.body with HMAC-SHA256 and verifies it', () => {
    const body = JSON.stringify(event(1));
    const ts = Math.floor(Date.now() / 1000);
    const signature = signWebhook(webhookKey(secret), 'w_1.1', ts, body);
    const expected = createHmac('sha256', Buffer.from('0123456789abcdef0123456789abcdef')).update(`w_1.1.${ts}.${body}`).digest('base64');
    expect(signature).toBe(`v1,${expected}`);
    const headers = { 'webhook-id': 'w_1.1', 'webhook-timestamp': String(ts), 'webhook-signature': `v1,bm90IGl0 ${signature}` };
    expect(verifyWebhook(secret, headers, body)).toBe(true);
    expect(verifyWebhook(secret, headers, `${body} `)).toBe(false);
    expect(verifyWebhook(secret, { ...headers, 'webhook-timestamp': String(ts - 3600) }, body)).toBe(false);
  });

  it('rejects malformed secrets', () => {
    expect(() => webhookKey('whsec_short')).toThrow('invalid webhook secret');
    expect(() => webhookKey('whsec_not base64!!')).toThrow('invalid webhook secret');
  });
});
