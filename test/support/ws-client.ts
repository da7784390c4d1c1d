// A raw `ws` client of our port-forward URL (v4.channel.k8s.io or its base64 variant):
// every message sorted by channel, as the bytes it carries.

import WebSocket from 'ws';

export interface Opened {
  ws: WebSocket;
  /** Messages per channel, in arrival order (binary payload without the channel byte). */
  channels: Map<number, Buffer[]>;
  closed: Promise<{ code: number; reason: string }>;
}

export function openChannels(url: string, protocols: string[], options: WebSocket.ClientOptions = {}): Promise<Opened> {
  const ws = new WebSocket(url.replace(/^http/, 'ws'), protocols, options);
  const channels = new Map<number, Buffer[]>();
  ws.on('message', (data: Buffer, isBinary: boolean) => {
    const channel = isBinary ? data[0]! : data[0]! - 48;
    const payload = isBinary ? data.subarray(1) : Buffer.from(data.toString('latin1', 1), 'base64');
    if (!channels.has(channel)) channels.set(channel, []);
    channels.get(channel)!.push(payload);
  });
  const closed = new Promise<{ code: number; reason: string }>((resolve) =>
    ws.once('close', (code: number, reason: Buffer) => resolve({ code, reason: reason.toString() })),
  );
  return new Promise((resolve, reject) => {
    ws.once('open', () => resolve({ ws, channels, closed }));
    ws.once('unexpected-response', (_req, res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString()));
      res.on('end', () => reject(new Error(`HTTP ${res.statusCode}: ${body.trim()}`)));
    });
    ws.once('error', reject);
  });
}

export function channelBytes(o: Opened, channel: number): Buffer {
  return Buffer.concat(o.channels.get(channel) ?? []);
}
