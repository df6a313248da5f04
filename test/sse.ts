import http from 'node:http';
import type { WatchEvent } from '../src/events.js';

/** One server-sent event frame as the daemon writes it. */
export interface Frame {
  id: string;
  event: string;
  data: string;
}

/** Reads SSE frames from `url` until `done` holds, then closes the connection; rejects after `timeoutMs` with what it got. */
export function readFrames(url: string, done: (frames: Frame[]) => boolean, headers: Record<string, string> = {}, timeoutMs = 15_000): Promise<Frame[]> {
  return new Promise((resolve, reject) => {
    const frames: Frame[] = [];
    const req = http.get(url, { headers }, (res) => {
      let buffer = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        buffer += chunk;
        let end: number;
        while ((end = buffer.indexOf('\n\n')) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const frame: Partial<Frame> = {};
          for (const line of block.split('\n')) {
            const colon = line.indexOf(': ');
            const key = line.slice(0, colon);
            if (key === 'id' || key === 'event' || key === 'data') frame[key] = line.slice(colon + 2);
          }
          if (frame.id && frame.event && frame.data) frames.push(frame as Frame);
        }
        if (done(frames)) {
          clearTimeout(timer);
          req.destroy();
          resolve(frames);
        }
      });
    });
    const timer = setTimeout(() => {
      req.destroy();
      reject(new Error(`SSE: condition not met; got ${frames.map((f) => f.event).join(', ')}`));
    }, timeoutMs);
    req.on('error', () => undefined);
  });
}

/** Reads the events of an SSE stream until `done` holds for the events seen. */
export async function readSseEvents(url: string, done: (events: WatchEvent[]) => boolean, headers: Record<string, string> = {}): Promise<WatchEvent[]> {
  const frames = await readFrames(url, (list) => done(list.map((f) => JSON.parse(f.data) as WatchEvent)), headers);
  return frames.map((f) => JSON.parse(f.data) as WatchEvent);
}
