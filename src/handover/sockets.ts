// A socket as an upgrade handles it: its fd to pass, reads held while its session is
// frozen, and this process's copy let go of without a word on the wire.

import type { Socket } from 'node:net';

/** The fd of a connected socket (Linux TCP handles expose it). */
export function socketFd(socket: Socket): number {
  const fd = (socket as unknown as { _handle?: { fd?: number } | null })._handle?.fd;
  if (typeof fd !== 'number' || fd < 0) throw new Error('the socket has no fd to hand over');
  return fd;
}

const HELD = Symbol('reads held for an upgrade');
type Holdable = Socket & { [HELD]?: true; _read(size: number): void };

function noRead(): void {
  // held: see holdReads
}

/**
 * Stop reading, and keep it stopped until releaseReads(). pause() alone is not enough: a
 * resume() earlier in the same tick has queued Readable's resume_, which calls _read() on
 * the next tick and starts reading again. Two processes reading one socket would each take
 * a part of its bytes, so until released _read() does nothing.
 */
export function holdReads(socket: Socket): void {
  const s = socket as Holdable;
  s[HELD] = true;
  s._read = noRead;
  socket.pause();
  // pause() stops the handle only for sockets that read into a caller's buffer (onread);
  // any other keeps reading into its readable buffer, bytes the new process would never see.
  const handle = (socket as unknown as { _handle: { reading?: boolean; readStop?(): number } | null })._handle;
  if (handle?.reading === true && typeof handle.readStop === 'function') {
    handle.reading = false;
    handle.readStop();
  }
}

/** Undo holdReads (the caller resumes reading if it wants to). */
export function releaseReads(socket: Socket): void {
  const s = socket as Holdable;
  if (s[HELD] !== true) return;
  delete s[HELD];
  delete (s as Partial<Holdable>)._read; // the prototype's again
}

/**
 * Close this process's copy of a socket's fd and nothing else: no FIN, no reset, no event.
 * The connection lives on in the process that received the fd. The socket object is left
 * inert (its handle gone).
 */
export function releaseSocket(socket: Socket): void {
  const s = socket as unknown as { _handle: { close(): void; onread?: unknown } | null };
  const handle = s._handle;
  if (handle === null) return;
  s._handle = null;
  handle.close();
}

