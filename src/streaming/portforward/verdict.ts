// The error policy of port-forward, decided once for every protocol. A forwarded connection
// that could not be piped to the pod ends with a verdict; SPDY pairs and WebSocket channels
// only carry it out (text on the error stream or channel, reset the data side, end the
// session).
//
// Why these choices (README "SPDY port-forward and its error policy"): kubectl >= 1.23 ends
// the whole session on any error text (kubectl#1169, kubernetes#111825), so text is written
// only when the user must be told: the sandbox is gone (nothing will work again), the port
// is outside the request, or the operator chose upstream's behaviour for refused dials
// (--refused-dial=error). Per-connection trouble otherwise resets only that connection and
// the session lives on.

import type { DialFailure } from '../../netns/forwarder';

export type RefusedDialPolicy = 'reset' | 'error';

/**
 * Why a forward did not reach the pod: a dial failure, the port is not among those the
 * PortForward request named, or the port policy closes it (--port-policy, pod annotations).
 */
export type ForwardFailure = DialFailure | 'port-not-allowed' | 'port-closed';

export interface ForwardVerdict {
  /** Upstream's error text for the error stream or channel; undefined: say nothing. */
  readonly errorText: string | undefined;
  /** Reset the data side (SPDY RST_STREAM CANCEL) rather than end it with a FIN. */
  readonly resetData: boolean;
  /** End the whole session, END_SESSION_LINGER_MS after the text went out. */
  readonly endSession: boolean;
}

/** After a fatal error text, how long the client gets to read it before the session ends. */
export const END_SESSION_LINGER_MS = 1_000;

/** The connection reached the pod (however the pipe ended), or the session went away first. */
export const PIPED: ForwardVerdict = { errorText: undefined, resetData: false, endSession: false };

/** The verdict for a forward that failed before its pipe existed. */
export function verdictFor(
  failure: ForwardFailure,
  policy: RefusedDialPolicy,
  text: { port: number; sandboxId: string; message: string },
): ForwardVerdict {
  const errorText = forwardErrorText(text.port, text.sandboxId, text.message);
  switch (failure) {
    case 'sandbox-gone':
    case 'netns-closed':
      return { errorText, resetData: true, endSession: true };
    case 'port-not-allowed':
      return { errorText, resetData: true, endSession: false };
    case 'refused':
    case 'timeout':
    case 'port-closed':
      // A port the policy closes fails as a refused dial does (the app is never dialled);
      // with "error" the text names the policy and how to open the port.
      // "error": upstream's text, and kubectl ends the session itself on reading it.
      // "reset": only this connection fails; the next one works once the app listens.
      return policy === 'error' ? { errorText, resetData: true, endSession: false } : { errorText: undefined, resetData: true, endSession: false };
  }
}

/** Upstream's error-stream text: "error forwarding port %d to pod %s, uid %v: %v". */
export function forwardErrorText(port: number, sandboxId: string, message: string): string {
  return `error forwarding port ${port} to pod ${sandboxId}, uid : ${message}`;
}
