// The SPDY upgrade and stream-pair rules on the wire, against the real server, for cases
// kubectl never produces: handshake refusals, incomplete pairs, bad headers, ports outside
// the PortForward request. (kubectl-spdy.test.ts proves compatibility with a real peer.)

import assert from 'node:assert/strict';
import { connect, type Socket } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { criClient, HOST_NETWORK, podConfig, type CriTestClient } from '../support/cri-client';
import { cleanUpAndAssertNothingLeft, startServer, type ServerProcess } from '../support/server-process';
import { FrameCollector, PeerDeflater, RST, T, dataFrame, portForwardHeaders, synStream } from '../support/spdy-frames';

interface Upgraded {
  socket: Socket;
  frames: FrameCollector;
  head: string;
}

/** Send an upgrade request by hand; resolve with the response head and a frame reader. */
function upgrade(url: string, headers: Record<string, string>): Promise<Upgraded> {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const socket = connect(Number(u.port), u.hostname);
    const frames = new FrameCollector();
    let buffered = Buffer.alloc(0);
    let head: string | undefined;
    socket.on('data', (chunk: Buffer) => {
      if (head !== undefined) return frames.push(chunk);
      buffered = Buffer.concat([buffered, chunk]);
      const end = buffered.indexOf('\r\n\r\n');
      if (end < 0) return;
      head = buffered.toString('latin1', 0, end);
      const rest = buffered.subarray(end + 4);
      resolve({ socket, frames, head: head + '\r\n\r\n' + (head.startsWith('HTTP/1.1 101') ? '' : rest.toString()) });
      if (head.startsWith('HTTP/1.1 101') && rest.length > 0) frames.push(rest);
    });
    socket.on('error', reject);
    const lines = Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`).join('');
    socket.write(`POST ${u.pathname} HTTP/1.1\r\nHost: ${u.host}\r\n${lines}\r\n`);
  });
}

const SPDY_HEADERS = { Connection: 'Upgrade', Upgrade: 'SPDY/3.1', 'X-Stream-Protocol-Version': 'portforward.k8s.io' };

describe('SPDY port-forward on the wire', () => {
  let server: ServerProcess;
  let cri: CriTestClient;
  let sandboxId: string;
  const url = async (ports: number[] = []): Promise<string> =>
    (await cri.call('PortForward', { pod_sandbox_id: sandboxId, port: ports })).url;

  before(async () => {
    server = await startServer({ args: ['--stream-creation-timeout', '300ms'] });
    cri = criClient(server.criAddress);
    sandboxId = (await cri.call('RunPodSandbox', { config: podConfig('wire', HOST_NETWORK) })).pod_sandbox_id;
  });

  after(async () => {
    if (!server) return;
    cri.close();
    assert.equal(await server.stop(), 0);
    cleanUpAndAssertNothingLeft(server, server.dir);
  });

  it('answers the handshake as httpstream does: 101, or 400 / 403 with a body', async () => {
    const ok = await upgrade(await url(), SPDY_HEADERS);
    assert.match(ok.head, /^HTTP\/1\.1 101 Switching Protocols\r\n/);
    assert.match(ok.head, /\r\nUpgrade: SPDY\/3\.1\r\n/);
    assert.match(ok.head, /\r\nX-Stream-Protocol-Version: portforward\.k8s\.io\r\n/);
    ok.socket.destroy();

    const noVersion = await upgrade(await url(), { Connection: 'Upgrade', Upgrade: 'SPDY/3.1' });
    assert.match(noVersion.head, /^HTTP\/1\.1 400 /);
    assert.match(noVersion.head, /no X-Stream-Protocol-Version/);
    noVersion.socket.destroy();

    const wrong = await upgrade(await url(), { ...SPDY_HEADERS, 'X-Stream-Protocol-Version': 'v4.channel.k8s.io, channel.k8s.io' });
    assert.match(wrong.head, /^HTTP\/1\.1 403 /);
    assert.match(wrong.head, /\r\nX-Accepted-Stream-Protocol-Versions: portforward\.k8s\.io\r\n/i);
    assert.match(wrong.head, /unable to negotiate protocol/);
    wrong.socket.destroy();
  });

  it('replies at once, then drops a pair incomplete after the creation timeout with upstream\'s text and a reset', async () => {
    const up = await upgrade(await url(), SPDY_HEADERS);
    const deflater = new PeerDeflater();
    up.socket.write(await synStream(deflater, 1, portForwardHeaders('error', 8080, 0)));
    const reply = await up.frames.next();
    assert.deepEqual([reply.type, reply.streamId], [T.SynReply, 1]);
    const text = await up.frames.nextMatching((f) => !f.control && f.streamId === 1 && f.length > 0, 3000);
    assert.match(text.body.toString(), /^\(conn=0x[0-9a-f]+, request=0\) timed out waiting for streams$/);
    const rst = await up.frames.nextMatching((f) => f.control && f.type === T.RstStream);
    assert.deepEqual([rst.streamId, rst.body.readUInt32BE(4)], [1, RST.Cancel]);
    up.socket.destroy();
  });

  it('resets a stream with a bad port or streamtype, and nothing else; the session goes on', async () => {
    const up = await upgrade(await url(), SPDY_HEADERS);
    const deflater = new PeerDeflater();
    up.socket.write(await synStream(deflater, 1, portForwardHeaders('data', 'eighty', 0)));
    up.socket.write(await synStream(deflater, 3, [['streamtype', 'stdout'], ['port', '80'], ['requestid', '1']]));
    up.socket.write(await synStream(deflater, 5, portForwardHeaders('error', 70000, 2)));
    for (const id of [1, 3, 5]) {
      const f = await up.frames.next();
      assert.deepEqual([f.type, f.streamId, f.body.readUInt32BE(4)], [T.RstStream, id, RST.Cancel]);
    }
    up.socket.write(await synStream(deflater, 7, portForwardHeaders('error', 80, 3)));
    assert.deepEqual([(await up.frames.next()).type], [T.SynReply]);
    up.socket.destroy();
  });

  it('refuses a port the PortForward request did not name, with a clear text', async () => {
    const up = await upgrade(await url([8080]), SPDY_HEADERS);
    const deflater = new PeerDeflater();
    up.socket.write(await synStream(deflater, 1, portForwardHeaders('error', 9090, 0)));
    up.socket.write(dataFrame(1, '', true));
    up.socket.write(await synStream(deflater, 3, portForwardHeaders('data', 9090, 0)));
    const text = await up.frames.nextMatching((f) => !f.control && f.streamId === 1 && f.length > 0);
    assert.equal(
      text.body.toString(),
      `error forwarding port 9090 to pod ${sandboxId}, uid : port 9090 is not among the ports of this port-forward request (8080)`,
    );
    up.socket.destroy();
  });
});
