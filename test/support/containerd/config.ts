// The private containerd's files: its config.toml (everything under one dir, CRI with our
// pause image, runc on a private root, no registry) and its CNI network (a bridge of its
// own name, host-local IPAM data under the dir).
//
// One config.toml for every release (releases.ts): it is a version-2 config, which 1.6 and
// 1.7 read as it is and 2.x migrates to version 3 when it loads it (it logs "Configuration
// migrated from version 2" once; the CRI plugin, the pinned sandbox image, the runc options
// and the CNI dirs all come through, checked by containerd-harness.test.ts on each release).
// What differs between releases is said where it is written.

import { SANDBOX_IMAGE } from './pause-image';
import { CNI_BIN_DIR } from './prerequisites';

/** The pods' subnet. The bridge has no address and no route, so it clashes with nothing. */
export const POD_SUBNET = '10.88.77.0/24';
/** The CNI config, relative to the harness dir. */
export const CNI_CONFLIST = 'cni/net.d/10-cripf.conflist';

export function configToml(o: { dir: string; socket: string; runc: string; cniConfDir: string }): string {
  const { dir } = o;
  const cri = 'plugins."io.containerd.grpc.v1.cri"';
  return `version = 2
root = "${dir}/root"
state = "${dir}/state"
oom_score = 0
# Not these: they only fail to load and log why. (Never io.containerd.runtime.v1.linux:
# the CRI plugin then fails to load.)
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = "${o.socket}"

[ttrpc]
  address = "${o.socket}.ttrpc"

[debug]
  # pprof on a socket of its own: tests count the goroutines serving a call.
  address = "${o.socket}.debug"
  level = "info"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "${dir}/opt"

# containerd 2.x enables NRI by default, and its socket is /var/run/nri/nri.sock whatever
# root and state say: shared by every private containerd and left behind on the host. 1.7
# has it off by default; 1.6 has no such plugin and ignores the section.
[plugins."io.containerd.nri.v1.nri"]
  disable = true

[${cri}]
  sandbox_image = "${SANDBOX_IMAGE}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_tls_streaming = false
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  restrict_oom_score_adj = true
  enable_selinux = false

[${cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[${cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[${cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
  BinaryName = "${o.runc}"
  Root = "${dir}/runc"

[${cri}.cni]
  bin_dir = "${CNI_BIN_DIR}"
  conf_dir = "${o.cniConfDir}"
  max_conf_num = 1
  conf_template = ""
`;
}

export function cniConflist(o: { name: string; bridge: string; ipamDir: string }): string {
  return JSON.stringify(
    {
      cniVersion: '1.0.0',
      name: o.name,
      plugins: [
        {
          type: 'bridge',
          bridge: o.bridge,
          isGateway: false,
          ipMasq: false,
          hairpinMode: false,
          ipam: { type: 'host-local', ranges: [[{ subnet: POD_SUBNET }]], dataDir: o.ipamDir },
        },
      ],
    },
    null,
    2,
  );
}
