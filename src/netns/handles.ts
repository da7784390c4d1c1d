// The namespace handles the addon keeps (native/netns_handles.c). A dial opens its
// sandbox's namespace once and later dials reuse it, so that a churn of connections into
// a pod costs one open() and close() of the namespace rather than one per connection.
// This module owns their release on the JavaScript side:
// - a handle no dial has used for NETNS_HANDLE_IDLE_MS is closed (one timer, armed while
//   handles are kept), so an idle server holds no namespace;
// - a sandbox being removed or stopped has its handle closed at once (forgetNamespace,
//   forgetAllNamespaces), so we never keep a namespace its runtime has torn down alive.
// A dial that fails checks by itself that its path still names the namespace it holds.

import { addon } from './addon';

/** How long a namespace handle is kept after its last dial. */
export const NETNS_HANDLE_IDLE_MS = 1_000;

let sweep: NodeJS.Timeout | undefined;

/** A dial used a namespace handle: it is closed once idle. */
export function namespaceDialled(): void {
  if (sweep !== undefined) return;
  sweep = setTimeout(closeIdle, NETNS_HANDLE_IDLE_MS);
  sweep.unref();
}

function closeIdle(): void {
  sweep = undefined;
  if (addon.closeIdleNetns(NETNS_HANDLE_IDLE_MS) > 0) namespaceDialled();
}

/** The namespace at `path` is going away: its handle is closed (by its last dial, if one is running). */
export function forgetNamespace(path: string): void {
  addon.forgetNetns(path);
}

/** Any sandbox may have gone (proxy mode cannot tell which): every handle is closed. */
export function forgetAllNamespaces(): void {
  addon.forgetNetns();
}
