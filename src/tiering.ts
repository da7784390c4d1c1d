// How soon V8 optimizes our code. The server's process sets this before anything else is
// loaded (cli.ts imports it first); the library (app.ts) leaves its host's V8 alone.
//
// A function is handed to the optimizing compiler once it has run about this many bytes of
// its bytecode (V8's default: 66 KiB). The code a port-forward connection runs is many small
// functions (frame parsing, stream and pipe callbacks), each run a few times per
// connection, so with the default the server needed some 6000 connections of a kubectl
// churn (proxy mode, 2 cores) before it reached its steady cost: 0.79, 0.65, 0.46, 0.45 ms
// per connection in four rounds of 2200 connections from a fresh start. With 8 KiB:
// 0.55, 0.47, 0.42, 0.41, and the 64-byte round trip's p99 in the first rounds 1.0-1.6 ms
// instead of 3.1-3.5 (0.6-0.7 once warm either way). The steady cost is the same; the
// compiles come earlier, on V8's background threads.
//
// Node accepts this flag on its command line but not in NODE_OPTIONS, and the server is
// started as `cri-portforward serve` (systemd, the image, the tests), so it is set here.
// V8 reads it each time it renews a function's budget, so setting it at start takes.

import { setFlagsFromString } from 'node:v8';

/** Bytes of bytecode a function runs between two of V8's tiering checks. */
export const INTERRUPT_BUDGET_BYTES = 8 * 1024;

setFlagsFromString(`--interrupt-budget=${INTERRUPT_BUDGET_BYTES}`);
