// The PortForward URL, built (by the CRI PortForward answer) and parsed (by the streaming
// server) in one place: <base>/portforward/<token>, served for GET and POST.

/** Tokens are url-safe base64 (tokens.ts); anything else is not ours. */
const PORTFORWARD_PATH = /^\/portforward\/([A-Za-z0-9_-]+)\/?$/;

/** The URL a PortForward call answers with, e.g. http://127.0.0.1:35127/portforward/<token>. */
export function portForwardUrl(baseUrl: string, token: string): string {
  return `${baseUrl}/portforward/${token}`;
}

/** The token of a request path (without its query), or undefined when it is not a port-forward path. */
export function tokenOfPath(path: string): string | undefined {
  return PORTFORWARD_PATH.exec(path)?.[1];
}
