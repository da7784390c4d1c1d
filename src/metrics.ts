// Prometheus metrics, on a registry of our own (not prom-client's global one) so that two
// servers in one process, as in tests, never share counters.

import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { memoryTrims } from './memory-trim';

export type TokenRejectReason = 'unknown' | 'limit';

export interface Metrics {
  readonly registry: Registry;
  readonly tokensIssued: Counter;
  readonly tokensRedeemed: Counter;
  readonly tokensExpired: Counter;
  readonly tokensRejected: Counter<'reason'>;
  readonly sessionsActive: Gauge<'protocol'>;
  readonly sessionsTotal: Counter<'protocol'>;
  readonly handshakeFailures: Counter<'protocol' | 'reason'>;
  readonly forwardsActive: Gauge;
  readonly forwardsTotal: Counter;
  readonly dialErrors: Counter<'reason'>;
  readonly forwardedBytes: Counter<'direction'>;
  /** forwardedBytes' two children, bound once: a label lookup per connection is not free. */
  readonly bytesToPod: { inc(value: number): void };
  readonly bytesToClient: { inc(value: number): void };
  readonly spdyPings: Counter;
  readonly streamStallResets: Counter;
  readonly policyDenied: Counter<'reason'>;
  readonly handovers: Counter<'result'>;
  readonly sessionsHandedOver: Counter<'protocol'>;
  readonly handoverPause: Histogram;
  /** Report sandbox counts by CRI state on every scrape. */
  observeSandboxes(count: () => Record<string, number>): void;
  /** Report the buffer budget (capacity, held, refusals) on every scrape. */
  observeBudget(budget: { readonly capacity: number; readonly held: number; readonly refusals: number }): void;
}

export function createMetrics(): Metrics {
  const registry = new Registry();
  const forwardedBytes = new Counter({
    name: 'cri_portforward_bytes_total',
    help: 'Bytes forwarded, by direction (to_pod, to_client), counted when a connection ends.',
    labelNames: ['direction'],
    registers: [registry],
  });
  collectDefaultMetrics({ register: registry });
  let countSandboxes: () => Record<string, number> = () => ({});
  // Read at scrape time: the data path only adds and subtracts, never touches a metric.
  let budget = { capacity: 0, held: 0, refusals: 0 };
  new Gauge({
    name: 'cri_portforward_buffer_budget_bytes',
    help: 'What forwarded connections may hold beyond their base buffers, all together (--max-buffer-memory).',
    registers: [registry],
    collect() {
      this.set(budget.capacity);
    },
  });
  new Gauge({
    name: 'cri_portforward_buffer_held_bytes',
    help: 'Bytes of the buffer budget lent to connections now (bulk read buffers, write queues, receive buffers).',
    registers: [registry],
    collect() {
      this.set(budget.held);
    },
  });
  new Counter({
    name: 'cri_portforward_buffer_budget_waits_total',
    help: 'Times a connection was refused growth because the budget was full, and held back instead.',
    registers: [registry],
    collect() {
      this.reset();
      this.inc(budget.refusals);
    },
  });
  new Counter({
    name: 'cri_portforward_memory_trims_total',
    help: 'Times the quiet server collected garbage and gave free pages back to the kernel after a burst.',
    registers: [registry],
    collect() {
      this.reset();
      this.inc(memoryTrims());
    },
  });
  new Gauge({
    name: 'cri_portforward_sandboxes',
    help: 'Sandboxes known to the embedded store, by CRI state.',
    labelNames: ['state'],
    registers: [registry],
    collect() {
      this.reset();
      for (const [state, n] of Object.entries(countSandboxes())) this.set({ state }, n);
    },
  });
  return {
    registry,
    tokensIssued: new Counter({
      name: 'cri_portforward_tokens_issued_total',
      help: 'PortForward URLs issued.',
      registers: [registry],
    }),
    tokensRedeemed: new Counter({
      name: 'cri_portforward_tokens_redeemed_total',
      help: 'PortForward URLs redeemed by a client.',
      registers: [registry],
    }),
    tokensExpired: new Counter({
      name: 'cri_portforward_tokens_expired_total',
      help: 'PortForward URLs that expired before anyone redeemed them.',
      registers: [registry],
    }),
    tokensRejected: new Counter({
      name: 'cri_portforward_tokens_rejected_total',
      help: 'Refused tokens: reason="unknown" for a redeem of an unknown, expired or used token; reason="limit" for a PortForward refused because too many URLs are in flight.',
      labelNames: ['reason'],
      registers: [registry],
    }),
    sessionsActive: new Gauge({
      name: 'cri_portforward_sessions_active',
      help: 'Port-forward sessions open now, by protocol.',
      labelNames: ['protocol'],
      registers: [registry],
    }),
    sessionsTotal: new Counter({
      name: 'cri_portforward_sessions_total',
      help: 'Port-forward sessions started, by protocol.',
      labelNames: ['protocol'],
      registers: [registry],
    }),
    handshakeFailures: new Counter({
      name: 'cri_portforward_handshake_failures_total',
      help: 'Upgrades refused during the protocol handshake, by protocol and reason.',
      labelNames: ['protocol', 'reason'],
      registers: [registry],
    }),
    forwardsActive: new Gauge({
      name: 'cri_portforward_connections_active',
      help: 'Forwarded connections open now.',
      registers: [registry],
    }),
    forwardsTotal: new Counter({
      name: 'cri_portforward_connections_total',
      help: 'Forwarded connections attempted.',
      registers: [registry],
    }),
    dialErrors: new Counter({
      name: 'cri_portforward_dial_errors_total',
      help: 'Dials into a sandbox that failed, by reason (refused, timeout, netns-closed, sandbox-gone, port-not-allowed).',
      labelNames: ['reason'],
      registers: [registry],
    }),
    forwardedBytes,
    bytesToPod: forwardedBytes.labels('to_pod'),
    bytesToClient: forwardedBytes.labels('to_client'),
    spdyPings: new Counter({
      name: 'cri_portforward_spdy_pings_total',
      help: 'SPDY PINGs from clients answered (kubectl sends one every 5 s).',
      registers: [registry],
    }),
    streamStallResets: new Counter({
      name: 'cri_portforward_stream_stall_resets_total',
      help: 'SPDY streams reset because they held a full receive buffer without progress for --stream-stall-timeout.',
      registers: [registry],
    }),
    policyDenied: new Counter({
      name: 'cri_portforward_policy_denied_total',
      help: 'Port-forwards refused by --port-policy and pod annotations, at PortForward or per connection, by reason (pod-denies, not-declared, bad-annotation).',
      labelNames: ['reason'],
      registers: [registry],
    }),
    handovers: new Counter({
      name: 'cri_portforward_handovers_total',
      help: 'Upgrades (SIGUSR2) by result: ok (the new process took over), failed (this process went on serving).',
      labelNames: ['result'],
      registers: [registry],
    }),
    sessionsHandedOver: new Counter({
      name: 'cri_portforward_sessions_handed_over_total',
      help: 'Sessions this process adopted from the process it upgraded (and, carried over, from earlier upgrades), by protocol.',
      labelNames: ['protocol'],
      registers: [registry],
    }),
    handoverPause: new Histogram({
      name: 'cri_portforward_handover_pause_seconds',
      help: 'How long each handed-over session was paused: from the old process freezing it to the new one reading it again.',
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers: [registry],
    }),
    observeSandboxes(count) {
      countSandboxes = count;
    },
    observeBudget(b) {
      budget = b;
    },
  };
}

/** Counter values as an upgrade carries them to the new process (counters of ours only). */
export type CounterValues = { name: string; values: { labels: Record<string, string | number>; value: number }[] }[];

export async function exportCounters(metrics: Metrics): Promise<CounterValues> {
  const all = await metrics.registry.getMetricsAsJSON();
  return all
    .filter((m) => (m.type as unknown as string) === 'counter' && m.name.startsWith('cri_portforward_'))
    .map((m) => ({ name: m.name, values: m.values.filter((v) => v.value > 0).map((v) => ({ labels: v.labels as Record<string, string | number>, value: v.value })) }));
}

/** The new process goes on counting from where the old one was. */
export function importCounters(metrics: Metrics, counters: CounterValues): void {
  for (const { name, values } of counters) {
    const counter = metrics.registry.getSingleMetric(name);
    if (!(counter instanceof Counter)) continue;
    for (const { labels, value } of values) counter.inc(labels, value);
  }
}
