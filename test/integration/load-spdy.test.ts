// Our own SPDY client against the real server, at a scale kubectl tests cannot reach
// quickly: 1000 forwarded connections at once echoing 1 MiB each beside two CPU burners
// (every byte back, every data stream ended by FIN both ways, none reset), and a churn of
// 10 000 short connections after which the server's fds are back and its RSS has not grown.

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { startPodApp, type PodApp } from '../support/apps';
import { withCpuBurners } from '../support/burners';
import { criClient, runSandbox, type CriTestClient } from '../support/cri-client';
import { loadSkipReason } from '../support/load-gate';
import { cleanUpAndAssertNothingLeft, serverFds, serverFdsSettled, serverMemory, startServer, type ServerProcess } from '../support/server-process';
import { portForwardUrls, runEchoLoad, type LoadSummary } from '../support/spdy-load';

const skip = loadSkipReason();
const MiB = 1 << 20;
const BURNERS = 2;
/**
 * One session, as one kubectl carrying 1000 local connections: 2000 streams open at once
 * (each pair's error stream stays open until its forward ends).
 */
const LOAD_SESSIONS = 1;
const LOAD_CONNECTIONS = 1000;
const CHURN_SESSIONS = 4;
const CHURN_CONNECTIONS = 10_000;
const CHURN_IN_FLIGHT_PER_SESSION = 8;
const CHURN_RSS_SAMPLE_AT = 2_000;
const CHURN_RSS_GROWTH_BYTES = 32 * MiB;

/** The parts of a summary that must be perfect, and what perfect is. */
function verdict(s: LoadSummary): object {
  const { clean, reset, rstFrames, sessionEnded, stalled, corrupt, bytesLost, errorTexts, goAway } = s;
  return { clean, reset, rstFrames, sessionEnded, stalled, corrupt, bytesLost, errorTexts, goAway };
}

function perfect(connections: number): object {
  return { clean: connections, reset: 0, rstFrames: 0, sessionEnded: 0, stalled: 0, corrupt: 0, bytesLost: 0, errorTexts: 0, goAway: false };
}

const mib = (bytes: number): number => Math.round(bytes / MiB);

describe('our SPDY client under load', { skip }, () => {
  let server: ServerProcess;
  let cri: CriTestClient;
  let sandboxId: string;
  let echo: PodApp;
  let fdsAtStart: number;

  before(async () => {
    server = await startServer({ args: ['--log-level', 'warn'] });
    cri = criClient(server.criAddress);
    const pod = await runSandbox(cri, 'load');
    sandboxId = pod.id;
    echo = await startPodApp(pod.netns, 'echo');
    fdsAtStart = serverFds(server);
  });

  after(async () => {
    if (!server) return;
    await echo?.stop();
    await cri.call('RemovePodSandbox', { pod_sandbox_id: sandboxId });
    cri.close();
    assert.equal(await server.stop(), 0);
    cleanUpAndAssertNothingLeft(server, server.dir);
  });

  it(`carries ${LOAD_CONNECTIONS} connections at once x 1 MiB on one session with ${BURNERS} CPU burners: every byte back, FIN both ways, none reset`, async (t) => {
    const urls = await portForwardUrls(cri, sandboxId, echo.port, LOAD_SESSIONS);
    const summary = await withCpuBurners(BURNERS, () => runEchoLoad(urls, echo.port, LOAD_CONNECTIONS, MiB));
    const memory = serverMemory(server);
    t.diagnostic(`summary: ${JSON.stringify(summary)}; server peak RSS ${mib(memory.peakRssBytes)} MiB, RSS ${mib(memory.rssBytes)} MiB`);
    assert.deepEqual(verdict(summary), perfect(LOAD_CONNECTIONS), JSON.stringify(summary));
    assert.equal(await serverFdsSettled(server, fdsAtStart), fdsAtStart, 'server fds back to their count at start');
  });

  it(`churns ${CHURN_CONNECTIONS} short connections (1 KiB echo each) over ${CHURN_SESSIONS} sessions: fds back, RSS flat`, async (t) => {
    const fdsBefore = serverFds(server);
    let rssAtSample = NaN;
    const urls = await portForwardUrls(cri, sandboxId, echo.port, CHURN_SESSIONS);
    const summary = await runEchoLoad(urls, echo.port, CHURN_CONNECTIONS, 1024, {
      inFlight: CHURN_IN_FLIGHT_PER_SESSION,
      onEnded: (count) => {
        if (count === CHURN_RSS_SAMPLE_AT) rssAtSample = serverMemory(server).rssBytes;
      },
    });
    const rssAtEnd = serverMemory(server).rssBytes;
    const fdsAfter = await serverFdsSettled(server, fdsBefore);
    t.diagnostic(
      `${Math.round(summary.connections / summary.seconds)} connections/s; RSS after ${CHURN_RSS_SAMPLE_AT}: ${mib(rssAtSample)} MiB, ` +
        `at the end: ${mib(rssAtEnd)} MiB; fds ${fdsBefore} -> ${fdsAfter}`,
    );
    assert.deepEqual(verdict(summary), perfect(CHURN_CONNECTIONS), JSON.stringify(summary));
    assert.equal(fdsAfter, fdsBefore, 'server fds back to their count before the churn');
    assert.ok(
      rssAtEnd <= rssAtSample + CHURN_RSS_GROWTH_BYTES,
      `server RSS grew from ${mib(rssAtSample)} MiB after ${CHURN_RSS_SAMPLE_AT} connections to ${mib(rssAtEnd)} MiB`,
    );
  });
});
