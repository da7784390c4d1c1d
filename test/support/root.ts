// Tests that create namespaces need root. Outside CI they skip and say why; under .ci/run
// (CRI_PORTFORWARD_REQUIRE_ROOT=1) a missing prerequisite fails instead of skipping.

const REQUIRE = process.env.CRI_PORTFORWARD_REQUIRE_ROOT === '1';

/** `false` when root, else the reason to skip (or a thrown error under CI). */
export function rootSkipReason(): string | false {
  if (process.getuid?.() === 0) return false;
  const reason = 'needs root: creates network namespaces and bind mounts (run as root, as CI does)';
  if (REQUIRE) throw new Error(`CRI_PORTFORWARD_REQUIRE_ROOT=1 but ${reason}`);
  return reason;
}
