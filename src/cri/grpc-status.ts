// The one place where internal errors become gRPC statuses.

import { status, type ServiceError, Metadata } from '@grpc/grpc-js';
import { clip, CriError, errorMessage, type ErrorKind } from '../errors';

/**
 * A whole status message, whatever built it. It travels as the grpc-message header, where
 * a few KiB is safe with every HTTP/2 peer (percent-encoded, 1024 characters are at most
 * 9 KiB) and megabytes get the call no answer at all.
 */
const STATUS_MESSAGE_MAX_CHARS = 1024;

const GRPC_CODE: Record<ErrorKind, status> = {
  'invalid-argument': status.INVALID_ARGUMENT,
  'not-found': status.NOT_FOUND,
  'already-exists': status.ALREADY_EXISTS,
  'failed-precondition': status.FAILED_PRECONDITION,
  'permission-denied': status.PERMISSION_DENIED,
  'resource-exhausted': status.RESOURCE_EXHAUSTED,
  unavailable: status.UNAVAILABLE,
  internal: status.INTERNAL,
};

/**
 * The status a client sees. Every message that quotes client input clips it where it is
 * built (errors.ts clip); the clip here is for an input nobody thought of, or an
 * upstream's message: a grpc-message header of megabytes never reaches the client.
 */
export function toServiceError(err: unknown): Partial<ServiceError> {
  const code = err instanceof CriError ? GRPC_CODE[err.kind] : status.INTERNAL;
  return { code, details: clip(errorMessage(err), STATUS_MESSAGE_MAX_CHARS), metadata: new Metadata() };
}
