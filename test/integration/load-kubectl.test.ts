// kubectl port-forward on a busy machine: two CPU burners beside the server, kubectl and
// the clients, and 64 connections at once each writing 1 MiB to an echo app and
// half-closing right after. Every answer must come back whole and end with the peer's FIN,
// three rounds in a row, over plain SPDY and through kubectl's default WebSocket tunnel.
// (A grace measured from the first direction's end, not from the last byte, cuts answers
// here: the echo of 1 MiB takes longer than that once the CPUs are shared.)

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { withCpuBurners } from '../support/burners';
import type { KubectlPortForward } from '../support/kubectl';
import { app, endWorld, exitsWithin, kubectl, sandbox, world, type World } from '../support/kubectl-world';
import { loadSkipReason } from '../support/load-gate';
import { echoToEnd, randomPayload, sha256 } from '../support/tcp-client';

const skip = loadSkipReason();
const CONNECTIONS = 64;
const BYTES = 1 << 20;
const ROUNDS = 3;
const BURNERS = 2;

interface Round {
  /** Connections that got every byte back, equal, and then the peer's FIN. */
  clean: number;
  /** Ended by an error (a reset reaching the local socket) instead of EOF. */
  errors: number;
  /** Closed without FIN or error. */
  closed: number;
  /** Ended by EOF but with fewer or other bytes than were sent. */
  cutOrWrong: number;
  bytesLost: number;
  seconds: number;
}

async function round(localPort: number): Promise<Round> {
  const started = process.hrtime.bigint();
  const outcomes = await Promise.all(
    Array.from({ length: CONNECTIONS }, async () => {
      const payload = randomPayload(BYTES);
      const ending = await echoToEnd(localPort, payload);
      return { ending, intact: ending.received.length === BYTES && sha256(ending.received) === sha256(payload) };
    }),
  );
  return {
    clean: outcomes.filter((o) => o.ending.endedBy === 'end' && o.intact).length,
    errors: outcomes.filter((o) => o.ending.endedBy === 'error').length,
    closed: outcomes.filter((o) => o.ending.endedBy === 'close').length,
    cutOrWrong: outcomes.filter((o) => o.ending.endedBy === 'end' && !o.intact).length,
    bytesLost: outcomes.reduce((n, o) => n + Math.max(0, BYTES - o.ending.received.length), 0),
    seconds: Number((Number(process.hrtime.bigint() - started) / 1e9).toFixed(2)),
  };
}

for (const transport of ['plain SPDY', 'the WebSocket tunnel'] as const) {
  describe(`kubectl port-forward over ${transport} with ${BURNERS} CPU burners`, { skip }, () => {
    let w: World;
    let forward: KubectlPortForward;

    before(async () => {
      w = await world([], transport === 'the WebSocket tunnel');
      const pod = await sandbox(w, 'busy');
      const echo = await app(w, pod.netns, 'echo');
      forward = await kubectl(w, pod.id, [echo.port]);
    });

    after(() => endWorld(w));

    it(`carries ${CONNECTIONS} connections x 1 MiB half-closed after writing, every echo whole and ended by EOF, ${ROUNDS} rounds in a row`, async (t) => {
      const rounds = await withCpuBurners(BURNERS, async () => {
        const done: Round[] = [];
        for (let i = 0; i < ROUNDS; i++) done.push(await round(forward.localPorts[0]!));
        return done;
      });
      t.diagnostic(`rounds: ${JSON.stringify(rounds)}`);
      const perfect = { clean: CONNECTIONS, errors: 0, closed: 0, cutOrWrong: 0, bytesLost: 0 };
      assert.deepEqual(
        rounds.map(({ seconds: _, ...r }) => r),
        Array.from({ length: ROUNDS }, () => perfect),
        `per round: ${JSON.stringify(rounds)}`,
      );
      if (transport === 'the WebSocket tunnel') {
        assert.deepEqual(w.api.upgrades.map((u) => u.responseStatusLine), ['HTTP/1.1 101 Switching Protocols'], 'served through the tunnel');
      }
      assert.equal(await exitsWithin(forward, 10), 'still running');
    });
  });
}
