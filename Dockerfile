# cri-portforward as a node-level process. The build stage runs the same commands as CI
# (npm ci: node-gyp builds the native setns addon, tsc builds dist/); the runtime stage
# keeps production dependencies only.
#
# Run it privileged with host network and the host's /run (containerd's socket and netns
# mounts) and /var/lib mounted, e.g. in proxy mode:
#   docker run --privileged --network host --pid host \
#     -v /run:/run -v /var/lib/cri-portforward:/var/lib/cri-portforward \
#     cri-portforward serve --upstream unix:///run/containerd/containerd.sock
# Not built here: our build machines reach no container registry (README, "Deployment").

FROM node:20-bookworm AS build
WORKDIR /src
COPY package.json package-lock.json tsconfig.json ./
COPY native ./native
COPY proto ./proto
COPY src ./src
# Build the addon against this image's own Node headers (no header download).
ENV npm_config_nodedir=/usr/local
RUN npm ci && npm prune --omit=dev

FROM node:20-bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends iproute2 util-linux \
  && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/cri-portforward
COPY --from=build /src/package.json ./
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist ./dist
COPY --from=build /src/proto ./proto
COPY --from=build /src/native/build/Release/netns_dial.node ./native/build/Release/netns_dial.node
ENTRYPOINT ["node", "/opt/cri-portforward/dist/cli.js"]
CMD ["serve"]
