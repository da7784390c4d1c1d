// 1 GiB through WebSocket v4 with a fast ws client (1 MiB messages) straight to our URL:
// MB/s and the server process's CPU seconds per GiB. (kubectl's SPDY-in-WebSocket tunnel
// is measured by kubectl-spdy.ts with transport 'default'.)

import WebSocket from 'ws';
import type { Direction } from './pod-side';
import { until } from '../test/support/until';
import { cpuSeconds, untilCpuQuiet } from './proc';
import { startBenchSandbox } from './sandbox';

export async function websocketTransfer(direction: Direction, bytes: number): Promise<{ mbPerSecond: number; serverCpuPerGiB: number }> {
  const { server, cri, sandboxId, app, stop } = await startBenchSandbox(direction === 'download' ? `source:${bytes}` : 'sink');
  try {
    const { url } = await cri.call('PortForward', { pod_sandbox_id: sandboxId, port: [app.port] });
    const cpuBefore = cpuSeconds(server.proc.pid!);
    const started = process.hrtime.bigint();
    const ws = new WebSocket(url.replace(/^http/, 'ws'), ['v4.channel.k8s.io'], { maxPayload: 64 << 20 });
    let received = 0;
    ws.on('message', (data: Buffer) => {
      if (data[0] === 0) received += data.length - 1;
    });
    await new Promise<void>((resolve, reject) => ws.once('open', resolve).once('error', reject));
    if (direction === 'upload') {
      const message = Buffer.alloc((1 << 20) + 1, 'u');
      message[0] = 0;
      let sent = 0;
      while (sent < bytes) {
        ws.send(message);
        sent += message.length - 1;
        while (ws.bufferedAmount > 8 << 20) await new Promise((r) => setImmediate(r));
      }
      await until('the last message to be sent', () => ws.bufferedAmount === 0, { intervalMs: 1, timeoutMs: 60_000 });
      ws.close(1000);
    }
    await new Promise((resolve) => ws.once('close', resolve));
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    const cpu = (await untilCpuQuiet(server.proc.pid!)) - cpuBefore; // the server has finished the forward
    if (direction === 'download' && received !== bytes + 2) throw new Error(`websocket download: ${received - 2} of ${bytes} bytes`);
    return { mbPerSecond: bytes / 1e6 / seconds, serverCpuPerGiB: cpu / (bytes / 2 ** 30) };
  } finally {
    await stop();
  }
}
