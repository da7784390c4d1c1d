// The one place where internal errors become gRPC statuses.

import { status, type ServiceError, Metadata } from '@grpc/grpc-js';
import { CriError, errorMessage, type ErrorKind } from '../errors';

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

export function toServiceError(err: unknown): Partial<ServiceError> {
  const code = err instanceof CriError ? GRPC_CODE[err.kind] : status.INTERNAL;
  return { code, details: errorMessage(err), metadata: new Metadata() };
}
