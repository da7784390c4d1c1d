// Telling systemd we are ready, and which process is the service's main one now
// (deploy/cri-portforward.service: Type=notify, NotifyAccess=all). Sent by systemd-notify
// (Node has no unix datagram sockets): "--pid" makes this process MAINPID, so after an
// upgrade systemd follows the new process and the old one may exit. Without NOTIFY_SOCKET
// (not under systemd) nothing is sent.

import { spawn } from 'node:child_process';
import type { Logger } from './log';

export function notifyReady(log: Logger): void {
  if (!process.env.NOTIFY_SOCKET) return;
  const notify = spawn('systemd-notify', ['--ready', `--pid=${process.pid}`], { stdio: 'ignore' });
  notify.once('error', (err) => log.warn('cannot tell systemd we are ready (systemd-notify)', { err }));
  notify.once('exit', (code) => {
    if (code !== 0) log.warn('systemd-notify failed', { code });
  });
}
