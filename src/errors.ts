// Errors that cross the gRPC boundary carry a kind, mapped to status codes in exactly one
// place (cri/grpc-status.ts). Anything that is not a CriError is an internal error. The
// streaming server answers HTTP with its own statuses (streaming/server.ts): no CriError
// reaches it, and a failed forward is told by its verdict (streaming/portforward/verdict.ts).

/** Client input quoted in an error message: at most this many characters, then '…'. */
export const QUOTE_MAX_CHARS = 128;

export type ErrorKind =
  | 'invalid-argument'
  | 'not-found'
  | 'already-exists'
  | 'failed-precondition'
  | 'permission-denied'
  | 'resource-exhausted'
  | 'unavailable'
  | 'internal';

export class CriError extends Error {
  constructor(
    readonly kind: ErrorKind,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'CriError';
  }
}

export const invalidArgument = (message: string): CriError => new CriError('invalid-argument', message);
export const notFound = (message: string): CriError => new CriError('not-found', message);
export const alreadyExists = (message: string): CriError => new CriError('already-exists', message);
export const failedPrecondition = (message: string): CriError =>
  new CriError('failed-precondition', message);
export const permissionDenied = (message: string): CriError => new CriError('permission-denied', message);
export const resourceExhausted = (message: string): CriError => new CriError('resource-exhausted', message);

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/**
 * Client input as an error message may quote it: at most `max` characters, cut with '…'.
 * Every message that names an id, a name or a filter value a client sent goes through it.
 */
export function clip(text: string, max = QUOTE_MAX_CHARS): string {
  if (text.length <= max) return text;
  // Never cut a surrogate pair in half: the message would not be valid UTF-16.
  const end = isHighSurrogate(text.charCodeAt(max - 1)) ? max - 1 : max;
  return `${text.slice(0, end)}…`;
}

function isHighSurrogate(code: number): boolean {
  return code >= 0xd800 && code <= 0xdbff;
}
