import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Redis } from 'ioredis';
import { pino } from 'pino';
import { afterAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/daemon/config.js';
import { Daemon } from '../src/daemon/daemon.js';
import { DeliveryError } from '../src/errors.js';
import type { WatchEvent } from '../src/events.js';
import { RedisStreamSink } from '../src/sinks/redis-stream.js';
import { startSimulator } from '../src/simulator.js';
import { REDIS_URL, removeKeys, requireRedis, testPrefix } from './redis.js';

const available = await requireRedis();
const prefix = testPrefix();
afterAll(async () => {
  if (available) await removeKeys(prefix);
});

function event(seq: number): WatchEvent {
  return { id: `w_r.${seq}`, type: 'run.in_progress', seq, watch_id: 'w_r', thread_id: 'thread_r', run_id: 'run_r', from: null, to: 'in_progress', observed_at: '2026-01-01T00:00:00.000Z', run: { id: 'run_r', status: 'in_progress' } };
}

describe.skipIf(!available)('RedisStreamSink (needs Redis)', () => {
  it('appends one entry per event with the event JSON and its ids', async () => {
    const stream = `${prefix}events`;
    const sink = new RedisStreamSink({ url: REDIS_URL, stream });
    await sink.deliver(event(1));
    await sink.deliver(event(2));
    await sink.close();
    const redis = new Redis(REDIS_URL);
    const entries = await redis.xrange(stream, '-', '+');
    redis.disconnect();
    expect(entries).toHaveLength(2);
    const flat = entries[1]![1];
    const fields: Record<string, string> = {};
    for (let i = 0; i < flat.length; i += 2) fields[flat[i]!] = flat[i + 1]!;
    expect(fields).toMatchObject({ id: 'w_r.2', type: 'run.in_progress', run_id: 'run_r', seq: '2' });
    expect(JSON.parse(fields.event ?? 'null')).toEqual(event(2));
  });

  it('caps the stream', async () => {
    const stream = `${prefix}capped`;
    const sink = new RedisStreamSink({ url: REDIS_URL, stream, maxLen: 10 });
    for (let i = 1; i <= 400; i++) await sink.deliver(event(i));
    await sink.close();
    const redis = new Redis(REDIS_URL);
    const length = await redis.xlen(stream);
    redis.disconnect();
    // MAXLEN ~ trims whole nodes: far below 400, never below the cap
    expect(length).toBeLessThan(400);
    expect(length).toBeGreaterThanOrEqual(10);
  });

  it('receives a daemon run end to end', async () => {
    const sim = await startSimulator({ apiKey: 'sk-r' });
    sim.addRun({ threadId: 'thread_rs', runId: 'run_rs', timeline: [{ status: 'in_progress', durationMs: 100 }, { status: 'completed' }], start: 'first_request' });
    const stream = `${prefix}daemon`;
    const config = loadConfig({
      overrides: [
        ['daemon.port', '0'],
        ['daemon.dataDir', JSON.stringify(mkdtempSync(path.join(tmpdir(), 'runwatch-rs-')))],
        ['sinks.stdout.enabled', 'false'],
        ['sinks.redisStream.enabled', 'true'],
        ['sinks.redisStream.stream', JSON.stringify(stream)],
        ['watch.provider', '"openai"'],
        ['watch.baseUrl', JSON.stringify(sim.baseUrl)],
      ],
    });
    const daemon = await Daemon.start(config, { credentials: { apiKey: 'sk-r' }, redisUrl: REDIS_URL }, pino({ level: 'silent' }));
    const redis = new Redis(REDIS_URL);
    try {
      await fetch(`http://127.0.0.1:${daemon.address.port}/v1/watches`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"thread_id":"thread_rs","run_id":"run_rs"}' });
      // block on the stream itself until the terminal event arrives
      const types: string[] = [];
      let last = '0';
      while (!types.includes('run.completed')) {
        const read = await redis.xread('COUNT', 10, 'BLOCK', 5_000, 'STREAMS', stream, last);
        if (!read) throw new Error('no entry within 5 s');
        for (const [id, fields] of read[0]![1]) {
          last = id;
          types.push(fields[fields.indexOf('type') + 1]!);
        }
      }
      expect(types).toEqual(['run.in_progress', 'run.completed']);
    } finally {
      redis.disconnect();
      await daemon.shutdown();
      await sim.close();
    }
  });
});

describe('RedisStreamSink without Redis', () => {
  it('fails a delivery with a DeliveryError that does not leak the URL', async () => {
    const sink = new RedisStreamSink({ url: 'redis://:hunter2-password@127.0.0.1:1/0', stream: 'x' });
    const error = await sink.deliver(event(1)).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(DeliveryError);
    expect((error as Error).message).not.toContain('hunter2');
    await sink.close();
  });
});
