// The load tests (test/integration/load-*.test.ts) run two CPU burners beside the server:
// they need root (namespaces) like the other integration tests, and nothing else.

import { rootSkipReason } from './root';

export function loadSkipReason(): string | false {
  return rootSkipReason();
}
