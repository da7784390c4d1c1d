{
  "targets": [
    {
      "target_name": "netns_dial",
      "sources": ["netns_dial.c", "fd_passing.c", "netns_handles.c"],
      "cflags": ["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror"],
      "defines": ["NAPI_VERSION=8"]
    }
  ]
}
